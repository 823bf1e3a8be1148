"""What a preference pair is made of and how one is chosen, per task.

Candidates for one gold task: the gold itself, the student's drafts (parsed, deduplicated) and
targeted synthetic negatives of the gold (data.negatives). Each is spec-gated, judged against
the gold, and scored with the reference metric's case quality (0 when the gate fails);
`select_pairs` then picks (chosen, rejected) pairs by the rules in prefs.build's docstring.
The record shapes written for TRL, Apple's toolkit and the sidecar live here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.contract import (PROMPT_HASH, RUBRIC_DIMENSIONS, Case, DiscoveryResult, parse_assistant,
                           planner_messages, render_assistant, spec_violations)
from data.leak import normalize_input
from data.negatives import KINDS as SYNTHETIC_KINDS
from data.negatives import make_negatives
from judge.judges import JudgeItem
from judge.verdict import case_quality

GOLD, ON_POLICY = "gold", "on-policy"
REJECTION_KINDS = (*SYNTHETIC_KINDS, ON_POLICY)


@dataclass
class Candidate:
    kind: str                        # gold | on-policy | drop-critical | compound | redundant
    result: DiscoveryResult
    note: str = ""                   # what makes it differ from the gold (negatives), if known
    provenance: dict = field(default_factory=dict)
    spec: list[str] = field(default_factory=list)   # spec-gate violations (empty = passed)
    verdict: object = None           # judge.verdict.Verdict once judged
    error: str | None = None         # the judge failed on it: it takes no part in pairs

    @property
    def score(self) -> float | None:
        if self.error is not None or (self.verdict is None and not self.spec):
            return None
        return case_quality(self.verdict, not self.spec)


@dataclass
class PrefsOptions:
    margin: float = 0.1              # minimum quality gap (0..1 scale of the reference metric)
    max_pairs_per_task: int = 4
    synthetic_share: float = 0.5
    negatives_per_kind: int = 2
    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None         # only the first N tasks (quick looks and tests)

    def check(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"--margin must lie in 0..1 (a quality gap), got {self.margin}")
        if self.max_pairs_per_task < 1:
            raise ValueError(f"--max-pairs-per-task must be >= 1, got {self.max_pairs_per_task}")
        if not 0.0 <= self.synthetic_share <= 1.0:
            raise ValueError(f"--synthetic-share must lie in 0..1, got {self.synthetic_share}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must lie in 0..1, got {self.val_fraction}")


@dataclass
class PrefsReport:
    n_tasks: int = 0
    n_pairs: int = 0
    n_train: int = 0
    n_val: int = 0
    by_kind: dict = field(default_factory=dict)
    tasks_without_pairs: int = 0
    unusable_samples: int = 0        # student output with no parseable answer
    unmatched_drafts: int = 0        # drafts whose input is not one of the gold tasks
    duplicate_samples: int = 0
    judge_errors: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    files: dict = field(default_factory=dict)


def _answer_key(r: DiscoveryResult) -> tuple:
    return (normalize_input(r.task_title),) + tuple(normalize_input(q.title) for q in r.questions)


def on_policy_candidates(gold: DiscoveryResult, drafts: list[tuple[str | DiscoveryResult, dict]],
                         report: PrefsReport) -> list[Candidate]:
    """Parsed, deduplicated student drafts; unparseable ones are counted, not kept."""
    seen = {_answer_key(gold)}
    out = []
    for draft, prov in drafts:
        if isinstance(draft, DiscoveryResult):
            result, problems = draft, []
        else:
            parsed = parse_assistant(draft)
            if parsed.result is None:
                report.unusable_samples += 1
                continue
            result, problems = parsed.result, parsed.problems
        key = _answer_key(result)
        if key in seen:
            report.duplicate_samples += 1
            continue
        seen.add(key)
        spec = spec_violations(result)
        note = "; ".join(problems) if problems else ""
        out.append(Candidate(ON_POLICY, result, note, prov, spec))
    return out


def task_candidates(case: Case, where: str, drafts, opts: PrefsOptions,
                    report: PrefsReport) -> list[Candidate]:
    cands = [Candidate(GOLD, case.gold, "", {"gold": where, "source": case.source})]
    cands += on_policy_candidates(case.gold, drafts, report)
    for neg in make_negatives(case.gold, per_kind=opts.negatives_per_kind, seed=opts.seed,
                              task_input=case.input):
        cands.append(Candidate(neg.kind, neg.result, neg.note,
                               {"gold": where, "negative": neg.kind,
                                "positions": list(neg.positions), "targets": list(neg.targets)}))
    return cands


def judge_candidates(per_task: list[tuple[Case, list[Candidate]]], judge) -> list[str]:
    """Judge every gate-passing candidate against its gold in one batch; returns the errors."""
    jobs = [(case, c) for case, cands in per_task for c in cands if not c.spec]
    verdicts = judge.judge_many([JudgeItem(case.input, case.gold, c.result) for case, c in jobs])
    errors = []
    for (case, c), v in zip(jobs, verdicts):
        if isinstance(v, str):
            c.error = v
            errors.append(f"{case.id} ({c.kind}): {v}")
        else:
            c.verdict = v
    return errors


def select_pairs(cands: list[Candidate], *, margin: float, cap: int, synthetic_share: float,
                 first_kind: int = 0) -> list[tuple[Candidate, Candidate]]:
    """(chosen, rejected) pairs for one task; see the module docstring for the rules.

    Synthetic kinds are taken in turn starting at SYNTHETIC_KINDS[first_kind], so that across
    tasks (build_prefs rotates the start) no kind wins every odd slot."""
    scored = [c for c in cands if c.score is not None]
    chosen_pool = [c for c in scored if c.kind in (GOLD, ON_POLICY) and not c.spec]
    if not chosen_pool:
        return []
    # max() keeps the first of equals; the gold comes first, so a tie goes to the gold.
    chosen = max(chosen_pool, key=lambda c: c.score)
    eligible = [c for c in scored if c is not chosen and c.kind != GOLD
                and chosen.score - c.score >= margin - 1e-9]
    eligible.sort(key=lambda c: -c.score)          # closest to the chosen first (stable)
    on_policy = [c for c in eligible if c.kind == ON_POLICY]
    by_kind = {k: [c for c in eligible if c.kind == k] for k in SYNTHETIC_KINDS}
    synthetic = []
    turn = SYNTHETIC_KINDS[first_kind % 3:] + SYNTHETIC_KINDS[:first_kind % 3]
    while any(by_kind.values()):
        for k in turn:
            if by_kind[k]:
                synthetic.append(by_kind[k].pop(0))
    if synthetic_share == 0.0:
        synthetic = []
    if synthetic_share == 1.0:
        on_policy = []
    n_syn = int(cap * synthetic_share + 0.5)        # rounded half up: 3 x 0.5 -> 2 synthetic
    take_syn = synthetic[:n_syn]
    take_on = on_policy[:cap - n_syn]
    spare = cap - len(take_syn) - len(take_on)     # one kind ran short: the other fills in
    if spare:
        take_syn += synthetic[len(take_syn):len(take_syn) + spare]
        spare = cap - len(take_syn) - len(take_on)
        take_on += on_policy[len(take_on):len(take_on) + spare]
    return [(chosen, r) for r in take_on + take_syn]


def trl_pair(pair_id: str, task_input: str, chosen: DiscoveryResult, rejected: DiscoveryResult
             ) -> dict:
    return {"id": pair_id, "prompt": planner_messages(task_input),
            "chosen": [{"role": "assistant", "content": render_assistant(chosen)}],
            "rejected": [{"role": "assistant", "content": render_assistant(rejected)}]}


def apple_pair(pair_id: str, task_input: str, chosen: DiscoveryResult, rejected: DiscoveryResult
               ) -> dict:
    """Each side is one line of Apple's toolkit format: system, user and assistant messages."""
    msgs = planner_messages(task_input)
    return {"id": pair_id,
            "chosen": msgs + [{"role": "assistant", "content": render_assistant(chosen)}],
            "rejected": msgs + [{"role": "assistant", "content": render_assistant(rejected)}]}


