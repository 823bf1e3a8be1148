"""Judge-ranked preference pairs for ORPO: `python -m prefs.build [options]` (see --help).

Per gold task the candidates are: the gold; N samples from the current student (base + SFT
adapter, sampled at a temperature, deduplicated) and/or drafts from a file; and targeted
synthetic negatives made from the gold (data.negatives: drop-critical, compound, redundant).
Every candidate goes through the spec gate, and the ones that pass are judged against the gold
by the chosen judge (offline by default; anthropic for real runs, sharing its verdict cache), so
each has the reference metric's case quality (0 when the gate fails).

Pairs: chosen = the best gold or student candidate (never a synthetic negative; ties go to the
gold); rejected = a student or synthetic candidate (never the gold) whose quality is at least
`--margin` below the chosen. At most `--max-pairs-per-task` pairs per task, of which a share
`--synthetic-share` are synthetic rejections and the rest on-policy; when one kind runs short the
other fills its slots, except at a share of exactly 0 or 1. Among eligible rejections the ones
closest to the chosen come first (they differ in fewest things), synthetic kinds in turn.

Outputs in --out: pairs.jsonl (TRL conversational preference records: prompt = the planner's
system + user messages, chosen / rejected = one assistant message), train.jsonl + val.jsonl (the
same records split by task), apple_pairs.jsonl (each side as an Apple toolkit message array),
pairs.sidecar.jsonl (scores, margin, per-dimension deltas, rejection kind, judge, provenance),
samples.jsonl (the student's raw samples, append-only, reused on rerun) and manifest.json.
No input may equal or nearly equal a ruler task: the run is refused, naming the offending lines.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from data.appendlog import write_json_atomically
from data.cli_types import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SHARE, number
from data.contract import JUDGE_PROMPT_HASH, PROMPT_HASH, ContractError, DiscoveryResult
from data.corpus import REFERENCES_DIR
from data.leak import LeakError, normalize_input, ruler_guard
from data.sft import dedupe, load_gold, write_jsonl_atomic
from judge.judges import judge_name
from prefs.pairs import (REJECTION_KINDS, PrefsOptions, PrefsReport, apple_pair, judge_candidates,
                         select_pairs, sidecar_row, task_candidates, trl_pair)
from prefs.student import StudentSpec, read_drafts, resolve_student, sample_student
from train.guided import GuidedUnavailable

DEFAULT_OUT = Path("runs/data/prefs")


def _split_tasks(task_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    order = list(task_ids)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if val_fraction > 0 and len(order) > 1 else 0
    return set(order[:n_val])


def build_prefs(gold_paths: list[Path], out_dir: Path, judge, *, options: PrefsOptions,
                student: StudentSpec | None = None, drafts_files: list[Path] = (),
                ruler_cases_dir: Path | None = None, progress: bool = True) -> PrefsReport:
    options.check()
    items = load_gold(gold_paths)
    guard = ruler_guard(ruler_cases_dir)
    leaks = guard.find_leaks((w, c.input, c.gold) for w, c in items)
    drafts_by_input: dict[str, list] = {}
    for f in drafts_files:
        rows = read_drafts(f)
        leaks += guard.find_leaks((w, t, c if isinstance(c, DiscoveryResult) else None)
                                  for w, t, c in rows)
        for w, t, cand in rows:
            drafts_by_input.setdefault(normalize_input(t), []).append((cand, {"draft": w}))
    if leaks:
        raise LeakError(leaks)
    report = PrefsReport()
    items, report.duplicates = dedupe(items)
    if options.limit is not None:
        items = items[:options.limit]
    report.n_tasks = len(items)
    out_dir.mkdir(parents=True, exist_ok=True)
    if student is not None:
        sampled = sample_student([c.input for _, c in items], student, out_dir / "samples.jsonl",
                                 progress=progress)
        prov = student.provenance()
        for norm, samples in sampled.items():
            drafts_by_input.setdefault(norm, []).extend(
                (text, {**prov, "sample_index": i}) for i, text in samples)
    per_task = [(case, task_candidates(case, where,
                                       drafts_by_input.get(normalize_input(case.input), []),
                                       options, report))
                for where, case in items]
    known = {normalize_input(case.input) for _, case in items}
    report.unmatched_drafts = sum(len(v) for k, v in drafts_by_input.items() if k not in known)
    report.judge_errors = judge_candidates(per_task, judge)

    val_ids = _split_tasks([c.id for c, _ in per_task], options.val_fraction, options.seed)
    rows = {"pairs": [], "train": [], "val": [], "apple": [], "sidecar": []}
    for n, (case, cands) in enumerate(per_task):
        pairs = select_pairs(cands, margin=options.margin, cap=options.max_pairs_per_task,
                             synthetic_share=options.synthetic_share, first_kind=n)
        if not pairs:
            report.tasks_without_pairs += 1
        split = "val" if case.id in val_ids else "train"
        for k, (chosen, rejected) in enumerate(pairs, 1):
            pid = f"{case.id}#{k}"
            rec = trl_pair(pid, case.input, chosen.result, rejected.result)
            rows["pairs"].append(rec)
            rows[split].append(rec)
            rows["apple"].append(apple_pair(pid, case.input, chosen.result, rejected.result))
            rows["sidecar"].append(sidecar_row(pid, case, chosen, rejected, judge, split))
            report.by_kind[rejected.kind] = report.by_kind.get(rejected.kind, 0) + 1
    report.n_pairs, report.n_train, report.n_val = (len(rows["pairs"]), len(rows["train"]),
                                                    len(rows["val"]))
    names = {"pairs": "pairs.jsonl", "train": "train.jsonl", "val": "val.jsonl",
             "apple": "apple_pairs.jsonl", "sidecar": "pairs.sidecar.jsonl"}
    hashes = {}
    for key, name in names.items():
        hashes[key] = write_jsonl_atomic(out_dir / name, rows[key])
        report.files[key] = str(out_dir / name)
    write_json_atomically(out_dir / "manifest.json", {
        "prompt_hash": PROMPT_HASH, "judge": judge.name, "judge_prompt_hash": judge.prompt_hash,
        "contract_judge_prompt_hash": JUDGE_PROMPT_HASH, "options": vars(options),
        "student": None if student is None else {**student.provenance(), "n": student.n,
                                                 "key": student.key()},
        "drafts_files": [str(f) for f in drafts_files], "sources": [str(p) for p in gold_paths],
        "n_tasks": report.n_tasks, "n_pairs": report.n_pairs, "n_train": report.n_train,
        "n_val": report.n_val, "by_kind": report.by_kind,
        "tasks_without_pairs": report.tasks_without_pairs,
        "unusable_samples": report.unusable_samples,
        "unmatched_drafts": report.unmatched_drafts,
        "duplicate_samples": report.duplicate_samples, "judge_errors": report.judge_errors,
        "duplicates_removed": report.duplicates, "sha256": hashes})
    return report


def build_judge_from_args(args):
    """Reuse eval.judge's option handling (the anthropic judge shares its verdict cache)."""
    from judge.cli import build_judge
    ns = argparse.Namespace(judge=args.judge, swap=args.judge_swap, samples=args.judge_samples,
                            weights=args.judge_weights, embedding_model=args.embedding_model,
                            offline_backend=args.offline_backend,
                            model=args.judge_model, cache_path=args.judge_cache,
                            concurrency=args.judge_concurrency)
    return build_judge(ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prefs.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gold", action="append", type=Path,
                    help=f"gold JSONL file or folder (repeatable; default {REFERENCES_DIR})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    g = ap.add_argument_group("on-policy drafts")
    g.add_argument("--student-base", default=None,
                   help="student base: hub id, local folder, Apple assets folder or 'standin' "
                        "(default: the base named in the adapter's run.json)")
    g.add_argument("--student-adapter", default=None, help="student adapter (an SFT run folder)")
    g.add_argument("--samples", type=COUNT, default=4, help="samples per task (4)")
    g.add_argument("--temperature", type=POSITIVE, default=0.8, help="sampling temperature (0.8)")
    g.add_argument("--top-p", type=number(0.0, 1.0, lo_open=True), default=1.0)
    g.add_argument("--max-new-tokens", type=COUNT, default=640)
    g.add_argument("--batch-size", type=COUNT, default=8, help="tasks per generate call")
    g.add_argument("--engine", choices=("torch", "mlx"), default="torch",
                   help="sampling engine: torch (transformers) | mlx (native Apple silicon)")
    g.add_argument("--guided", action="store_true",
                   help="sample under the contract's JSON schema (exactly 7 questions), as the "
                        "device runtime decodes a @Generable type")
    g.add_argument("--drafts", action="append", type=Path, default=[],
                   help="JSONL of {input, candidate|text} drafts (repeatable)")
    g = ap.add_argument_group("judging and pairing")
    g.add_argument("--judge", type=judge_name, default="offline")
    g.add_argument("--judge-model", default=None, help="anthropic: judge model")
    g.add_argument("--judge-cache", default=None, help="anthropic: verdict cache (default: the "
                                                       "shared .cache/anthropic one)")
    g.add_argument("--judge-concurrency", type=COUNT, default=None)
    g.add_argument("--judge-swap", action="store_true", help="anthropic: judge both orders")
    g.add_argument("--judge-samples", type=COUNT, default=1, help="anthropic: judge K times")
    g.add_argument("--judge-weights", default=None, help="offline: fitted weights")
    g.add_argument("--embedding-model", default=None, help="offline: local embedding folder")
    g.add_argument("--offline-backend", choices=("embedding", "lexical"), default=None,
                   help="offline: similarity backend (default embedding)")
    g.add_argument("--margin", type=number(0.0), default=PrefsOptions.margin,
                   help="minimum case-quality gap chosen - rejected, 0..1 (0.1)")
    g.add_argument("--max-pairs-per-task", type=COUNT, default=PrefsOptions.max_pairs_per_task)
    g.add_argument("--synthetic-share", type=SHARE, default=PrefsOptions.synthetic_share,
                   help="share of synthetic rejections per task, 0..1 (0.5)")
    g.add_argument("--negatives-per-kind", type=NON_NEGATIVE, default=PrefsOptions.negatives_per_kind)
    g.add_argument("--val-fraction", type=FRACTION, default=PrefsOptions.val_fraction)
    g.add_argument("--limit", type=COUNT, default=None, help="only the first N gold tasks")
    g.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    opts = PrefsOptions(margin=args.margin, max_pairs_per_task=args.max_pairs_per_task,
                        synthetic_share=args.synthetic_share,
                        negatives_per_kind=args.negatives_per_kind,
                        val_fraction=args.val_fraction, seed=args.seed, limit=args.limit)
    try:
        opts.check()
        student = resolve_student(args.student_base, args.student_adapter, n=args.samples,
                                  temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, seed=args.seed,
                                  engine=args.engine, guided=args.guided)
        judge = build_judge_from_args(args)
        rep = build_prefs(args.gold or [REFERENCES_DIR], args.out, judge, options=opts,
                          student=student, drafts_files=args.drafts)
    except (LeakError, ContractError, FileNotFoundError, ValueError, GuidedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{k} {rep.by_kind.get(k, 0)}" for k in REJECTION_KINDS)
    print(f"preference pairs: {rep.n_pairs} ({rep.n_train} train / {rep.n_val} validation) from "
          f"{rep.n_tasks} tasks, judge {judge.name} -> {args.out}")
    print(f"  rejections: {kinds}; tasks without a pair: {rep.tasks_without_pairs}")
    if rep.unmatched_drafts:
        print(f"  {rep.unmatched_drafts} draft(s) ignored: their input is not a gold task")
    if student is not None or args.drafts:
        print(f"  drafts: {rep.unusable_samples} unusable, {rep.duplicate_samples} "
              "duplicates removed")
    for err in rep.judge_errors:
        print(f"  judge error: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
