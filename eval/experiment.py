"""A scored run as the experiment log stores it: the log columns, the per-case entries, and the
append with its paired comparison against the running best."""
from __future__ import annotations

from data.contract import ContractError
from eval.log import append_experiment
from judge.metric import paired_comparison, record_quality
from judge.records import record_from_dict


def scorecard_columns(card) -> dict:
    """The log columns that come from a scorecard (the full scorecard goes in `metrics`)."""
    ci = card.headline_ci
    return {"headline": card.headline, "headline_ci_lo": ci[0] if ci else None,
            "headline_ci_hi": ci[1] if ci else None, "headline_answered": card.headline_answered,
            "spec_pass_rate": card.spec_pass_rate, "error_rate": card.error_rate,
            "wins": card.wins, "ties": card.ties, "losses": card.losses,
            "ruler_version": (card.ruler or {}).get("version"),
            "ruler_hash": (card.ruler or {}).get("hash"), "judge": card.judge,
            "metrics": card.to_dict()}


def log_experiment(db, records, card, columns: dict, *, invalid_reason: str | None = None,
                   case_extras: list[dict] | None = None):
    """Append scored records to the log, paired-compared with the running best they must beat.

    `columns` holds the descriptive log columns (label, note, lever, base, adapter, pipeline,
    config, hashes); the metric columns, ruler and judge come from `card`. Returns
    (experiment, running best before it or None).
    """
    stored = [dict(r.to_dict(), quality=record_quality(r)) for r in records]
    for s, extra in zip(stored, case_extras or []):
        s.update(extra)

    def compare(best, best_cases):
        try:
            a = [record_from_dict({k: v for k, v in r.items() if k != "quality"},
                                  f"experiment #{best.id} case {r.get('case_id')}")
                 for r in best_cases]
            return paired_comparison(a, records, label_a=f"best #{best.id} {best.label}",
                                     label_b=card.label or "this run").to_dict()
        except (ValueError, ContractError) as e:
            return {"error": str(e)}

    entry = {**columns, **scorecard_columns(card)}
    return append_experiment(db, entry, stored, invalid_reason=invalid_reason, compare=compare)


def case_entries(cases, gens, records) -> list[dict]:
    out = []
    for case, gen, rec in zip(cases, gens, records):
        v = rec.verdict
        out.append({
            "case_id": case.id, "input": case.input, "gold": case.gold.to_dict(),
            "raw_output": gen.text, "candidate": rec.candidate.to_dict() if rec.candidate else None,
            "parse_problems": gen.problems,
            "spec": {"passed": rec.spec_passed, "violations": rec.violations},
            "verdict": ({"pairwise": v.pairwise, "rubric": v.rubric, "notes": v.notes}
                        if v else None),
            "notes": v.notes if v else (rec.error or "; ".join(rec.violations)),
            "quality": record_quality(rec), "error": rec.error, "error_kind": rec.error_kind,
            "pipeline": gen.details,
        })
    return out
