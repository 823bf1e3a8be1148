"""How well offline judges agree with the real judge, leave-one-experiment-out.

    python -m judge.evaluate --records FILE [FILE ...] [--plot PNG] [--report-json FILE]
                             [--full N] [--variants all|none|NAME,...]

For each experiment in turn, the learned judge is fitted on every other experiment's records and
predicts this one's; the hand-written offline judges (lexical, embedding; built-in weights) need
no fitting. Reported per judge:
- experiment Spearman: mean case quality per experiment (judge.verdict.case_quality: 0 for an
  error or a failed spec gate), offline vs real, over the experiments with all --full (30) cases;
- case Spearman: case quality over the judged cases (spec passed, no error);
- pairwise accuracy, beside the "gold is always better" rate;
- mean absolute error per rubric dimension.
Nothing is tuned here on anything but the training side of each fold.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from data.cli_types import COUNT
from data.contract import RUBRIC_DIMENSIONS
from judge.records import JudgedRecord, RecordError, read_records
from judge.verdict import GOLD_BETTER, Verdict, case_quality
from judge.features import DEFAULT_GROUPS, GROUPS
from judge.learned import (DEFAULT_ALPHA, DEFAULT_C, LearnedJudgeError, features_matrix,
                           fit_model, targets, trainable, verdicts_from)

FULL = 30
# name -> (feature groups, ridge alpha, logistic C): the variants compared in docs/metric.md.
VARIANTS = {
    "learned": (DEFAULT_GROUPS, DEFAULT_ALPHA, DEFAULT_C),
    "learned-embed": (("embed",), DEFAULT_ALPHA, DEFAULT_C),
    "learned-embed+text": (("embed", "text"), DEFAULT_ALPHA, DEFAULT_C),
    "learned-offline": (("offline",), DEFAULT_ALPHA, DEFAULT_C),
    "learned-a3": (DEFAULT_GROUPS, 3.0, 0.5),
    "learned-a300": (DEFAULT_GROUPS, 300.0, 0.005),
    "learned-judges": (("judges",), DEFAULT_ALPHA, DEFAULT_C),
    "learned-judges+embed": (("judges", "embed"), DEFAULT_ALPHA, DEFAULT_C),
    "learned-all": (GROUPS, DEFAULT_ALPHA, DEFAULT_C),
}


@dataclass
class Agreement:
    judge: str
    experiment_spearman: float | None
    n_experiments: int
    case_spearman: float | None
    pairwise_accuracy: float
    always_gold: float
    n_cases: int
    mae: dict
    experiment_means: dict        # experiment -> (offline mean, real mean)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _spearman(a, b) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def agreement(judge: str, records: list[JudgedRecord], predicted: dict[int, Verdict],
              full: int = FULL) -> Agreement:
    """predicted: index into records -> the offline verdict (judged cases only)."""
    by_exp: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_exp.setdefault(r.experiment or "?", []).append(i)
    means = {}
    for exp, idx in sorted(by_exp.items()):
        if len(idx) != full:
            continue
        real = [case_quality(records[i].verdict, records[i].spec_passed, records[i].errored)
                for i in idx]
        off = [case_quality(predicted.get(i), records[i].spec_passed, records[i].errored)
               for i in idx]
        means[exp] = (float(np.mean(off)), float(np.mean(real)))
    judged = sorted(predicted)
    real_q = [case_quality(records[i].verdict, True) for i in judged]
    off_q = [case_quality(predicted[i], True) for i in judged]
    hit = [predicted[i].pairwise == records[i].verdict.pairwise for i in judged]
    gold = [records[i].verdict.pairwise == GOLD_BETTER for i in judged]
    mae = {d: float(np.mean([abs(predicted[i].rubric[d] - records[i].verdict.rubric[d])
                             for i in judged])) for d in RUBRIC_DIMENSIONS}
    return Agreement(judge, _spearman([m[0] for m in means.values()],
                                      [m[1] for m in means.values()]), len(means),
                     _spearman(off_q, real_q), float(np.mean(hit)), float(np.mean(gold)),
                     len(judged), mae, means)


def judged_indices(records: list[JudgedRecord]) -> list[int]:
    ok = set(map(id, trainable(records)))
    return [i for i, r in enumerate(records) if id(r) in ok and r.spec_passed]


def offline_verdicts(records, idx, backend: str) -> dict[int, Verdict]:
    from judge.judges.base import JudgeItem
    from judge.judges.offline import OfflineJudge
    judge = OfflineJudge(backend=backend)
    out = judge.judge_many([JudgeItem(records[i].input, records[i].gold, records[i].candidate)
                            for i in idx])
    return dict(zip(idx, out))


def leave_one_experiment_out(records, idx, x: np.ndarray, names, groups, alpha, c
                             ) -> dict[int, Verdict]:
    """Fit on all other experiments, predict the held-out one; x rows align with idx."""
    exps = np.array([records[i].experiment or "?" for i in idx])
    use = [records[i] for i in idx]
    y, labels = targets(use)
    cols = [k for k, n in enumerate(names) if n.split(".")[0] in groups]
    out: dict[int, Verdict] = {}
    for exp in sorted(set(exps)):
        tr, te = exps != exp, exps == exp
        if tr.sum() < 2:
            raise LearnedJudgeError("leave-one-experiment-out needs at least two experiments")
        model = fit_model(x[tr][:, cols], y[tr], [l for l, t in zip(labels, tr) if t],
                          [names[k] for k in cols], groups, alpha=alpha, c=c)
        for i, v in zip(np.array(idx)[te], verdicts_from(model, x[te][:, cols], "loeo")):
            out[int(i)] = v
    return out


def evaluate(records: list[JudgedRecord], variants=tuple(VARIANTS), full: int = FULL,
             baselines=("lexical", "embedding")) -> list[Agreement]:
    idx = judged_indices(records)
    if not idx:
        raise LearnedJudgeError("no judged records (a verdict, a gold, a candidate, spec passed,"
                                " no error) to evaluate on")
    results = [agreement(b, records, offline_verdicts(records, idx, b), full) for b in baselines]
    if variants:
        from judge.judges.offline_features import EmbeddingSimilarity
        x, names = features_matrix(((records[i].input, records[i].gold, records[i].candidate)
                                    for i in idx), EmbeddingSimilarity(), GROUPS)
        for v in variants:
            groups, alpha, c = VARIANTS[v]
            pred = leave_one_experiment_out(records, idx, x, names, groups, alpha, c)
            results.append(agreement(v, records, pred, full))
    return results


def render(results: list[Agreement]) -> str:
    fmt = lambda v: "  n/a" if v is None else f"{v:5.2f}"   # noqa: E731
    lines = [f"{'judge':<20} {'exp rho':>7} {'#exp':>4} {'case rho':>8} {'pairwise':>8} "
             f"{'gold-always':>11} " + " ".join(f"{d[:6]:>6}" for d in RUBRIC_DIMENSIONS)]
    for a in results:
        lines.append(f"{a.judge:<20} {fmt(a.experiment_spearman):>7} {a.n_experiments:>4} "
                     f"{fmt(a.case_spearman):>8} {a.pairwise_accuracy:8.3f} "
                     f"{a.always_gold:11.3f} " + " ".join(f"{a.mae[d]:6.2f}"
                                                          for d in RUBRIC_DIMENSIONS))
    lines.append(f"(cases judged: {results[0].n_cases}; exp rho over full-run experiments; "
                 "columns after gold-always: MAE per rubric dimension)")
    return "\n".join(lines)


def plot(results: list[Agreement], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), squeeze=False)
    for ax, a in zip(axes[0], results):
        pts = np.array(list(a.experiment_means.values())).reshape(-1, 2)
        ax.scatter(pts[:, 1], pts[:, 0], s=14)
        rho = "n/a" if a.experiment_spearman is None else f"{a.experiment_spearman:.2f}"
        ax.set_title(f"{a.judge} (rho {rho})")
        ax.set_xlabel("Sonnet mean case quality")
        ax.set_ylabel("offline mean case quality")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m judge.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", nargs="+", required=True, help="judged-records JSONL file(s)")
    p.add_argument("--variants", default="all",
                   help="learned variants: all, none, or a comma list of "
                        f"{', '.join(VARIANTS)}")
    p.add_argument("--full", type=COUNT, default=FULL, help="cases in a full run (30)")
    p.add_argument("--plot", default=None, help="write offline-vs-real experiment means (PNG)")
    p.add_argument("--report-json", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    names = (list(VARIANTS) if args.variants == "all" else [] if args.variants == "none"
             else [v.strip() for v in args.variants.split(",") if v.strip()])
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        print(f"error: --variants: unknown {bad}; choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    try:
        records = [r for f in args.records for r in read_records(f)]
        results = evaluate(records, names, args.full)
    except (RecordError, LearnedJudgeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(results))
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    if args.report_json:
        with open(args.report_json, "w", encoding="utf-8") as fh:
            json.dump([a.to_dict() for a in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
