"""Frozen, CPU-cheap features of one (task input, gold, candidate) triple for the learned judge.

Three groups, each a named vector so a fitted model records exactly what it was fitted on:

- "embed": all-MiniLM-L6-v2 cosine statistics of candidate vs gold question titles (best match
  in both directions, one-to-one matched mean, coverage of gold asks at three thresholds), the
  candidate's own redundancy next to the gold's, closeness to the task input, task-title match;
- "offline": the hand-written offline judge's features (judge.judges.offline_features) of the
  candidate, and the candidate-minus-gold difference of each (the gold is the yardstick);
- "text": plain text statistics (lengths, empty descriptions, third-person wording, ...);
- "judges": the two hand-written offline judges' own outputs (lexical and embedding backends,
  built-in weights): their five rubric scores for the candidate and their pairwise margin, so a
  model can recalibrate them instead of relearning them from raw features.

Similarities are computed with whatever `sim` object the offline judge uses (EmbeddingSimilarity
for the bundled model), so the learned judge and the offline judge embed the same texts alike.
"""
from __future__ import annotations

import re

import numpy as np
from scipy.optimize import linear_sum_assignment

from data.contract import DiscoveryResult
from judge.judges.offline_features import extract_features, texts_to_embed

GROUPS = ("embed", "offline", "text", "judges")
DEFAULT_GROUPS = ("embed", "offline", "text")
_JUDGES: dict = {}
HIT_THRESHOLDS = (0.5, 0.6, 0.7)
THIRD_PERSON_RE = re.compile(r"\b(?:the user|user's|the person|they|their)\b", re.I)
FORM_OPENERS = ("what is", "what are", "what's", "do you have", "is there", "are there")


def _redundancy(m: np.ndarray) -> tuple[float, float]:
    """(max, mean) off-diagonal similarity of a square matrix; 0 for fewer than two rows."""
    n = len(m)
    if n < 2:
        return 0.0, 0.0
    off = m[~np.eye(n, dtype=bool)]
    return float(off.max()), float(off.mean())


def embed_features(task_input: str, gold: DiscoveryResult, cand: DiscoveryResult, sim
                   ) -> dict[str, float]:
    gt = [q.title for q in gold.questions]
    ct = [q.title for q in cand.questions]
    f: dict[str, float] = {}
    if gt and ct:
        m = sim.matrix(ct, gt, frozenset())          # rows: candidate, cols: gold
        f["cand_best_mean"] = float(m.max(axis=1).mean())
        f["cand_best_min"] = float(m.max(axis=1).min())
        f["gold_best_mean"] = float(m.max(axis=0).mean())
        f["gold_best_min"] = float(m.max(axis=0).min())
        r, c = linear_sum_assignment(m, maximize=True)
        f["matched_mean"] = float(m[r, c].sum() / len(gt))
        for t in HIT_THRESHOLDS:
            f[f"gold_hit_{int(t * 100)}"] = float((m.max(axis=0) >= t).mean())
            f[f"cand_hit_{int(t * 100)}"] = float((m.max(axis=1) >= t).mean())
    else:
        for k in ("cand_best_mean", "cand_best_min", "gold_best_mean", "gold_best_min",
                  "matched_mean"):
            f[k] = 0.0
        for t in HIT_THRESHOLDS:
            f[f"gold_hit_{int(t * 100)}"] = f[f"cand_hit_{int(t * 100)}"] = 0.0
    cmax, cmean = _redundancy(sim.matrix(ct, ct, frozenset())) if ct else (0.0, 0.0)
    gmax, gmean = _redundancy(sim.matrix(gt, gt, frozenset())) if gt else (0.0, 0.0)
    f["self_max"], f["self_mean"] = cmax, cmean
    f["self_max_minus_gold"], f["self_mean_minus_gold"] = cmax - gmax, cmean - gmean
    ci = sim.matrix(ct, [task_input], frozenset())[:, 0] if ct else np.zeros(1)
    gi = sim.matrix(gt, [task_input], frozenset())[:, 0] if gt else np.zeros(1)
    f["input_mean"], f["input_min"] = float(ci.mean()), float(ci.min())
    f["input_mean_minus_gold"] = float(ci.mean() - gi.mean())
    f["title_match"] = float(sim.matrix([cand.task_title or " "], [gold.task_title or " "],
                                        frozenset())[0, 0])
    return f


