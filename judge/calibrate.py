"""Fit the offline judge to recorded real-judge verdicts and report how well it agrees.

  python -m eval.calibrate [--verdicts FILE] [--offline-backend embedding|lexical|both]
                           [--out weights.json] [--holdout 0.3] [--seed 0] [--ridge 0.001]
                           [--per-domain 2] [--write-set FILE] [--embedding-model DIR]
  python -m eval.calibrate --split experiment --verdicts FILE [--plot PNG] [--report-json FILE]

Without --verdicts it uses the project's own calibration set (judge.calibration_set: 252
candidates from the bundled references, paraphrased gold down to off-topic, each with an
expected verdict and rank level) and reports lexical and embedding side by side; the report
then adds the rank-level ordering accuracy. --out needs a single backend.

FILE holds judged records (judge.records format; `python -m eval.judge export-records` writes the
anthropic judge's cache in it). Records with a verdict, a gold and a candidate and no error are
used; the others are counted and skipped. Records are split by task input (all records of one
input fall on the same side) into a training part and a held-out part (--holdout, by --seed).

On the training part:
- each rubric dimension gets a ridge-regularised linear map from its features to the judge's
  1..5 score (judge.judges.offline_features.FEATURES lists the features);
- the pairwise combination gets non-negative weights on the five (candidate - gold) score
  differences (least squares on -1/0/+1 = gold/tie/candidate, normalised to sum 1), then the
  center and tie band that maximise pairwise accuracy.

--split experiment (needs --verdicts with an "experiment" on each record) instead measures the
lexical, embedding and learned judges leave-one-experiment-out (judge.evaluate): experiment-level
Spearman of mean case quality over full 30-case runs, case-level Spearman, pairwise accuracy beside
the always-gold-better rate, MAE per dimension; --plot writes offline vs real experiment means.

The report, on the held-out part, for the fitted weights and for the built-in defaults: Spearman
correlation of case quality (offline vs real), pairwise-verdict accuracy and per-dimension mean
absolute error. The weights file (fitted on the training part, so the report describes it) holds
the report under "calibration"; OfflineJudge(weights_path=...) / --weights loads it.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data.cli_types import COUNT, FRACTION, number
from data.contract import RUBRIC_DIMENSIONS
from data.leak import normalize_input
from judge.judges.offline import (BACKENDS, DEFAULT_WEIGHTS, OfflineJudge, default_weights,
                                 pairwise_decision, pairwise_margin, predict_scores,
                                 validate_weights)
from judge.judges.offline_features import FEATURES
from judge.records import JudgedRecord, RecordError, read_records, write_records
from judge.verdict import CANDIDATE_BETTER, GOLD_BETTER, PAIRWISE_VALUE, Verdict, case_quality

PAIRWISE_SIGN = {GOLD_BETTER: -1.0, "tie": 0.0, CANDIDATE_BETTER: 1.0}
MAX_CUTS = 400   # the center/tie-band search tries at most this many cut points per side


class CalibrationError(ValueError):
    pass


@dataclass
class Example:
    record: JudgedRecord
    cand_features: dict
    gold_features: dict


def usable(records: list[JudgedRecord]) -> tuple[list[JudgedRecord], int]:
    use = [r for r in records if r.verdict is not None and r.gold is not None
           and r.candidate is not None and not r.errored]
    return use, len(records) - len(use)


def split_by_input(records, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and held-out records; every input's records stay on one side."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(normalize_input(r.input), []).append(i)
    keys = sorted(groups)
    if holdout <= 0:
        return list(range(len(records))), []
    if len(keys) < 2:
        raise CalibrationError("a held-out split needs records for at least 2 distinct inputs "
                               "(or pass --holdout 0)")
    order = np.random.default_rng(seed).permutation(len(keys))
    n_hold = min(len(keys) - 1, max(1, round(holdout * len(keys))))
    held = {keys[i] for i in order[:n_hold]}
    train = [i for k in keys if k not in held for i in groups[k]]
    test = [i for k in keys if k in held for i in groups[k]]
    return sorted(train), sorted(test)


def fit_linear(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
    """Intercept and weights minimising |y - a - xw|^2 + ridge * n * |w|^2 (intercept free)."""
    n, k = x.shape
    design = np.hstack([np.ones((n, 1)), x])
    if ridge > 0:
        penalty = np.hstack([np.zeros((k, 1)), np.sqrt(ridge * n) * np.eye(k)])
        design = np.vstack([design, penalty])
        y = np.concatenate([y, np.zeros(k)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(coef[0]), coef[1:]


def fit_band(d: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(center, tie_band, training accuracy) of the best gold < lo <= tie <= hi < candidate cut."""
    values = np.unique(d)
    mids = (values[:-1] + values[1:]) / 2 if len(values) > 1 else np.array([])
    if len(mids) > MAX_CUTS:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, MAX_CUTS)))
    span = float(values.max() - values.min()) + 1.0
    cuts = np.concatenate([[values.min() - span], mids, [values.max() + span]])
    below = d[None, :] < cuts[:, None]                       # (cuts, n)
    gold_ok = (below & (y[None, :] < 0)).sum(1)               # predicted gold and right
    cand_ok_above = (~below & (y[None, :] > 0)).sum(1)
    tie_below = (below & (y[None, :] == 0)).sum(1)
    # lo = cuts[i], hi = cuts[j], i <= j: gold if d < lo, tie if lo <= d < hi, candidate if d >= hi
    acc = gold_ok[:, None] + (tie_below[None, :] - tie_below[:, None]) + cand_ok_above[None, :]
    acc = np.where(np.arange(len(cuts))[:, None] <= np.arange(len(cuts))[None, :], acc, -1)
    best = acc.max()
    cands = np.argwhere(acc == best)
    centers = (cuts[cands[:, 0]] + cuts[cands[:, 1]]) / 2
    i, j = cands[np.argmin(np.abs(centers))]   # among the best, the cut closest to no bias
    lo, hi = float(cuts[i]), float(cuts[j])
    return (lo + hi) / 2, (hi - lo) / 2, float(best / len(d))


