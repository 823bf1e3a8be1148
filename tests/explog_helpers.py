"""Synthetic scored experiments for the experiment-log and dashboard tests (no model needed).

Records are real JudgedRecords on the real ruler cases, scored by judge.metric and appended by
eval.experiment.log_experiment — the same path `python -m eval.run` takes after generation.
"""
from __future__ import annotations

from data.contract import RUBRIC_DIMENSIONS
from judge.metric import scorecard
from judge.records import JudgedRecord
from eval.experiment import log_experiment
from judge.verdict import Verdict

PAIRWISE_CYCLE = ("gold", "tie", "candidate")


def synthetic_records(cases, strength: float, *, judge: str, ruler: dict, label: str,
                      spec_fail_every: int = 0) -> list[JudgedRecord]:
    """One record per case; a higher `strength` (1..5) gives higher rubric scores and wins."""
    out = []
    for i, case in enumerate(cases):
        failed = spec_fail_every and i % spec_fail_every == 0
        score = min(5.0, max(1.0, strength + ((i % 3) - 1) * 0.5))
        pairwise = PAIRWISE_CYCLE[min(2, max(0, int(strength) - 2 + i % 2))]
        verdict = None if failed else Verdict(
            pairwise, {d: score for d in RUBRIC_DIMENSIONS},
            f"synthetic note {label} case {case.id}", judge)
        out.append(JudgedRecord(
            input=case.input, gold=case.gold, candidate=case.gold, spec_passed=not failed,
            violations=["has 6 questions, expected exactly 7"] if failed else [],
            verdict=verdict, experiment=label, case_id=case.id, judge=judge, ruler=ruler))
    return out


def log_synthetic(db, cases, label: str, strength: float, *, judge: str = "offline@test",
                  ruler: dict | None = None, invalid_reason: str | None = None,
                  lever: str = "inference", spec_fail_every: int = 0):
    """Score synthetic records and append them; returns (experiment, best before it)."""
    ruler = ruler or {"version": 1, "hash": "ruler-hash-1"}
    records = synthetic_records(cases, strength, judge=judge, ruler=ruler, label=label,
                                spec_fail_every=spec_fail_every)
    card = scorecard(records, label=label, judge=judge, ruler=ruler, n_boot=500)
    columns = {"label": label, "note": f"hypothesis for {label}", "lever": lever,
               "pipeline": "single", "base_model": "synthetic", "judge_prompt_hash": "p" * 64}
    return log_experiment(db, records, card, columns, invalid_reason=invalid_reason)