def offline_group(task_input: str, gold: DiscoveryResult, cand: DiscoveryResult, sim,
                  gold_cache: dict) -> dict[str, float]:
    key = (task_input, gold)
    if key not in gold_cache:
        gold_cache[key] = extract_features(task_input, gold, gold, sim)
    fg = gold_cache[key]
    fc = extract_features(task_input, cand, gold, sim)
    out = {f"cand_{k}": v for k, v in fc.items()}
    out.update({f"diff_{k}": fc[k] - fg[k] for k in sorted(fc)})
    return out


def _words(s: str) -> int:
    return len(s.split())


def text_features(task_input: str, gold: DiscoveryResult, cand: DiscoveryResult
                  ) -> dict[str, float]:
    qs = cand.questions
    n = max(len(qs), 1)
    tw = [_words(q.title) for q in qs] or [0]
    dw = [_words(q.description) for q in qs] or [0]
    return {
        "n_questions": float(len(qs)),
        "n_minus_gold": float(len(qs) - len(gold.questions)),
        "title_words_mean": float(np.mean(tw)),
        "title_words_std": float(np.std(tw)),
        "title_words_max": float(max(tw)),
        "desc_words_mean": float(np.mean(dw)),
        "desc_empty_rate": sum(not q.description for q in qs) / n,
        "external_rate": sum(q.requires_external_action for q in qs) / n,
        "question_mark_rate": sum(q.title.endswith("?") for q in qs) / n,
        "third_person_rate": sum(bool(THIRD_PERSON_RE.search(q.title)) for q in qs) / n,
        "form_opener_rate": sum(q.title.lower().startswith(FORM_OPENERS) for q in qs) / n,
        "eg_rate": sum("e.g" in (q.title + q.description).lower() for q in qs) / n,
        "distinct_opener_rate": len({" ".join(q.title.lower().split()[:2]) for q in qs}) / n,
        "task_title_words": float(_words(cand.task_title)),
    }


def offline_judges() -> dict:
    """The lexical and embedding offline judges (built-in weights), built once per process."""
    if not _JUDGES:
        from judge.judges.offline import OfflineJudge
        for backend in ("lexical", "embedding"):
            _JUDGES[backend] = OfflineJudge(backend=backend)
    return _JUDGES


def judge_features(task_input: str, gold: DiscoveryResult, cand: DiscoveryResult
                   ) -> dict[str, float]:
    from judge.judges.base import JudgeItem
    out = {}
    for backend, judge in offline_judges().items():
        v = judge.judge_one(JudgeItem(task_input, gold, cand))
        out.update({f"{backend}_{d}": float(x) for d, x in v.rubric.items()})
        out[f"{backend}_margin"] = float(v.extra.get("margin", 0.0))
    return out


def case_features(task_input: str, gold: DiscoveryResult, cand: DiscoveryResult, sim,
                  groups=GROUPS, gold_cache: dict | None = None) -> dict[str, float]:
    """Every feature of the chosen groups, keyed "<group>.<name>", in a fixed order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown feature group(s) {sorted(unknown)}; choose from "
                         f"{', '.join(GROUPS)}")
    out: dict[str, float] = {}
    if "embed" in groups:
        out.update({f"embed.{k}": v for k, v in embed_features(task_input, gold, cand,
                                                                sim).items()})
    if "offline" in groups:
        out.update({f"offline.{k}": v for k, v in offline_group(
            task_input, gold, cand, sim, {} if gold_cache is None else gold_cache).items()})
    if "text" in groups:
        out.update({f"text.{k}": v for k, v in text_features(task_input, gold, cand).items()})
    if "judges" in groups:
        out.update({f"judges.{k}": v for k, v in judge_features(task_input, gold,
                                                                 cand).items()})
    return out


def prefetch(sim, triples) -> None:
    """Embed every text of many triples in a few large batches (one forward per text costs)."""
    if hasattr(sim, "prefetch"):
        sim.prefetch(t for inp, gold, cand in triples
                     for t in texts_to_embed(inp, (cand, gold)) + [cand.task_title,
                                                                   gold.task_title])
