"""Judged records: one JSON object per line, the common currency of judging, scoring and calibration.

    {"input", "gold", "candidate",            contract objects, camelCase or snake_case keys
     "spec": {"passed", "violations"},
     "verdict": {"pairwise": goldBetter|tie|fmBetter or gold|tie|candidate,
                 "rubric": {atomicity, specificity, coverage, naturalness, nonRedundancy},
                 "notes"},
     "error"?, "experiment"?, "case_id"?, "judge"?, "ruler"?: {"version", "hash"}}

`error` marks a case that scores 0 (generation failed; or, with "error_kind": "judge", the judge
could not produce a verdict). A record that passed the spec gate without an error must carry a
verdict. Bad input raises RecordError naming file:line and the key.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from data.contract import ContractError, DiscoveryResult, RUBRIC_DIMENSIONS, read_jsonl
from judge.verdict import Verdict, normalize_pairwise

# Either key style for rubric dimensions too.
_RUBRIC_ALIASES = {"nonRedundancy": ("nonRedundancy", "non_redundancy")}
KNOWN_KEYS = {"input", "gold", "candidate", "spec", "verdict", "error", "error_kind", "experiment",
              "case_id", "id", "judge", "ruler"}


class RecordError(ContractError):
    """A judged record is malformed; the message names file:line and the key."""


@dataclass
class JudgedRecord:
    input: str
    gold: DiscoveryResult | None
    candidate: DiscoveryResult | None
    spec_passed: bool
    violations: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    error: str | None = None
    error_kind: str | None = None       # "generation" (default) or "judge"
    experiment: str | None = None
    case_id: str | None = None
    judge: str | None = None
    ruler: dict | None = None           # {"version": int, "hash": str} the record was judged on
    extra: dict = field(default_factory=dict)
    where: str = ""

    @property
    def errored(self) -> bool:
        return self.error is not None

    def to_dict(self, style: str = "camel") -> dict:
        out: dict[str, Any] = {}
        if self.case_id is not None:
            out["case_id"] = self.case_id
        out["input"] = self.input
        out["gold"] = self.gold.to_dict(style) if self.gold else None
        out["candidate"] = self.candidate.to_dict(style) if self.candidate else None
        out["spec"] = {"passed": self.spec_passed, "violations": list(self.violations)}
        out["verdict"] = ({"pairwise": self.verdict.pairwise, "rubric": dict(self.verdict.rubric),
                           "notes": self.verdict.notes} if self.verdict else None)
        if self.verdict and self.verdict.extra:
            out["verdict"]["extra"] = self.verdict.extra
        for key in ("error", "error_kind", "experiment", "judge", "ruler"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def _contract(obj, where: str, key: str) -> DiscoveryResult | None:
    if obj is None:
        return None
    try:
        return DiscoveryResult.from_dict(obj, where=f"{where}: key '{key}'", exact_questions=None)
    except ContractError as e:
        raise RecordError(str(e)) from None


def _verdict(obj, where: str) -> Verdict:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: key 'verdict' must be an object, got {type(obj).__name__}")
    if "pairwise" not in obj:
        raise RecordError(f"{where}: missing key 'verdict.pairwise'")
    try:
        pairwise = normalize_pairwise(obj["pairwise"])
    except ValueError as e:
        raise RecordError(f"{where}: key 'verdict.pairwise': {e}") from None
    rubric_in = obj.get("rubric")
    if not isinstance(rubric_in, dict):
        raise RecordError(f"{where}: key 'verdict.rubric' must be an object with "
                          f"{', '.join(RUBRIC_DIMENSIONS)}")
    rubric = {}
    for dim in RUBRIC_DIMENSIONS:
        names = _RUBRIC_ALIASES.get(dim, (dim,))
        found = [n for n in names if n in rubric_in]
        if not found:
            raise RecordError(f"{where}: missing key 'verdict.rubric.{dim}'")
        v = rubric_in[found[0]]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 5:
            raise RecordError(f"{where}: key 'verdict.rubric.{found[0]}' must be a number from "
                              f"1 to 5, got {v!r}")
        rubric[dim] = float(v)
    unknown = set(rubric_in) - {n for d in RUBRIC_DIMENSIONS for n in _RUBRIC_ALIASES.get(d, (d,))}
    if unknown:
        raise RecordError(f"{where}: unknown key 'verdict.rubric.{sorted(unknown)[0]}'; valid: "
                          f"{', '.join(RUBRIC_DIMENSIONS)}")
    notes = obj.get("notes", "")
    if not isinstance(notes, str):
        raise RecordError(f"{where}: key 'verdict.notes' must be a string")
    return Verdict(pairwise, rubric, notes, str(obj.get("judge", "")),
                   dict(obj.get("extra", {}) or {}))


def record_from_dict(obj: Any, where: str) -> JudgedRecord:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    inp = obj.get("input")
    if not isinstance(inp, str) or not inp.strip():
        raise RecordError(f"{where}: missing or empty key 'input'")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise RecordError(f"{where}: key 'error' must be a string")
    gold = _contract(obj.get("gold"), where, "gold")
    candidate = _contract(obj.get("candidate"), where, "candidate")
    if candidate is None and error is None:
        raise RecordError(f"{where}: record has neither 'candidate' nor 'error'")

    spec = obj.get("spec")
    if spec is None:
        if candidate is not None:
            raise RecordError(f"{where}: missing key 'spec' (write {{\"passed\", \"violations\"}})")
        passed, violations = False, []
    else:
        if not isinstance(spec, dict) or not isinstance(spec.get("passed"), bool):
            raise RecordError(f"{where}: key 'spec.passed' must be true or false")
        violations = spec.get("violations", [])
        if not isinstance(violations, list) or not all(isinstance(v, str) for v in violations):
            raise RecordError(f"{where}: key 'spec.violations' must be a list of strings")
        passed = spec["passed"]

    verdict = None
    if obj.get("verdict") is not None:
        verdict = _verdict(obj["verdict"], where)
    elif passed and error is None:
        raise RecordError(f"{where}: missing key 'verdict' (a record that passed the spec gate "
                          "and has no error needs one)")
    if gold is None and verdict is not None:
        raise RecordError(f"{where}: missing key 'gold' (a judged record needs its reference)")

    error_kind = obj.get("error_kind")
    if error_kind not in (None, "generation", "judge"):
        raise RecordError(f"{where}: key 'error_kind' must be 'generation' or 'judge'")
    ruler = obj.get("ruler")
    if ruler is not None and not (isinstance(ruler, dict) and "hash" in ruler):
        raise RecordError(f"{where}: key 'ruler' must be an object with 'version' and 'hash'")
    experiment = obj.get("experiment")
    case_id = obj.get("case_id", obj.get("id"))
    return JudgedRecord(
        input=inp.strip(), gold=gold, candidate=candidate, spec_passed=passed,
        violations=list(violations), verdict=verdict, error=error,
        error_kind=error_kind if error is not None else None,
        experiment=None if experiment is None else str(experiment),
        case_id=None if case_id is None else str(case_id),
        judge=obj.get("judge") if isinstance(obj.get("judge"), str) else None, ruler=ruler,
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS}, where=where)


def read_records(path) -> list[JudgedRecord]:
    """Every record of a JSONL file; raises RecordError naming file:line:key on bad input."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such records file")
    try:
        rows = read_jsonl(path, what="judged record")
    except ContractError as e:
        raise RecordError(str(e)) from None
    if not rows:
        raise RecordError(f"{path}: no records in the file")
    return [record_from_dict(obj, where) for where, obj in rows]


def write_records(path, records: Iterable[JudgedRecord], style: str = "camel") -> Path:
    """Write all records atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r.to_dict(style), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
