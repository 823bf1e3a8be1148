"""Build SFT data from gold records: `python -m data.sft [--gold FILE ...] [--out DIR]`.

Reads gold cases (the bundled hand-written references by default, or teacher output from
data.distill / data.import_gold), removes duplicates, refuses any input that equals or nearly
equals, contains, paraphrases or answers with a ruler task (data.leak; exit 2, every offending
line listed), splits train/validation with a seed,
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
from dataclasses import dataclass, field
from pathlib import Path

from data.contract import (PROMPT_HASH, Case, ContractError, case_from_dict, planner_messages,
                           read_jsonl, render_assistant, spec_violations)
from data.contract.inputs import require_records
from data.corpus import REFERENCES_DIR
from data.leak import LeakError, near_duplicate, normalize_input, ruler_guard

DEFAULT_OUT = Path("runs/data/sft")


def trl_record(case: Case) -> dict:
    return {"id": case.id, "prompt": planner_messages(case.input),
            "completion": [{"role": "assistant", "content": render_assistant(case.gold)}]}


def apple_record(case: Case) -> list[dict]:
    return planner_messages(case.input) + [{"role": "assistant",
                                            "content": render_assistant(case.gold)}]


def load_gold(paths: list[Path]) -> list[tuple[str, Case]]:
    """(where, case) for every record; each must pass the contract and the spec gate."""
    out = []
    for p in paths:
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        if not files:
            raise ContractError(f"{p}: no .jsonl gold files in the folder")
        for f in files:
            for where, obj in require_records(read_jsonl(f, what="gold record"), f,
                                              what="gold records"):
                case = case_from_dict(obj, where=where)
                bad = spec_violations(case.gold)
                if bad:
                    raise ContractError(f"{where}: gold fails the spec gate: {'; '.join(bad)}")
                out.append((where, case))
    return out


@dataclass
class BuildReport:
    n_in: int = 0
    duplicates: list[str] = field(default_factory=list)
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
                   seed: int = 0, ruler_cases_dir: Path | None = None) -> BuildReport:
    items = load_gold(gold_paths)
    report = BuildReport(n_in=len(items))
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
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    gold = args.gold or [REFERENCES_DIR]
    try:
        rep = build_sft_data(gold, args.out, val_fraction=args.val_fraction, seed=args.seed)
    except LeakError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ContractError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"SFT data: {rep.n_train} train / {rep.n_val} validation examples from {rep.n_in} gold "
          f"records ({len(rep.duplicates)} duplicates removed) -> {args.out}")
    for d in rep.duplicates:
        print(f"  removed duplicate {d}")
    for name, path in rep.files.items():
        print(f"  {name:12s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
