"""Judge-ranked preference pairs for ORPO: `python -m data.prefs [options]` (see --help).

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
from dataclasses import dataclass, field
from pathlib import Path

from data.appendlog import write_json_atomically
from data.contract import (JUDGE_PROMPT_HASH, PROMPT_HASH, RUBRIC_DIMENSIONS, Case, ContractError,
                           DiscoveryResult, parse_assistant, planner_messages,
                           render_assistant, spec_violations)
from data.corpus import REFERENCES_DIR, ruler_inputs
from data.leak import LeakError, LeakGuard, normalize_input
from data.negatives import KINDS as SYNTHETIC_KINDS
from data.negatives import make_negatives
from data.prefs_student import StudentSpec, read_drafts, resolve_student, sample_student
from data.sft import write_jsonl_atomic, dedupe, load_gold
from eval.verdict import case_quality

DEFAULT_OUT = Path("runs/data/prefs")
GOLD, ON_POLICY = "gold", "on-policy"
REJECTION_KINDS = (*SYNTHETIC_KINDS, ON_POLICY)


@dataclass
class Candidate:
    kind: str                        # gold | on-policy | drop-critical | compound | redundant
    result: DiscoveryResult
    note: str = ""                   # what makes it differ from the gold (negatives), if known
    provenance: dict = field(default_factory=dict)
    spec: list[str] = field(default_factory=list)   # spec-gate violations (empty = passed)
    verdict: object = None           # eval.verdict.Verdict once judged
    error: str | None = None         # the judge failed on it: it takes no part in pairs

    @property
    def score(self) -> float | None:
        if self.error is not None or (self.verdict is None and not self.spec):
            return None
        return case_quality(self.verdict, not self.spec)


@dataclass
class PrefsOptions:
    margin: float = 0.1              # minimum quality gap (0..1 scale of the reference metric)
    max_pairs_per_task: int = 4
    synthetic_share: float = 0.5
    negatives_per_kind: int = 2
    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None         # only the first N tasks (quick looks and tests)

    def check(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"--margin must lie in 0..1 (a quality gap), got {self.margin}")
        if self.max_pairs_per_task < 1:
            raise ValueError(f"--max-pairs-per-task must be >= 1, got {self.max_pairs_per_task}")
        if not 0.0 <= self.synthetic_share <= 1.0:
            raise ValueError(f"--synthetic-share must lie in 0..1, got {self.synthetic_share}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must lie in 0..1, got {self.val_fraction}")


@dataclass
class PrefsReport:
    n_tasks: int = 0
    n_pairs: int = 0
    n_train: int = 0
    n_val: int = 0
    by_kind: dict = field(default_factory=dict)
    tasks_without_pairs: int = 0
    unusable_samples: int = 0        # student output with no parseable answer
    unmatched_drafts: int = 0        # drafts whose input is not one of the gold tasks
    duplicate_samples: int = 0
    judge_errors: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    files: dict = field(default_factory=dict)


def _answer_key(r: DiscoveryResult) -> tuple:
    return (normalize_input(r.task_title),) + tuple(normalize_input(q.title) for q in r.questions)


def on_policy_candidates(gold: DiscoveryResult, drafts: list[tuple[str | DiscoveryResult, dict]],
                         report: PrefsReport) -> list[Candidate]:
    """Parsed, deduplicated student drafts; unparseable ones are counted, not kept."""
    seen = {_answer_key(gold)}
    out = []
    for draft, prov in drafts:
        if isinstance(draft, DiscoveryResult):
            result, problems = draft, []
        else:
            parsed = parse_assistant(draft)
            if parsed.result is None:
                report.unusable_samples += 1
                continue
            result, problems = parsed.result, parsed.problems
        key = _answer_key(result)
        if key in seen:
            report.duplicate_samples += 1
            continue
        seen.add(key)
        spec = spec_violations(result)
        note = "; ".join(problems) if problems else ""
        out.append(Candidate(ON_POLICY, result, note, prov, spec))
    return out


def task_candidates(case: Case, where: str, drafts, opts: PrefsOptions,
                    report: PrefsReport) -> list[Candidate]:
    cands = [Candidate(GOLD, case.gold, "", {"gold": where, "source": case.source})]
    cands += on_policy_candidates(case.gold, drafts, report)
    for neg in make_negatives(case.gold, per_kind=opts.negatives_per_kind, seed=opts.seed,
                              task_input=case.input):
        cands.append(Candidate(neg.kind, neg.result, neg.note,
                               {"gold": where, "negative": neg.kind,
                                "positions": list(neg.positions), "targets": list(neg.targets)}))
    return cands


def judge_candidates(per_task: list[tuple[Case, list[Candidate]]], judge) -> list[str]:
    """Judge every gate-passing candidate against its gold in one batch; returns the errors."""
    from eval.judges import JudgeItem
    jobs = [(case, c) for case, cands in per_task for c in cands if not c.spec]
    verdicts = judge.judge_many([JudgeItem(case.input, case.gold, c.result) for case, c in jobs])
    errors = []
    for (case, c), v in zip(jobs, verdicts):
        if isinstance(v, str):
            c.error = v
            errors.append(f"{case.id} ({c.kind}): {v}")
        else:
            c.verdict = v
    return errors


def select_pairs(cands: list[Candidate], *, margin: float, cap: int, synthetic_share: float,
                 first_kind: int = 0) -> list[tuple[Candidate, Candidate]]:
    """(chosen, rejected) pairs for one task; see the module docstring for the rules.

    Synthetic kinds are taken in turn starting at SYNTHETIC_KINDS[first_kind], so that across
    tasks (build_prefs rotates the start) no kind wins every odd slot."""
    scored = [c for c in cands if c.score is not None]
    chosen_pool = [c for c in scored if c.kind in (GOLD, ON_POLICY) and not c.spec]
    if not chosen_pool:
        return []
    # max() keeps the first of equals; the gold comes first, so a tie goes to the gold.
    chosen = max(chosen_pool, key=lambda c: c.score)
    eligible = [c for c in scored if c is not chosen and c.kind != GOLD
                and chosen.score - c.score >= margin - 1e-9]
    eligible.sort(key=lambda c: -c.score)          # closest to the chosen first (stable)
    on_policy = [c for c in eligible if c.kind == ON_POLICY]
    by_kind = {k: [c for c in eligible if c.kind == k] for k in SYNTHETIC_KINDS}
    synthetic = []
    turn = SYNTHETIC_KINDS[first_kind % 3:] + SYNTHETIC_KINDS[:first_kind % 3]
    while any(by_kind.values()):
        for k in turn:
            if by_kind[k]:
                synthetic.append(by_kind[k].pop(0))
    if synthetic_share == 0.0:
        synthetic = []
    if synthetic_share == 1.0:
        on_policy = []
    n_syn = int(cap * synthetic_share + 0.5)        # rounded half up: 3 x 0.5 -> 2 synthetic
    take_syn = synthetic[:n_syn]
    take_on = on_policy[:cap - n_syn]
    spare = cap - len(take_syn) - len(take_on)     # one kind ran short: the other fills in
    if spare:
        take_syn += synthetic[len(take_syn):len(take_syn) + spare]
        spare = cap - len(take_syn) - len(take_on)
        take_on += on_policy[len(take_on):len(take_on) + spare]
    return [(chosen, r) for r in take_on + take_syn]


def trl_pair(pair_id: str, task_input: str, chosen: DiscoveryResult, rejected: DiscoveryResult
             ) -> dict:
    return {"id": pair_id, "prompt": planner_messages(task_input),
            "chosen": [{"role": "assistant", "content": render_assistant(chosen)}],
            "rejected": [{"role": "assistant", "content": render_assistant(rejected)}]}


def apple_pair(pair_id: str, task_input: str, chosen: DiscoveryResult, rejected: DiscoveryResult
               ) -> dict:
    """Each side is one line of Apple's toolkit format: system, user and assistant messages."""
    msgs = planner_messages(task_input)
    return {"id": pair_id,
            "chosen": msgs + [{"role": "assistant", "content": render_assistant(chosen)}],
            "rejected": msgs + [{"role": "assistant", "content": render_assistant(rejected)}]}


