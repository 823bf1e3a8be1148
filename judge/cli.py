"""The judge command's working parts, without the ruler: read a candidates file against given
cases, build the chosen judge from the command-line options, gate and judge every case into
judged records, and print the scorecard.

`python -m eval.judge` (eval/judge.py) is the command: it verifies and loads the frozen ruler
(eval.ruler, part of the research loop above this package) and hands the cases here. prefs.build,
rl and eval.run build their judges with `build_judge` and judge with `judge_candidates`.
`export-records` (the anthropic judge's verdict cache as judged records) needs no ruler and lives
here too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.cli_types import COUNT
from data.contract import ContractError, DiscoveryResult, parse_assistant, parse_field_map, \
    read_jsonl, spec_violations
from judge.coverage import (Coverage, Entry, add_refusal_flags, check_entries,
                           refusal_message)
from judge.judges import JudgeItem, get_judge, is_learned, judge_name
from judge.metric import render_scorecard, scorecard
from judge.records import JudgedRecord, write_records
from judge.verdict import Verdict


def read_candidates(path, cases, ruler: dict, field_map: dict | None = None
                    ) -> tuple[dict[str, tuple[DiscoveryResult | None, str | None]], Coverage]:
    """(ruler case id -> (candidate, generation error), coverage). Malformed lines raise
    ContractError naming file:line:key; repeated, unknown and other-ruler lines are listed in the
    coverage (judge.coverage) for the caller to refuse or allow; only the first line of each
    known case is read. A candidate's keys may be any known spelling (data.contract.keys) or
    `field_map`'s."""
    rows = []
    for where, obj in read_jsonl(path, what="candidate"):
        if not isinstance(obj, dict):
            raise ContractError(f"{where}: expected a JSON object")
        if "id" not in obj and not isinstance(obj.get("input"), str):
            raise ContractError(f"{where}: a candidate line needs key 'id' or 'input'")
        stamp = obj.get("ruler")
        if stamp is not None and not (isinstance(stamp, dict) and "hash" in stamp):
            raise ContractError(f"{where}: key 'ruler' must be an object with 'version' and "
                                "'hash'")
        rows.append((where, obj))
    entries = [Entry(w, str(o["id"]) if "id" in o else None,
                     o.get("input") if isinstance(o.get("input"), str) else None, o.get("ruler"))
               for w, o in rows]
    cov = check_entries(entries, cases, ruler)
    out: dict[str, tuple[DiscoveryResult | None, str | None]] = {}
    for i, ((where, obj), case_id) in enumerate(zip(rows, cov.case_of)):
        if case_id is None or i in cov.repeat_index:
            continue
        err = obj.get("error")
        cand = obj.get("candidate")
        if err is not None:
            if not isinstance(err, str):
                raise ContractError(f"{where}: key 'error' must be a string")
            out[case_id] = (None, err)
        elif isinstance(cand, str):
            parsed = parse_assistant(cand, field_map=field_map)
            out[case_id] = ((parsed.result, None) if parsed.result is not None
                            else (None, "unparseable output: " + "; ".join(parsed.problems)))
        elif isinstance(cand, dict):
            out[case_id] = (DiscoveryResult.from_dict(cand, where=f"{where}: key 'candidate'",
                                                      exact_questions=None, field_map=field_map),
                            None)
        else:
            raise ContractError(f"{where}: needs key 'candidate' (contract object or text) or "
                                "key 'error'")
    return out, cov


def build_judge(args):
    """The judge named by args.judge (offline, anthropic or learned:DIR) with the command line's
    options; ValueError for options that do not apply to it."""
    if is_learned(args.judge):
        others = (args.weights, getattr(args, "offline_backend", None),
                  getattr(args, "embedding_model", None))
        if args.swap or args.samples != 1 or any(others):
            raise ValueError("--swap, --samples, --weights, --embedding-model and "
                             "--offline-backend do not apply to the learned judge (its folder "
                             "holds everything it needs)")
        return get_judge(args.judge)
    if args.judge == "offline":
        if args.swap or args.samples != 1:
            raise ValueError("--swap and --samples apply to the anthropic judge only (the offline "
                             "judge is deterministic)")
        return get_judge("offline", weights_path=args.weights,
                         embedding_model=args.embedding_model,
                         backend=getattr(args, "offline_backend", None))
    if args.weights or args.embedding_model or getattr(args, "offline_backend", None):
        raise ValueError("--weights, --embedding-model and --offline-backend apply to the "
                         "offline judge only")
    opts = {"swap": args.swap, "samples": args.samples, "progress": True}
    for key in ("model", "cache_path", "concurrency"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    from data.redaction import MissingKeyError   # lazy: needs the anthropic SDK
    try:
        return get_judge("anthropic", **opts)
    except MissingKeyError as e:
        raise ValueError(str(e)) from None


def judge_candidates(cases, candidates, judge, *, ruler: dict, experiment: str | None = None
                     ) -> list[JudgedRecord]:
    """Gate every case, judge the passing ones, and return one record per ruler case."""
    records: list[JudgedRecord] = []
    to_judge: list[tuple[int, JudgeItem]] = []
    for case in cases:
        cand, err = candidates.get(case.id, (None, "no candidate for this case"))
        violations = spec_violations(cand) if cand is not None else []
        rec = JudgedRecord(input=case.input, gold=case.gold, candidate=cand,
                           spec_passed=cand is not None and not violations,
                           violations=violations, error=err,
                           error_kind="generation" if err is not None else None,
                           experiment=experiment, case_id=case.id, judge=judge.name, ruler=ruler)
        if rec.spec_passed and err is None:
            to_judge.append((len(records), JudgeItem(case.input, case.gold, cand)))
        records.append(rec)
    verdicts = judge.judge_many([item for _, item in to_judge]) if to_judge else []
    if len(verdicts) != len(to_judge):
        raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for "
                           f"{len(to_judge)} items")
    for (i, _), v in zip(to_judge, verdicts):
        if isinstance(v, Verdict):
            records[i].verdict = v
        else:
            records[i].error, records[i].error_kind = f"judge error: {v}", "judge"
    return records


