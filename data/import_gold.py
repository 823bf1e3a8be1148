"""Import gold sets you already have (camelCase case format) through the distillation gate.

    python -m data.import_gold DIR|FILE [DIR|FILE ...] --out gold.jsonl [--quarantine PATH]

Reads .json files (one case or a list of cases) and .jsonl files (one case per line),
directories recursively in sorted order. Each case is `{"id","input","gold":{taskTitle,
taskDescription, questions[{title, description, requiresExternalAction}]}}` or a bare result
carrying its own "input"; the answer's keys may also be other planners' names (`title`,
`summary`, `questions[].question|detail`; see data.contract.keys) or a --field-map, and are
written in the project's canonical form. Every case passes the same checks as teacher output (the contract
and data.contract.spec_violations); a failing one goes to the quarantine file with its file:line
and reason. Ids already in the output with the same input and answer are skipped, so re-running
an import is harmless; the same id with another input or answer is quarantined. Exit status: 0
all imported or already present, 1 any case quarantined, 2 an unreadable file (not UTF-8, a
BOM, no cases, an over-long line).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data.appendlog import AppendLog, read_records
from data.contract import (ContractError, FieldMapError, case_from_dict, parse_field_map,
                           spec_violations)
from data.contract.inputs import MAX_LINE_BYTES, InputError, read_text, regular_file
from data.response_cache import now_iso


@dataclass
class ImportSummary:
    files: int = 0
    imported: int = 0
    skipped: int = 0        # id already in the output
    quarantined: int = 0
    out_path: str = ""
    quarantine_path: str = ""

    def text(self) -> str:
        s = (f"import_gold: {self.files} files: {self.imported} imported, {self.skipped} already "
             f"present, {self.quarantined} quarantined\n  output: {self.out_path}")
        if self.quarantined:
            s += (f"\n  quarantine: {self.quarantine_path} (file:line and reason per case)"
                  f"\n  {self.quarantined} case(s) were not imported: exit status 1")
        return s


def source_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix in (".json", ".jsonl"))
            if not found:
                raise ContractError(f"{p}: no .json or .jsonl files in the folder")
            files += found
        elif p.exists():
            files.append(regular_file(p, what="gold file"))
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return files


def _parse(text: str) -> tuple[Any, str]:
    """(value, problem): unreadable JSON is quarantined, not fatal."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg}, column {e.colno})"
    except RecursionError:
        return None, "JSON nested too deeply"


def raw_cases(path: Path) -> Iterator[tuple[str, Any, str]]:
    """(where, object, problem) per case in a file; problem is non-empty for unreadable parts.
    Unreadable files (not UTF-8, a BOM, an over-long line, no case at all) raise InputError."""
    text = read_text(path, what="gold file")
    if not text.strip():
        raise InputError(f"{path}: no cases in the file (empty or only blank lines)")
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if len(line.encode("utf-8")) > MAX_LINE_BYTES:
                raise InputError(f"{path}:{lineno}: line longer than the {MAX_LINE_BYTES:,}-byte "
                                 "limit for a case")
            obj, problem = _parse(line)
            yield f"{path}:{lineno}", (line if problem else obj), problem
        return
    obj, problem = _parse(text)
    if problem:
        yield str(path), text[:200], problem
        return
    if isinstance(obj, list):
        if not obj:
            raise InputError(f"{path}: an empty list; no cases in the file")
        for i, o in enumerate(obj):
            yield f"{path}[{i}]", o, ""
    else:
        yield str(path), obj, ""


def _fingerprint(inp: Any, gold: Any) -> tuple[str, str]:
    """What makes two cases with one id the same case: the input and the answer."""
    return (json.dumps(inp, ensure_ascii=False),
            json.dumps(gold, sort_keys=True, ensure_ascii=False))


def _differs(a: tuple[str, str], b: tuple[str, str]) -> str:
    parts = [w for w, i in (("a different input", 0), ("a different answer", 1)) if a[i] != b[i]]
    return " and ".join(parts)


def import_gold(paths: list[str | Path], out_path: str | Path,
                quarantine_path: str | Path | None = None,
                field_map: dict | None = None) -> ImportSummary:
    out_path = Path(out_path)
    quarantine_path = Path(quarantine_path) if quarantine_path else \
        out_path.with_name(out_path.stem + ".quarantine.jsonl")
    files = source_files([Path(p) for p in paths])
    summary = ImportSummary(files=len(files), out_path=str(out_path),
                            quarantine_path=str(quarantine_path))
    # Every file is read before the output is opened: an unreadable one stops the import
    # without touching the output or the quarantine.
    parsed = [(f, list(raw_cases(f))) for f in files]
    with AppendLog(out_path) as out, AppendLog(quarantine_path) as quarantine:
        # id -> (input, answer) of what the output already holds: a later case with the same id
        # but another input or answer is a conflict (quarantined), never "already present".
        done = {str(o.get("id")): _fingerprint(o.get("input"), o.get("gold"))
                for _w, o in read_records(out_path) if isinstance(o, dict)}
        # A re-run must not pile up the same rejections again.
        rejected = {(o.get("where"), o.get("reason")) for _w, o in read_records(quarantine_path)
                    if isinstance(o, dict)}
        seen_here: dict[str, tuple[str, str]] = {}
        for f, rows in parsed:
            for where, obj, problem in rows:
                reason = problem
                case = None
                if not reason:
                    try:
                        case = case_from_dict(obj, where=where, field_map=field_map)
                        violations = spec_violations(case.gold)
                        if violations:
                            reason = f"{where}: fails the spec gate: " + "; ".join(violations)
                    except ContractError as e:
                        reason = str(e)
                else:
                    reason = f"{where}: {reason}"
                fp = _fingerprint(case.input, case.gold.to_dict("camel")) if case else ("", "")
                if case is not None and not reason and case.id in seen_here:
                    first, first_fp = seen_here[case.id]
                    if first_fp == fp:
                        summary.skipped += 1      # the same case twice: keep one
                        continue
                    reason = f"{where}: id {case.id!r} was already imported from {first} " \
                             f"with {_differs(first_fp, fp)}"
                elif case is not None and not reason and done.get(case.id, fp) != fp:
                    reason = f"{where}: id {case.id!r} is already in {out_path} with " \
                             f"{_differs(done[case.id], fp)}"
                if reason:
                    if (where, reason) not in rejected:
                        quarantine.append({"where": where, "reason": reason, "record": obj,
                                           "timestamp": now_iso()})
                        rejected.add((where, reason))
                    summary.quarantined += 1
                    continue
                seen_here[case.id] = (where, fp)
                if case.id in done:
                    summary.skipped += 1
                    continue
                record = case.to_dict("camel")
                record["source"] = case.source or f"imported:{f.name}"
                out.append(record)
                done[case.id] = fp
                summary.imported += 1
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.import_gold", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="files (.json/.jsonl) or directories")
    p.add_argument("--out", required=True, type=Path, help="gold JSONL to append to")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="rejected cases with reasons (default OUT.quarantine.jsonl)")
    p.add_argument("--field-map", default=None, metavar="CANONICAL=THEIRS,...",
                   help="answer key names beyond the known aliases, e.g. "
                        "taskTitle=heading,questions[].title=ask")
    a = p.parse_args(argv)
    try:
        summary = import_gold(a.paths, a.out, a.quarantine, parse_field_map(a.field_map))
    except (FileNotFoundError, ContractError, FieldMapError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    # Anything quarantined is a non-zero exit, so a script cannot mistake a partial import for a
    # complete one.
    return 1 if summary.quarantined else 0


if __name__ == "__main__":
    sys.exit(main())
