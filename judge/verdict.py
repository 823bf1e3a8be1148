"""A judge's verdict on one case and the per-case quality number of the reference metric."""
from __future__ import annotations

from dataclasses import dataclass, field

from data.contract import RUBRIC_DIMENSIONS

# Pairwise outcome, from the candidate's point of view.
GOLD_BETTER, TIE, CANDIDATE_BETTER = "gold", "tie", "candidate"
PAIRWISE_VALUE = {GOLD_BETTER: 0.0, TIE: 0.5, CANDIDATE_BETTER: 1.0}
# Spellings found in judged-record files: an earlier harness wrote goldBetter/tie/fmBetter.
PAIRWISE_ALIASES = {
    "goldbetter": GOLD_BETTER, "gold": GOLD_BETTER, "gold_better": GOLD_BETTER,
    "tie": TIE,
    "fmbetter": CANDIDATE_BETTER, "candidate": CANDIDATE_BETTER,
    "candidatebetter": CANDIDATE_BETTER, "candidate_better": CANDIDATE_BETTER,
}


def normalize_pairwise(value: str) -> str:
    key = str(value).strip().lower()
    if key not in PAIRWISE_ALIASES:
        raise ValueError(f"unknown pairwise verdict {value!r}; expected one of "
                         "goldBetter / tie / fmBetter (or gold / tie / candidate)")
    return PAIRWISE_ALIASES[key]


def clamp_score(value) -> float:
    return float(min(5, max(1, value)))


@dataclass
class Verdict:
    pairwise: str                      # GOLD_BETTER | TIE | CANDIDATE_BETTER
    rubric: dict[str, float]           # the five RUBRIC_DIMENSIONS, each 1..5 (may be averaged)
    notes: str = ""
    judge: str = ""                    # e.g. "offline@<weights hash>", "anthropic:<model>"
    extra: dict = field(default_factory=dict)  # swap details, samples, request ids, ...

    def __post_init__(self):
        self.pairwise = normalize_pairwise(self.pairwise)
        missing = [d for d in RUBRIC_DIMENSIONS if d not in self.rubric]
        if missing:
            raise ValueError(f"verdict rubric is missing {missing}")
        self.rubric = {d: clamp_score(self.rubric[d]) for d in RUBRIC_DIMENSIONS}

    @property
    def rubric_normalized(self) -> float:
        return (sum(self.rubric.values()) / len(self.rubric) - 1.0) / 4.0

    def to_dict(self) -> dict:
        return {"pairwise": self.pairwise, "rubric": dict(self.rubric), "notes": self.notes,
                "judge": self.judge, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        return cls(d["pairwise"], dict(d["rubric"]), d.get("notes", ""), d.get("judge", ""),
                   dict(d.get("extra", {})))


def case_quality(verdict: Verdict | None, spec_passed: bool, errored: bool = False) -> float:
    """0 if the spec gate failed or generation errored, else 0.5·rubric_norm + 0.5·pairwise."""
    if errored or not spec_passed or verdict is None:
        return 0.0
    return 0.5 * verdict.rubric_normalized + 0.5 * PAIRWISE_VALUE[verdict.pairwise]