def _summary(c: Candidate) -> dict:
    v = c.verdict
    return {"kind": c.kind, "score": None if c.score is None else round(c.score, 4),
            "pairwise": v.pairwise if v else None,
            "rubric": dict(v.rubric) if v else None,
            "judge_notes": v.notes if v else "", "note": c.note,
            "spec_violations": list(c.spec),
            "task_title": c.result.task_title,
            "questions": [q.title for q in c.result.questions]}


def sidecar_row(pair_id: str, case: Case, chosen: Candidate, rejected: Candidate, judge,
                split: str) -> dict:
    deltas = None
    if chosen.verdict is not None and rejected.verdict is not None:
        deltas = {d: round(chosen.verdict.rubric[d] - rejected.verdict.rubric[d], 4)
                  for d in RUBRIC_DIMENSIONS}
    return {"id": pair_id, "task_id": case.id, "input": case.input, "split": split,
            "kind": rejected.kind, "margin": round(chosen.score - rejected.score, 4),
            "chosen": _summary(chosen), "rejected": _summary(rejected), "deltas": deltas,
            "judge": judge.name, "judge_prompt_hash": judge.prompt_hash,
            "prompt_hash": PROMPT_HASH,
            "provenance": {"chosen": chosen.provenance, "rejected": rejected.provenance}}


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
    leaks = LeakGuard(ruler_inputs(ruler_cases_dir)).find_leaks((w, c.input) for w, c in items)
    drafts_by_input: dict[str, list] = {}
    for f in drafts_files:
        rows = read_drafts(f)
        leaks += LeakGuard(ruler_inputs(ruler_cases_dir)).find_leaks((w, t) for w, t, _ in rows)
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
    from eval.judge import build_judge
    ns = argparse.Namespace(judge=args.judge, swap=args.judge_swap, samples=args.judge_samples,
                            weights=args.judge_weights, embedding_model=args.embedding_model,
                            model=args.judge_model, cache_path=args.judge_cache,
                            concurrency=args.judge_concurrency)
    return build_judge(ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.prefs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gold", action="append", type=Path,
                    help=f"gold JSONL file or folder (repeatable; default {REFERENCES_DIR})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    g = ap.add_argument_group("on-policy drafts")
    g.add_argument("--student-base", default=None,
                   help="student base: hub id, local folder, Apple assets folder or 'standin' "
                        "(default: the base named in the adapter's run.json)")
    g.add_argument("--student-adapter", default=None, help="student adapter (an SFT run folder)")
    g.add_argument("--samples", type=int, default=4, help="samples per task (4)")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0.8)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=640)
    g.add_argument("--batch-size", type=int, default=8, help="tasks per generate call")
    g.add_argument("--drafts", action="append", type=Path, default=[],
                   help="JSONL of {input, candidate|text} drafts (repeatable)")
    g = ap.add_argument_group("judging and pairing")
    g.add_argument("--judge", choices=("offline", "anthropic"), default="offline")
    g.add_argument("--judge-model", default=None, help="anthropic: judge model")
    g.add_argument("--judge-cache", default=None, help="anthropic: verdict cache (default: the "
                                                       "shared .cache/anthropic one)")
    g.add_argument("--judge-concurrency", type=int, default=None)
    g.add_argument("--judge-swap", action="store_true", help="anthropic: judge both orders")
    g.add_argument("--judge-samples", type=int, default=1, help="anthropic: judge K times")
    g.add_argument("--judge-weights", default=None, help="offline: fitted weights")
    g.add_argument("--embedding-model", default=None, help="offline: local embedding folder")
    g.add_argument("--margin", type=float, default=PrefsOptions.margin,
                   help="minimum case-quality gap chosen - rejected, 0..1 (0.1)")
    g.add_argument("--max-pairs-per-task", type=int, default=PrefsOptions.max_pairs_per_task)
    g.add_argument("--synthetic-share", type=float, default=PrefsOptions.synthetic_share,
                   help="share of synthetic rejections per task, 0..1 (0.5)")
    g.add_argument("--negatives-per-kind", type=int, default=PrefsOptions.negatives_per_kind)
    g.add_argument("--val-fraction", type=float, default=PrefsOptions.val_fraction)
    g.add_argument("--limit", type=int, default=None, help="only the first N gold tasks")
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
                                  batch_size=args.batch_size, seed=args.seed)
        judge = build_judge_from_args(args)
        rep = build_prefs(args.gold or [REFERENCES_DIR], args.out, judge, options=opts,
                          student=student, drafts_files=args.drafts)
    except (LeakError, ContractError, FileNotFoundError, ValueError) as e:
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