def fit_weights(examples: list[Example], *, ridge: float, similarity: str) -> dict:
    from scipy.optimize import nnls
    w = default_weights(similarity)
    for dim in RUBRIC_DIMENSIONS:
        names = FEATURES[dim]
        x = np.array([[e.cand_features[k] for k in names] for e in examples])
        y = np.array([e.record.verdict.rubric[dim] for e in examples])
        a, coef = fit_linear(x, y, ridge)
        w["dimensions"][dim] = {"intercept": round(a, 6),
                                "weights": {k: round(float(c), 6) for k, c in zip(names, coef)}}
    diffs = np.array([[sc[d] - sg[d] for d in RUBRIC_DIMENSIONS] for sc, sg in
                      (_scores(e, w) for e in examples)])
    y = np.array([PAIRWISE_SIGN[e.record.verdict.pairwise] for e in examples])
    pw_w = nnls(diffs, y)[0] if np.any(y != 0) and np.any(diffs != 0) else np.zeros(5)
    if pw_w.sum() <= 0:
        pw_w = np.array([DEFAULT_WEIGHTS["pairwise"]["weights"][d] for d in RUBRIC_DIMENSIONS])
    pw_w = pw_w / pw_w.sum()
    center, band, _ = fit_band(diffs @ pw_w, y)
    w["pairwise"] = {"weights": {d: round(float(v), 6) for d, v in zip(RUBRIC_DIMENSIONS, pw_w)},
                     "center": round(center, 6), "tie_band": round(band, 6)}
    return validate_weights(w)


def _scores(e: Example, weights: dict):
    return predict_scores(e.cand_features, weights), predict_scores(e.gold_features, weights)


def predict_verdict(e: Example, weights: dict) -> Verdict:
    sc, sg = _scores(e, weights)
    pw = weights["pairwise"]
    return Verdict(pairwise_decision(pairwise_margin(sc, sg, pw), pw["tie_band"]), sc)


def agreement(examples: list[Example], weights: dict) -> dict:
    """Spearman of case quality, pairwise accuracy and per-dimension MAE (offline vs real)."""
    from scipy.stats import spearmanr
    if not examples:
        return {"n": 0, "spearman_quality": None, "pairwise_accuracy": None,
                "mae": {d: None for d in RUBRIC_DIMENSIONS}, "ordering_accuracy": None}
    preds = [predict_verdict(e, weights) for e in examples]
    real_q = [case_quality(e.record.verdict, e.record.spec_passed) for e in examples]
    pred_q = [case_quality(p, e.record.spec_passed) for p, e in zip(preds, examples)]
    rho = None
    if len(set(real_q)) > 1 and len(set(pred_q)) > 1:
        rho = float(spearmanr(real_q, pred_q).statistic)
    acc = float(np.mean([p.pairwise == e.record.verdict.pairwise
                         for p, e in zip(preds, examples)]))
    mae = {d: float(np.mean([abs(p.rubric[d] - e.record.verdict.rubric[d])
                             for p, e in zip(preds, examples)])) for d in RUBRIC_DIMENSIONS}
    # Only the project's own calibration set knows each candidate's rank level.
    from judge.calibration_set import ordering_accuracy
    order = ordering_accuracy([e.record for e in examples], pred_q)
    return {"n": len(examples), "spearman_quality": rho, "pairwise_accuracy": acc, "mae": mae,
            "ordering_accuracy": order,
            "real_pairwise": {k: sum(e.record.verdict.pairwise == k for e in examples)
                              for k in PAIRWISE_VALUE}}


