"""python -m eval.ruler verify | freeze | build — check, freeze or extend the frozen ruler.

  python -m eval.ruler verify [--ruler-dir DIR]
      exit 0 and print the version and hash when every case file matches the manifest; exit 1
      naming each case file that changed, was added or was removed.
  python -m eval.ruler freeze [--ruler-dir DIR] [--allow-count] [--note TEXT]
      the only way to change the ruler: checks every case against the contract and the spec
      gate (and ids, duplicates, exactly 30 cases), then writes manifest.json with the version
      bumped. Nothing is written when nothing changed.
  python -m eval.ruler build --tasks FILE --out-dir DIR [--model M] [--concurrency N] [--batch]
      produces gold for new ruler tasks through the teacher (data.distill.distill_tasks: the
      distillation client, its retries, cache and spec gate) and writes one case file per task
      into DIR with "reviewed": false. Read and fix each, set "reviewed": true, copy them into
      eval/ruler/cases/ and run freeze (freeze refuses unreviewed gold).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.cli_types import COUNT
from data.contract import ContractError, InputError
from eval.ruler import (EXPECTED_CASES, RulerError, freeze, load_ruler, resolve_ruler_dir,
                        verify_ruler)


def cmd_verify(args) -> int:
    info = verify_ruler(args.ruler_dir)
    cases, _ = load_ruler(verify=False, ruler_dir=info.path)
    print(f"ruler OK: version {info.version}, {len(cases)} cases, hash {info.hash}")
    return 0


def cmd_freeze(args) -> int:
    res = freeze(args.ruler_dir, allow_count=args.allow_count, note=args.note or "")
    if not res.changed:
        print(f"ruler unchanged: still version {res.info.version} (hash {res.info.hash})")
        return 0
    print(f"froze ruler version {res.info.version} (hash {res.info.hash}) at "
          f"{res.info.path / 'manifest.json'}")
    for c in res.changes:
        print(f"  {c}")
    return 0


def cmd_build(args) -> int:
    from data.contract import case_from_dict, read_jsonl
    from data.corpus import pool_tasks, read_tasks
    from data.leak import LeakGuard

    tasks = read_tasks(args.tasks)
    if not tasks:
        raise RulerError(f"{args.tasks}: no tasks")
    existing, _ = load_ruler(verify=False, ruler_dir=args.ruler_dir)
    # One find_leaks call per side: the encoder embeds each side once, in batches.
    dups = LeakGuard((c.id, c.input, c.gold) for c in existing).find_leaks(
        (t.id, t.input) for t in tasks)
    if dups:
        lines = ["  " + lk.describe() for lk in dups]
        raise RulerError(f"{args.tasks}: task(s) already on the ruler:\n" + "\n".join(lines))
    for lk in LeakGuard((t.id, t.input) for t in tasks).find_leaks(
            (p.id, p.input) for p in pool_tasks()):
        print(f"note: ruler task {lk.protected_id} ({lk.protected_input!r}) is also in the "
              f"training pool as {lk.where}; the leak guard will keep it out of training",
              file=sys.stderr)

    # lazy: the teacher client is only needed here
    from data.anthropic_client import ClaudeAPIError
    from data.redaction import MissingKeyError
    from data.distill import distill_tasks
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gold_path = out_dir / "gold.jsonl"      # distill's resumable output; re-running is free
    opts = {"model": args.model, "concurrency": args.concurrency, "batch": args.batch,
            "cache_path": args.cache}
    try:
        summary = distill_tasks(tasks, gold_path,
                                **{k: v for k, v in opts.items() if v is not None})
    except (MissingKeyError, ClaudeAPIError) as e:
        raise RulerError(str(e)) from None
    if hasattr(summary, "text"):
        print(summary.text())

    by_id = {t.id: t for t in tasks}
    written = []
    for where, obj in (read_jsonl(gold_path, what="teacher answer") if gold_path.exists() else []):
        case = case_from_dict(obj, where=where)
        if case.id not in by_id:
            continue                       # an earlier run's task in the same folder
        task = by_id.pop(case.id)
        case_obj = {"id": case.id, **({"domain": task.domain} if task.domain else {}),
                    "input": case.input, "source": str(obj.get("source", "teacher")),
                    "reviewed": False, "gold": case.gold.to_dict("camel")}
        if "provenance" in obj:
            case_obj["provenance"] = obj["provenance"]
        path = out_dir / f"{case.id}.json"
        if path.exists():   # never overwrite a file that may already carry a review
            print(f"kept existing {path} (delete it to regenerate)", file=sys.stderr)
            continue
        path.write_text(json.dumps(case_obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    print(f"wrote {len(written)} case file(s) to {out_dir} for review")
    if by_id:
        qpath = getattr(summary, "quarantine_path", "") or "the quarantine file"
        print(f"no gold for {len(by_id)} task(s): {', '.join(sorted(by_id))} (reasons in "
              f"{qpath}; re-run to retry)", file=sys.stderr)
    print("next: read each file, fix what is wrong, set \"reviewed\": true, copy them into "
          f"{resolve_ruler_dir(args.ruler_dir) / 'cases'} and run `python -m eval.ruler freeze`")
    return 1 if by_id else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.ruler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ruler-dir", default=None,
                        help="ruler folder holding manifest.json and cases/ (default: eval/ruler, "
                             "or $FMDISTILL_RULER_DIR)")
    sub.add_parser("verify", parents=[common], help="check the cases against the manifest")
    f = sub.add_parser("freeze", parents=[common], help="gate the cases and write a new manifest")
    f.add_argument("--allow-count", action="store_true",
                   help=f"freeze even if there are not exactly {EXPECTED_CASES} cases")
    f.add_argument("--note", help="a line recorded in the manifest's history")
    b = sub.add_parser("build", parents=[common], help="teacher gold for new ruler tasks")
    b.add_argument("--tasks", required=True, help="task file (.txt one per line, or .jsonl "
                                                  "with id/input)")
    b.add_argument("--out-dir", required=True, help="folder for the case files to review")
    b.add_argument("--model", default=None, help="teacher model (default: the client's)")
    b.add_argument("--concurrency", type=COUNT, default=None, help="parallel requests")
    b.add_argument("--batch", action="store_true", help="use the Message Batches API")
    b.add_argument("--cache", default=None, help="SQLite response cache path")
    args = p.parse_args(argv)
    try:
        return {"verify": cmd_verify, "freeze": cmd_freeze, "build": cmd_build}[args.cmd](args)
    except InputError as e:             # a bad --tasks file: bad input, like every CLI
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RulerError, ContractError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
