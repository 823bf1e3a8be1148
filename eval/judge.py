"""Judge a file of candidate answers against the frozen ruler and print the scorecard.

  python -m eval.judge --candidates FILE --judge offline|anthropic|learned:DIR [--swap]
                       [--samples K]
                       [--out RECORDS] [--weights W] [--experiment NAME]
  python -m eval.judge export-records --cache PATH --out FILE

The candidates file is JSONL, one line per ruler case: {"id" or "input", "candidate": contract
object (either key style) or the model's raw text} or {"id" or "input", "error": "..."} for a case
whose generation failed. Every line is gated by the spec gate (a failure scores 0 and its
violations are kept); the passing ones are judged; the judged records are written with --out
(the format eval.score and eval.calibrate read) and the scorecard is printed. The ruler is
verified first: nothing is scored on a ruler that does not match its manifest. A line that
repeats a case, names no ruler case, or is stamped ("ruler": {"version", "hash"}) with another
ruler's hash is refused (exit 1, all of them named by file:line) unless --allow-duplicates (the
first line of each case is judged), --allow-unknown (such lines are skipped) or
--allow-other-ruler.

`offline` is a deterministic proxy (no network) whose numbers are not comparable with published
ones; its similarity backend is sentence embeddings (bundled all-MiniLM-L6-v2) unless
`--offline-backend lexical`, and its name (offline@<hash>:<backend>) says which; `anthropic` is the Sonnet judge of the reference (ANTHROPIC_API_KEY from the environment).
`learned:DIR` is the learned offline judge fitted by `python -m judge.learn --out DIR` (judge/);
its name is learned@<hash of weights and training data>.
`export-records` turns the anthropic judge's verdict cache into judged records (for calibration).

This command belongs to the research loop because it loads the frozen ruler (eval.ruler); the
judging itself (candidates, judges, records, scorecard) lives in judge/ (judge.cli and below).
"""
from __future__ import annotations

import sys

from eval.ruler import RulerError, load_ruler
from judge.cli import (build_judge, build_parser, export_main, judge_candidates,  # noqa: F401
                       judge_file, read_candidates)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-records"]:
        return export_main(argv[1:])
    p = build_parser(prog="python -m eval.judge", description=__doc__)
    p.add_argument("--ruler-dir", default=None, help="ruler folder (default: eval/ruler)")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be at least 1")
    try:
        cases, info = load_ruler(verify=True, ruler_dir=args.ruler_dir)
    except RulerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return judge_file(args, cases, {"version": info.version, "hash": info.hash})


if __name__ == "__main__":
    sys.exit(main())
