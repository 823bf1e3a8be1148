"""Build SFT data from gold records: `python -m data.sft [--gold FILE ...] [--out DIR]`.

Reads gold cases (the bundled hand-written references by default, or teacher output from
data.distill / data.import_gold; or, with --format apple, Apple-toolkit files whose prompt holds
the task), removes duplicates, refuses any input that equals or nearly equals, contains,
paraphrases or answers with a ruler task (data.leak; exit 2, every offending line listed),
splits train/validation with a seed,
and writes both TRL's conversational prompt/completion JSONL and Apple's toolkit JSONL (one JSON
array of system/user/assistant messages per line), plus a manifest with counts and hashes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data.cli_types import FRACTION
from data.contract import (PROMPT_HASH, Case, ContractError, FieldMapError, case_from_dict,
                           normalize_space, parse_assistant, parse_field_map, planner_messages,
                           read_jsonl, render_assistant, sha256_text, spec_violations)
from data.contract.inputs import require_records
from data.corpus import REFERENCES_DIR
from data.formats import FormatError, load_rows, row_tasks
from data.leak import LeakError, near_duplicate, normalize_input, ruler_guard

DEFAULT_OUT = Path("runs/data/sft")
GOLD_FORMATS = ("cases", "apple")


def trl_record(case: Case) -> dict:
    return {"id": case.id, "prompt": planner_messages(case.input),
            "completion": [{"role": "assistant", "content": render_assistant(case.gold)}]}


def apple_record(case: Case) -> list[dict]:
    return planner_messages(case.input) + [{"role": "assistant",
                                            "content": render_assistant(case.gold)}]


def load_gold(paths: list[Path], *, gold_format: str = "cases", field_map: dict | None = None,
              input_pattern: str | None = None, rules: Counter | None = None
              ) -> list[tuple[str, Case]]:
    """(where, case) for every record; each must pass the contract and the spec gate.

    `gold_format` "cases" reads case JSONL (`{"id","input","gold"}` or a bare result with
    `input`); "apple" reads Apple-toolkit message arrays (data.formats), the task taken from the
    prompt by data.contract.find_task (counted per rule in `rules`) and the answer from the last
    assistant turn. Either way the answer's keys may be any known spelling or `field_map`.
    """
    if gold_format not in GOLD_FORMATS:
        raise ContractError(f"--format must be one of {', '.join(GOLD_FORMATS)}, got "
                            f"{gold_format!r}")
    out = []
    for p in paths:
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        if not files:
            raise ContractError(f"{p}: no .jsonl gold files in the folder")
        for f in files:
            if gold_format == "apple":
                items = _apple_cases(f, field_map, input_pattern, rules)
            else:
                items = [(where, case_from_dict(obj, where=where, field_map=field_map))
                         for where, obj in require_records(read_jsonl(f, what="gold record"), f,
                                                           what="gold records")]
            for where, case in items:
                bad = spec_violations(case.gold)
                if bad:
                    raise ContractError(f"{where}: gold fails the spec gate: {'; '.join(bad)}")
                out.append((where, case))
    return out


def _apple_cases(path: Path, field_map, input_pattern, rules) -> list[tuple[str, Case]]:
    try:
        rows, _ = load_rows(path, "apple")
        tasks = row_tasks(rows, input_pattern)
    except (FormatError, ValueError) as e:
        raise ContractError(str(e)) from None
    out = []
    for row, task in zip(rows, tasks):
        where = row["where"]
        try:
            gold = parse_assistant(row["completion"][0]["content"], strict=True,
                                   field_map=field_map).result
        except ContractError as e:
            raise ContractError(f"{where}: {e}") from None
        if rules is not None:
            rules[task.rule] += 1
        # The rule goes into the location, so a leak or duplicate report says how the task was
        # read out of the prompt.
        out.append((f"{where} (task by {task.rule})",
                    Case("task-" + sha256_text(normalize_space(task.text))[:10],
                                task.text, gold, f"apple:{path.name}")))
    return out


@dataclass
class BuildReport:
    n_in: int = 0
    duplicates: list[str] = field(default_factory=list)
    input_rules: dict = field(default_factory=dict)   # --format apple: rule -> rows
    n_train: int = 0
    n_val: int = 0
    files: dict = field(default_factory=dict)
    hashes: dict = field(default_factory=dict)


def dedupe(items: list[tuple[str, Case]]) -> tuple[list[tuple[str, Case]], list[str]]:
    """Keep the first of each group of equal or near-equal inputs."""
    kept: list[tuple[str, Case]] = []
    seen_norm: dict[str, str] = {}
    dropped = []
    for where, case in items:
        norm = normalize_input(case.input)
        dup_of = seen_norm.get(norm)
        if dup_of is None:
            dup_of = next((w for w, c in kept if near_duplicate(c.input, case.input)), None)
        if dup_of is not None:
            dropped.append(f"{where}: {case.input!r} duplicates {dup_of}")
            continue
        seen_norm[norm] = where
        kept.append((where, case))
    return kept, dropped


def write_jsonl_atomic(path: Path, rows) -> str:
    """Write rows to path via a temp file + rename; returns the sha256 of the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                line = json.dumps(row, ensure_ascii=False) + "\n"
                h.update(line.encode("utf-8"))
                fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return h.hexdigest()


