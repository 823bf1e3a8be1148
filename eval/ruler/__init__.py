"""The frozen ruler: 30 cases (input + gold) under a manifest of content hashes.

eval/ruler/manifest.json records, at freeze time, the SHA-256 of every case file's bytes, of the
judge prompt (data.contract.JUDGE_PROMPT_HASH) and of the rubric, an overall ruler hash over all
of them, and a ruler version that only `python -m eval.ruler freeze` bumps. Every scorer calls
`load_ruler()`, which verifies the files against the manifest and raises RulerError on any
difference, so no score is ever computed on an edited ruler; every scorecard carries the
version and hash it was computed on.

The ruler folder is eval/ruler/ unless FMDISTILL_RULER_DIR or an explicit `ruler_dir` names
another one (tests use a temporary copy).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from data.appendlog import write_text_atomically
from data.contract import (JUDGE_PROMPT_HASH, RUBRIC, RUBRIC_DIMENSIONS, Case, ContractError,
                           case_from_dict, sha256_text, spec_violations)
from data.leak import near_duplicate

DEFAULT_RULER_DIR = Path(__file__).resolve().parent
RULER_ENV = "FMDISTILL_RULER_DIR"
MANIFEST_NAME = "manifest.json"
CASES_SUBDIR = "cases"
MANIFEST_FORMAT = "fmdistill-ruler/1"
EXPECTED_CASES = 30


class RulerError(RuntimeError):
    """The ruler does not match its manifest, or cannot be frozen. The message says which file."""


@dataclass(frozen=True)
class RulerInfo:
    version: int
    hash: str
    path: Path          # the ruler folder (holding manifest.json and cases/)

    def to_dict(self) -> dict:
        return {"version": self.version, "hash": self.hash, "path": str(self.path)}


def resolve_ruler_dir(path=None) -> Path:
    return Path(path or os.environ.get(RULER_ENV) or DEFAULT_RULER_DIR)


def rubric_hash() -> str:
    return sha256_text(json.dumps([[d, RUBRIC[d]] for d in RUBRIC_DIMENSIONS]))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def case_files(root: Path) -> list[Path]:
    return sorted((root / CASES_SUBDIR).glob("*.json"))


def compute_ruler_hash(cases: dict[str, str], judge_prompt_hash: str, rubric: str) -> str:
    """One hash over every case file's hash, the judge prompt and the rubric (not the version)."""
    payload = {"cases": dict(sorted(cases.items())), "judge_prompt_hash": judge_prompt_hash,
               "rubric_hash": rubric}
    return sha256_text(json.dumps(payload, sort_keys=True))


def current_state(root: Path) -> dict:
    cases = {f.name: file_sha256(f) for f in case_files(root)}
    return {"cases": cases, "judge_prompt_hash": JUDGE_PROMPT_HASH, "rubric_hash": rubric_hash(),
            "ruler_hash": compute_ruler_hash(cases, JUDGE_PROMPT_HASH, rubric_hash())}


def read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RulerError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    for key in ("ruler_version", "ruler_hash", "cases", "judge_prompt_hash", "rubric_hash"):
        if key not in m:
            raise RulerError(f"{path}: missing key {key!r}")
    return m


def manifest_problems(root: Path, manifest: dict) -> list[str]:
    """Every difference between the files on disk and the manifest, one line each."""
    cur = current_state(root)
    problems = []
    frozen, now = manifest["cases"], cur["cases"]
    cdir = f"{CASES_SUBDIR}/"
    for name in sorted(set(frozen) | set(now)):
        if name not in now:
            problems.append(f"{cdir}{name}: removed since the ruler was frozen")
        elif name not in frozen:
            problems.append(f"{cdir}{name}: added since the ruler was frozen")
        elif frozen[name] != now[name]:
            problems.append(f"{cdir}{name}: changed since the ruler was frozen (sha256 now "
                            f"{now[name][:12]}, frozen {frozen[name][:12]})")
    if manifest["judge_prompt_hash"] != cur["judge_prompt_hash"]:
        problems.append("the judge prompt (data.contract.JUDGE_PROMPT_HASH) changed since the "
                        "ruler was frozen")
    if manifest["rubric_hash"] != cur["rubric_hash"]:
        problems.append("the rubric (data.contract.RUBRIC) changed since the ruler was frozen")
    recomputed = compute_ruler_hash(frozen, manifest["judge_prompt_hash"], manifest["rubric_hash"])
    if recomputed != manifest["ruler_hash"]:
        problems.append(f"{MANIFEST_NAME}: its ruler_hash does not match its own entries "
                        "(the manifest was edited by hand)")
    return problems