def calibrate(records: list[JudgedRecord], *, holdout: float = 0.3, seed: int = 0,
              ridge: float = 1e-3, embedding_model=None, backend=None, judge=None
              ) -> tuple[dict, dict]:
    """(fitted weights, report). The weights are fitted on the training split only."""
    if not 0 <= holdout < 1:
        raise CalibrationError(f"--holdout must be in [0, 1), got {holdout}")
    use, skipped = usable(records)
    judge = judge or OfflineJudge(embedding_model=embedding_model, backend=backend)
    train_idx, test_idx = split_by_input(use, holdout, seed)
    min_train = max(len(v) for v in FEATURES.values()) + 2
    if len(train_idx) < min_train:
        raise CalibrationError(f"only {len(train_idx)} usable training record(s) (of {len(records)}"
                               f"; {skipped} skipped for lacking a verdict, gold or candidate, or "
                               f"for an error); need at least {min_train}")
    gold_features: dict = {}    # the gold's own features are the same for all its candidates
    for r in use:
        if (r.input, r.gold) not in gold_features:
            gold_features[(r.input, r.gold)] = judge.features(r.input, r.gold, r.gold)
    examples = [Example(r, judge.features(r.input, r.candidate, r.gold),
                        gold_features[(r.input, r.gold)]) for r in use]
    train = [examples[i] for i in train_idx]
    test = [examples[i] for i in test_idx] or train
    weights = fit_weights(train, ridge=ridge, similarity=judge.sim.name)
    default = default_weights(judge.sim.name)
    report = {
        "n_records": len(records), "n_used": len(use), "n_skipped": skipped,
        "n_train": len(train_idx), "n_holdout": len(test_idx),
        "evaluated_on": "held-out split" if test_idx else "training split (in-sample: --holdout 0)",
        "holdout": holdout, "seed": seed, "ridge": ridge, "similarity": judge.sim.name,
        "judge": judge.name,
        "fitted": agreement(test, weights), "defaults": agreement(test, default),
    }
    return weights, report


def render_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"   # noqa: E731
    t = Table(title=f"Offline judge vs real judge on the {report['evaluated_on']} "
                    f"({report['fitted']['n']} records)", title_justify="left")
    t.add_column("agreement")
    t.add_column("fitted weights", justify="right")
    t.add_column("defaults", justify="right")
    f, d = report["fitted"], report["defaults"]
    t.add_row("Spearman of case quality", fmt(f["spearman_quality"]), fmt(d["spearman_quality"]))
    t.add_row("pairwise accuracy", fmt(f["pairwise_accuracy"]), fmt(d["pairwise_accuracy"]))
    for dim in RUBRIC_DIMENSIONS:
        t.add_row(f"MAE {dim}", fmt(f["mae"][dim]), fmt(d["mae"][dim]))
    if f.get("ordering_accuracy") is not None:
        t.add_row("rank-level ordering accuracy", fmt(f["ordering_accuracy"]),
                  fmt(d["ordering_accuracy"]))
    console.print(t)
    real = f.get("real_pairwise") or {}
    if real:
        console.print(f"real verdicts in that split: gold better {real.get('gold', 0)} / tie "
                      f"{real.get('tie', 0)} / candidate better {real.get('candidate', 0)}")
    console.print(f"records: {report['n_records']} read, {report['n_used']} used "
                  f"({report['n_train']} train / {report['n_holdout']} held out, split by input, "
                  f"seed {report['seed']}), {report['n_skipped']} skipped; similarity "
                  f"{report['similarity']}, ridge {report['ridge']}")
    if report.get("judge"):
        console.print(f"offline judge: {report['judge']}")