def _summary(c: Candidate) -> dict:
    v = c.verdict
    return {"kind": c.kind, "score": None if c.score is None else round(c.score, 4),
            "pairwise": v.pairwise if v else None,
            "rubric": dict(v.rubric) if v else None,
            "judge_notes": v.notes if v else "", "note": c.note,
            "spec_violations": list(c.spec),
            "task_title": c.result.task_title,
            "questions": [q.title for q in c.result.questions]}


def sidecar_row(pair_id: str, case: Case, chosen: Candidate, rejected: Candidate, judge,
                split: str) -> dict:
    deltas = None
    if chosen.verdict is not None and rejected.verdict is not None:
        deltas = {d: round(chosen.verdict.rubric[d] - rejected.verdict.rubric[d], 4)
                  for d in RUBRIC_DIMENSIONS}
    return {"id": pair_id, "task_id": case.id, "input": case.input, "split": split,
            "kind": rejected.kind, "margin": round(chosen.score - rejected.score, 4),
            "chosen": _summary(chosen), "rejected": _summary(rejected), "deltas": deltas,
            "judge": judge.name, "judge_prompt_hash": judge.prompt_hash,
            "prompt_hash": PROMPT_HASH,
            "provenance": {"chosen": chosen.provenance, "rejected": rejected.provenance}}