def verify_ruler(path=None) -> RulerInfo:
    """RulerInfo of a ruler that matches its manifest; RulerError listing every mismatch."""
    root = resolve_ruler_dir(path)
    manifest = read_manifest(root)
    if manifest is None:
        raise RulerError(f"{root / MANIFEST_NAME}: no manifest; the ruler has never been frozen "
                         "(run `python -m eval.ruler freeze`)")
    problems = manifest_problems(root, manifest)
    if problems:
        raise RulerError(
            f"the ruler at {root} does not match its manifest (version "
            f"{manifest['ruler_version']}); scores on it would not be comparable:\n  "
            + "\n  ".join(problems)
            + "\nIf the change is intended, review it and run `python -m eval.ruler freeze` "
              "(this bumps the ruler version).")
    return RulerInfo(int(manifest["ruler_version"]), manifest["ruler_hash"], root)


def read_cases(root: Path) -> list[Case]:
    out = []
    for f in case_files(root):
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RulerError(f"{f}:{e.lineno}: invalid JSON ({e.msg})") from None
        try:
            out.append(case_from_dict(obj, where=str(f), default_id=f.stem))
        except ContractError as e:
            raise RulerError(str(e)) from None
    return out


def load_ruler(verify: bool = True, ruler_dir=None) -> tuple[list[Case], RulerInfo]:
    """The ruler's cases and identity. With verify=True (every scorer) a mismatch raises."""
    root = resolve_ruler_dir(ruler_dir)
    if verify:
        info = verify_ruler(root)
    else:
        manifest = read_manifest(root)
        info = RulerInfo(int(manifest["ruler_version"]) if manifest else 0,
                         current_state(root)["ruler_hash"], root)
    return read_cases(root), info


# ---- freezing --------------------------------------------------------------------------------
def gate_problems(root: Path, *, allow_count: bool = False) -> list[str]:
    """Why these cases cannot be frozen: contract, spec gate, ids, duplicate tasks, count."""
    problems: list[str] = []
    files = case_files(root)
    seen_ids: dict[str, str] = {}
    inputs: list[tuple[str, str]] = []
    for f in files:
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
            case = case_from_dict(obj, where=str(f), default_id=f.stem)
        except json.JSONDecodeError as e:
            problems.append(f"{f}:{e.lineno}: invalid JSON ({e.msg})")
            continue
        except ContractError as e:
            problems.append(str(e))
            continue
        if case.id != f.stem:
            problems.append(f"{f}: id {case.id!r} does not match the file name (expected "
                            f"{f.stem!r})")
        if case.id in seen_ids:
            problems.append(f"{f}: id {case.id!r} also used by {seen_ids[case.id]}")
        seen_ids[case.id] = f.name
        if obj.get("reviewed") is False:
            problems.append(f"{f}: teacher gold not reviewed yet (read it, then set "
                            "\"reviewed\": true)")
        for v in spec_violations(case.gold):
            problems.append(f"{f}: gold fails the spec gate: {v}")
        for other_name, other_input in inputs:
            if near_duplicate(case.input, other_input):
                problems.append(f"{f}: input {case.input!r} duplicates {other_name} "
                                f"({other_input!r})")
        inputs.append((f.name, case.input))
    if len(files) != EXPECTED_CASES and not allow_count:
        problems.append(f"{root / CASES_SUBDIR}: {len(files)} case files, expected exactly "
                        f"{EXPECTED_CASES} (pass --allow-count to freeze another number)")
    return problems


@dataclass
class FreezeResult:
    info: RulerInfo
    changed: bool
    changes: list[str]


def freeze(path=None, *, allow_count: bool = False, note: str = "") -> FreezeResult:
    """Write a new manifest (version + 1) if the cases pass the gate and differ from the last."""
    root = resolve_ruler_dir(path)
    problems = gate_problems(root, allow_count=allow_count)
    if problems:
        raise RulerError(f"refusing to freeze the ruler at {root}:\n  " + "\n  ".join(problems))
    old = read_manifest(root)
    cur = current_state(root)
    if old and not manifest_problems(root, old):
        return FreezeResult(RulerInfo(int(old["ruler_version"]), old["ruler_hash"], root),
                            False, [])
    changes = manifest_problems(root, old) if old else [f"first freeze of {len(cur['cases'])} "
                                                       "cases"]
    version = int(old["ruler_version"]) + 1 if old else 1
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = list(old.get("history", [])) if old else []
    history.append({"version": version, "ruler_hash": cur["ruler_hash"], "frozen_at": now,
                    "n_cases": len(cur["cases"]), "note": note})
    manifest = {
        "format": MANIFEST_FORMAT,
        "ruler_version": version,
        "ruler_hash": cur["ruler_hash"],
        "frozen_at": now,
        "n_cases": len(cur["cases"]),
        "judge_prompt_hash": cur["judge_prompt_hash"],
        "rubric_hash": cur["rubric_hash"],
        "cases": cur["cases"],
        "history": history,
    }
    write_text_atomically(root / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return FreezeResult(RulerInfo(version, cur["ruler_hash"], root), True, changes)