def export_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.judge export-records",
                                description="Export the anthropic judge's verdict cache as "
                                            "judged records (JSONL), e.g. for eval.calibrate.")
    p.add_argument("--cache", required=True, help="the judge's SQLite cache")
    p.add_argument("--out", required=True, help="records file to write")
    args = p.parse_args(argv)
    if not Path(args.cache).is_file():
        print(f"error: {args.cache}: no such cache file", file=sys.stderr)
        return 2
    from judge.judges.anthropic import export_records   # lazy: needs the anthropic SDK
    n = export_records(args.cache, args.out)
    print(f"wrote {n if n is not None else 'the'} judged record(s) to {args.out}")
    return 0


def build_parser(prog: str = "python -m eval.judge", description: str | None = None
                 ) -> argparse.ArgumentParser:
    """The judge command's options (all but the ruler folder, which the caller adds)."""
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", required=True, help="JSONL, one candidate per ruler case")
    p.add_argument("--judge", type=judge_name, default="offline",
                   help="offline (deterministic proxy, default), anthropic (Sonnet) or "
                        "learned:DIR (python -m judge.learn)")
    p.add_argument("--swap", action="store_true",
                   help="anthropic: also judge with the sets swapped; disagreement = tie")
    p.add_argument("--samples", type=COUNT, default=1, help="anthropic: judge K times, average")
    p.add_argument("--model", default=None, help="anthropic: judge model")
    p.add_argument("--cache", dest="cache_path", default=None, help="anthropic: verdict cache")
    p.add_argument("--concurrency", type=COUNT, default=None, help="anthropic: parallel requests")
    p.add_argument("--weights", default=None, help="offline: fitted weights from eval.calibrate")
    p.add_argument("--offline-backend", choices=("embedding", "lexical"), default=None,
                   help="offline: similarity backend (default embedding: the bundled "
                        "all-MiniLM-L6-v2; $FMDISTILL_OFFLINE_BACKEND overrides the default)")
    p.add_argument("--embedding-model", default=None,
                   help="offline: another local sentence-embedding folder (embedding backend)")
    p.add_argument("--out", default=None, help="write the judged records here (JSONL)")
    p.add_argument("--experiment", default=None, help="label stored in every record")
    p.add_argument("--scorecard-json", default=None, help="also write the scorecard as JSON")
    p.add_argument("--allow-missing", action="store_true",
                   help="score ruler cases missing from the file as errors instead of refusing")
    add_refusal_flags(p, "judge", "skip")
    p.add_argument("--field-map", default=None, metavar="CANONICAL=THEIRS,...",
                   help="candidate key names beyond the known aliases (taskTitle|title, ...)")
    return p


def judge_file(args, cases, ruler: dict) -> int:
    """Read, gate, judge and score args.candidates against `cases` (the verified ruler's, stamped
    `ruler` = {"version", "hash"}); print the scorecard. Exit code: 0, 1 (refused lines or judge
    errors) or 2 (bad input or options)."""
    try:
        candidates, cov = read_candidates(args.candidates, cases, ruler,
                                          parse_field_map(args.field_map))
        bad = cov.refusals(allow_duplicates=args.allow_duplicates,
                           allow_unknown=args.allow_unknown,
                           allow_other_ruler=args.allow_other_ruler)
        if bad:
            print(f"error: {refusal_message(args.candidates, bad)}", file=sys.stderr)
            return 1
        for note in cov.duplicates + cov.unknown:
            print(f"warning: ignored {note}", file=sys.stderr)
        missing = [c.id for c in cases if c.id not in candidates]
        if missing and not args.allow_missing:
            raise ContractError(f"{args.candidates}: no line for {len(missing)} ruler case(s): "
                                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                                "(pass --allow-missing to score them as errors)")
        judge = build_judge(args)
    except (ContractError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = judge_candidates(cases, candidates, judge, ruler=ruler, experiment=args.experiment)
    if args.out:
        write_records(args.out, records)
    card = scorecard(records, label=args.experiment or Path(args.candidates).name,
                     judge=judge.name, ruler=ruler)
    notice = None
    if args.judge == "offline" or is_learned(args.judge):
        from judge.judges.offline import PROXY_NOTICE
        notice = PROXY_NOTICE
    render_scorecard(card, notice=notice)
    if args.out:
        print(f"judged records: {args.out}")
    if args.scorecard_json:
        Path(args.scorecard_json).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return 1 if card.n_judge_errors else 0