def render_side_by_side(reports: dict, title: str, console=None) -> None:
    """One table: each backend's fitted and default agreement on the same held-out split."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"   # noqa: E731
    t = Table(title=title, title_justify="left")
    t.add_column("agreement")
    for b in reports:
        t.add_column(f"{b} fitted", justify="right")
        t.add_column(f"{b} defaults", justify="right")
    rows = [("Spearman of case quality", lambda a: a["spearman_quality"]),
            ("pairwise accuracy", lambda a: a["pairwise_accuracy"]),
            ("rank-level ordering accuracy", lambda a: a.get("ordering_accuracy"))]
    rows += [(f"MAE {d}", (lambda d: lambda a: a["mae"][d])(d)) for d in RUBRIC_DIMENSIONS]
    for label, get in rows:
        cells = [fmt(get(r[k])) for r in reports.values() for k in ("fitted", "defaults")]
        if any(c != "n/a" for c in cells):
            t.add_row(label, *cells)
    console.print(t)
    for b, r in reports.items():
        console.print(f"{b}: judge {r.get('judge')}; {r['n_train']} train / {r['n_holdout']} "
                      f"held out records, split by input, seed {r['seed']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verdicts", default=None,
                   help="judged records with real-judge verdicts (default: the project's own "
                        "calibration set, judge.calibration_set)")
    p.add_argument("--out", default=None, help="write the fitted weights here (JSON)")
    p.add_argument("--holdout", type=FRACTION, default=0.3, help="share of inputs held out (0.3)")
    p.add_argument("--seed", type=int, default=0, help="split seed (0)")
    p.add_argument("--ridge", type=number(0.0), default=1e-3, help="ridge strength (0.001)")
    p.add_argument("--offline-backend", choices=BACKENDS + ("both",), default=None,
                   help="similarity backend to fit: embedding, lexical or both side by side "
                        "(default: both for the calibration set, else the judge's default)")
    p.add_argument("--per-domain", type=COUNT, default=2,
                   help="calibration set: reference tasks per domain, x7 candidates (2 -> 252)")
    p.add_argument("--write-set", default=None,
                   help="also write the calibration set as judged records (JSONL)")
    p.add_argument("--embedding-model", default=None,
                   help="local sentence-embedding folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--report-json", default=None, help="also write the report as JSON")
    p.add_argument("--split", choices=("input", "experiment"), default="input",
                   help="input: fit/hold out by task input (default); experiment: leave one "
                        "experiment out, offline judges vs the learned judge (judge.evaluate)")
    p.add_argument("--plot", default=None, help="--split experiment: write a PNG of offline vs "
                                                "real experiment means")
    args = p.parse_args(argv)
    if args.split == "experiment":
        if not args.verdicts:
            p.error("--split experiment needs --verdicts FILE (judged records with experiments)")
        from judge.evaluate import main as evaluate_main   # the learned judge lives in judge/
        extra = ["--plot", args.plot] if args.plot else []
        extra += ["--report-json", args.report_json] if args.report_json else []
        return evaluate_main(["--records", args.verdicts, *extra])
    backend = args.offline_backend or ("both" if args.verdicts is None else None)
    if backend == "both" and args.out:
        p.error("--out needs one backend: pass --offline-backend embedding or lexical")
    try:
        if args.verdicts:
            records = read_records(args.verdicts)
        else:
            from judge.calibration_set import build_calibration_set
            records = build_calibration_set(per_domain=args.per_domain, seed=args.seed)
            if args.write_set:
                write_records(args.write_set, records)
        backends = BACKENDS if backend == "both" else (backend,)
        results = {}
        for b in backends:
            results[b or "default"] = calibrate(
                records, holdout=args.holdout, seed=args.seed, ridge=args.ridge,
                embedding_model=args.embedding_model if b != "lexical" else None, backend=b)
    except (RecordError, CalibrationError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = args.verdicts or f"calibration set (judge.calibration_set, {len(records)} triples)"
    for weights, report in results.values():
        render_report(report)
        report["source"] = str(source)
        if args.verdicts:
            report["source_sha256"] = hashlib.sha256(Path(args.verdicts).read_bytes()).hexdigest()
        report["fitted_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if len(results) > 1:
        render_side_by_side({b: r for b, (_, r) in results.items()},
                            f"Lexical vs embedding on {source}")
    if args.out:
        weights, report = next(iter(results.values()))
        weights["calibration"] = report
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(weights, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.out)
        name = OfflineJudge(weights_path=args.out, embedding_model=args.embedding_model).name
        print(f"wrote {args.out} (use: python -m eval.judge --judge offline --weights {args.out};"
              f" judge name {name})")
    if args.report_json:
        out = {b: r for b, (_, r) in results.items()}
        out = next(iter(out.values())) if len(out) == 1 else out
        tmp = Path(args.report_json).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(args.report_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