def build_sft_data(gold_paths: list[Path], out_dir: Path, *, val_fraction: float = 0.1,
                   seed: int = 0, ruler_cases_dir: Path | None = None, gold_format: str = "cases",
                   field_map: dict | None = None, input_pattern: str | None = None
                   ) -> BuildReport:
    rules: Counter = Counter()
    items = load_gold(gold_paths, gold_format=gold_format, field_map=field_map,
                      input_pattern=input_pattern, rules=rules)
    report = BuildReport(n_in=len(items), input_rules=dict(rules))
    leaks = ruler_guard(ruler_cases_dir).find_leaks(
        (where, case.input, case.gold) for where, case in items)
    if leaks:
        raise LeakError(leaks)
    items, report.duplicates = dedupe(items)
    cases = [c for _, c in items]
    rng = random.Random(seed)
    order = list(range(len(cases)))
    rng.shuffle(order)
    n_val = max(1, round(len(cases) * val_fraction)) if val_fraction > 0 and len(cases) > 1 else 0
    val_idx = set(order[:n_val])
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    report.n_train, report.n_val = len(train), len(val)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "train": (out_dir / "train.jsonl", map(trl_record, train)),
        "val": (out_dir / "val.jsonl", map(trl_record, val)),
        "apple_train": (out_dir / "apple_train.jsonl", map(apple_record, train)),
        "apple_val": (out_dir / "apple_val.jsonl", map(apple_record, val)),
    }
    for name, (path, rows) in outputs.items():
        report.hashes[name] = write_jsonl_atomic(path, rows)
        report.files[name] = str(path)
    manifest = {
        "prompt_hash": PROMPT_HASH, "seed": seed, "val_fraction": val_fraction,
        "n_input": report.n_in, "n_train": report.n_train, "n_val": report.n_val,
        "duplicates_removed": report.duplicates, "sha256": report.hashes,
        "sources": [str(p) for p in gold_paths],
        **({"gold_format": gold_format, "input_rules": report.input_rules}
           if gold_format != "cases" else {}),
    }
    tmp = out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out_dir / "manifest.json")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.sft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gold", action="append", type=Path,
                    help="gold JSONL file or folder of .jsonl (repeatable; default: the bundled "
                         f"hand-written references in {REFERENCES_DIR})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    ap.add_argument("--val-fraction", type=FRACTION, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", dest="gold_format", choices=GOLD_FORMATS, default="cases",
                    help="cases: gold case JSONL (default); apple: Apple-toolkit message arrays "
                         "(task found in the prompt, answer from the last assistant turn)")
    ap.add_argument("--field-map", default=None, metavar="CANONICAL=THEIRS,...",
                    help="answer key names beyond the known aliases (e.g. taskTitle=heading)")
    ap.add_argument("--input-pattern", default=None, metavar="REGEX",
                    help="--format apple: regex with one group, the task in the prompt "
                         "(default: the documented rules)")
    args = ap.parse_args(argv)
    gold = args.gold or [REFERENCES_DIR]
    try:
        fmap = parse_field_map(args.field_map)
        rep = build_sft_data(gold, args.out, val_fraction=args.val_fraction, seed=args.seed,
                             gold_format=args.gold_format, field_map=fmap,
                             input_pattern=args.input_pattern)
    except LeakError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ContractError, FieldMapError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"SFT data: {rep.n_train} train / {rep.n_val} validation examples from {rep.n_in} gold "
          f"records ({len(rep.duplicates)} duplicates removed) -> {args.out}")
    for d in rep.duplicates:
        print(f"  removed duplicate {d}")
    if rep.input_rules:
        print("  tasks found by rule: " + ", ".join(f"{k} {v}" for k, v in
                                                     rep.input_rules.items()))
    for name, path in rep.files.items():
        print(f"  {name:12s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
