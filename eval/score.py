"""Print the scorecard of a judged-records file without judging anything.

  python -m eval.score --records FILE [--by experiment] [--baseline NAME]
  python -m eval.score --records A.jsonl --compare B.jsonl

The ruler is verified first (a ruler that does not match its manifest stops scoring with exit 1).
With --by experiment there is one scorecard per experiment; --baseline NAME then compares every
other experiment with NAME case by case. --compare B.jsonl compares two runs on the same cases
(paired bootstrap + sign test) and says whether the difference is distinguishable from noise.

A file (or, with --by experiment, an experiment) that repeats a ruler case, holds a record that
is not a ruler case, or was judged on another ruler is refused (exit 1, every such record named
by file:line) unless --allow-duplicates (score the first record of each case),
--allow-unknown (score non-ruler records too) or --allow-other-ruler says otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.leak import normalize_input
from judge.coverage import Entry, add_refusal_flags, check_entries, refusal_message
from judge.metric import paired_comparison, render_comparison, render_scorecard, scorecard
from judge.records import RecordError, read_records
from eval.ruler import RulerError, load_ruler


def ruler_notices(records, cases, info) -> list[str]:
    """Warnings when records were judged on another ruler or do not cover the ruler's cases."""
    notes = []
    other = sorted({(r.ruler.get("version"), r.ruler.get("hash")) for r in records
                    if r.ruler and r.ruler.get("hash") != info.hash}, key=str)
    if other:
        notes.append(f"records were judged on another ruler ({', '.join(f'v{v} {str(h)[:12]}' for v, h in other)}); "
                     f"the current ruler is v{info.version} {info.hash[:12]}")
    ruler_inputs = {normalize_input(c.input) for c in cases}
    covered = {normalize_input(r.input) for r in records} & ruler_inputs
    foreign = sum(normalize_input(r.input) not in ruler_inputs for r in records)
    if foreign:
        notes.append(f"{foreign} record(s) are not ruler tasks")
    if len(covered) < len(ruler_inputs):
        notes.append(f"the records cover {len(covered)} of the {len(ruler_inputs)} ruler cases")
    return notes


def checked(records, cases, ruler, source: str, args) -> list:
    """The records to score: refuses (ValueError) duplicate, unknown and other-ruler records
    unless allowed; with --allow-duplicates only the first record of each case is kept."""
    cov = check_entries([Entry(r.where, r.case_id, r.input, r.ruler) for r in records],
                        cases, ruler)
    bad = cov.refusals(allow_duplicates=args.allow_duplicates, allow_unknown=args.allow_unknown,
                       allow_other_ruler=args.allow_other_ruler)
    if bad:
        raise RefusedRecords(refusal_message(source, bad))
    for d in cov.duplicates:
        print(f"warning: dropped {d}", file=sys.stderr)
    return [r for i, r in enumerate(records) if i not in cov.repeat_index]


class RefusedRecords(ValueError):
    """Records that would distort the headline; exit 1."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", required=True, help="judged records (JSONL)")
    p.add_argument("--by", choices=["experiment"], default=None,
                   help="one scorecard per value of this field")
    p.add_argument("--baseline", default=None,
                   help="with --by experiment: compare every experiment with this one")
    p.add_argument("--compare", default=None,
                   help="a second records file: paired comparison (this file = A, that = B)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--ruler-dir", default=None, help="ruler folder (default: eval/ruler)")
    add_refusal_flags(p, "score", "score (with a notice)")
    args = p.parse_args(argv)
    if args.baseline and args.by != "experiment":
        p.error("--baseline needs --by experiment")
    try:
        cases, info = load_ruler(verify=True, ruler_dir=args.ruler_dir)
    except RulerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        records = read_records(args.records)
        other = read_records(args.compare) if args.compare else None
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ruler = {"version": info.version, "hash": info.hash}
    groups: dict[str, list] = {}
    if args.by:
        for r in records:
            groups.setdefault(r.experiment or "(no experiment)", []).append(r)
    else:
        groups[Path(args.records).name] = records
    try:
        groups = {label: checked(recs, cases, ruler, f"{args.records} ({label})" if args.by
                                 else args.records, args) for label, recs in groups.items()}
        if other is not None:
            other = checked(other, cases, ruler, args.compare, args)
        records = [r for recs in groups.values() for r in recs]
    except RefusedRecords as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    proxy = any((r.judge or "").startswith("offline@") for r in records)
    out = {"ruler": ruler, "scorecards": [], "comparisons": []}
    for label, recs in groups.items():
        card = scorecard(recs, label=label, ruler=ruler, seed=args.seed)
        notes = ruler_notices(recs, cases, info)
        if proxy:
            from judge.judges.offline import PROXY_NOTICE
            notes.append(PROXY_NOTICE)
        render_scorecard(card, notice="\n".join(notes) or None)
        out["scorecards"].append(card.to_dict())
    try:
        if args.baseline:
            if args.baseline not in groups:
                p.error(f"--baseline {args.baseline!r} is not an experiment in {args.records}; "
                        f"choose one of {', '.join(groups)}")
            for label, recs in groups.items():
                if label != args.baseline:
                    c = paired_comparison(groups[args.baseline], recs, label_a=args.baseline,
                                          label_b=label, seed=args.seed)
                    render_comparison(c)
                    out["comparisons"].append(c.to_dict())
        if other is not None:
            card = scorecard(other, label=Path(args.compare).name, ruler=ruler, seed=args.seed)
            render_scorecard(card, notice="\n".join(ruler_notices(other, cases, info)) or None)
            out["scorecards"].append(card.to_dict())
            c = paired_comparison(records, other, label_a=Path(args.records).name,
                                  label_b=Path(args.compare).name, seed=args.seed)
            render_comparison(c)
            out["comparisons"].append(c.to_dict())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
