"""The reference metric and its scorecard, plus the paired test for comparing two runs.

case quality (judge.verdict.case_quality) = 0 if the spec gate failed or the case errored, else
0.5 * (rubric mean - 1) / 4 + 0.5 * pairwise (0 gold better / 0.5 tie / 1 candidate better).

Scorecard of a set of cases (one per ruler case):
- headline QUALITY = mean case quality over ALL cases (errors count 0); this is the published
  headline. The answered-only headline (mean over cases whose generation did not error; spec
  failures and judge errors still count 0) is reported next to it, labelled, because later
  published numbers used it.
- 95% CI of the headline: percentile bootstrap over cases (fixed seed, so it is reproducible).
- spec-pass rate and error rate over all cases; judge errors are counted separately too.
- wins/ties/losses and per-dimension means over the *scored* cases: spec passed, no error, a
  verdict present (a spec failure or an error has no verdict that counts).

Paired comparison of two runs on the same ruler: per-case differences (B - A), a paired bootstrap
CI of the mean difference and a two-sided sign test. The difference is called distinguishable
from noise only when the bootstrap CI excludes 0. This covers case-sampling noise only;
re-running an unchanged configuration has moved the published headline by 0.07, so a
single-run difference of a few hundredths is not evidence even when "distinguishable".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data.contract import RUBRIC_DIMENSIONS
from data.leak import normalize_input
from judge.records import JudgedRecord
from judge.verdict import CANDIDATE_BETTER, GOLD_BETTER, TIE, case_quality

N_BOOT = 10_000
SEED = 0


@dataclass
class Scorecard:
    label: str
    n_cases: int
    headline: float
    headline_ci: tuple[float, float] | None
    headline_answered: float | None
    n_answered: int
    spec_pass_rate: float
    error_rate: float
    n_errors: int
    n_judge_errors: int
    n_spec_failed: int
    wins: int
    ties: int
    losses: int
    n_scored: int
    dimension_means: dict[str, float | None]
    qualities: list[float] = field(repr=False, default_factory=list)
    judge: str | None = None
    ruler: dict | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "label", "n_cases", "headline", "headline_ci", "headline_answered", "n_answered",
            "spec_pass_rate", "error_rate", "n_errors", "n_judge_errors", "n_spec_failed",
            "wins", "ties", "losses", "n_scored", "dimension_means", "judge", "ruler")}
        d["headline_ci"] = list(self.headline_ci) if self.headline_ci else None
        return d


def _generation_error(r: JudgedRecord) -> bool:
    return r.errored and r.error_kind != "judge"


def record_quality(r: JudgedRecord) -> float:
    return case_quality(r.verdict, r.spec_passed, r.errored)


def bootstrap_ci(values, *, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean; None for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def scorecard(records: list[JudgedRecord], *, label: str = "", judge: str | None = None,
              ruler: dict | None = None, n_boot: int = N_BOOT, seed: int = SEED) -> Scorecard:
    if not records:
        raise ValueError(f"scorecard {label!r}: no records to score")
    q = [record_quality(r) for r in records]
    n = len(records)
    answered = [x for x, r in zip(q, records) if not _generation_error(r)]
    scored = [r for r in records if r.spec_passed and not r.errored and r.verdict is not None]
    pw = [r.verdict.pairwise for r in scored]
    dims = {d: (float(np.mean([r.verdict.rubric[d] for r in scored])) if scored else None)
            for d in RUBRIC_DIMENSIONS}
    judges = sorted({r.judge or (r.verdict.judge if r.verdict else "") for r in records} - {""})
    return Scorecard(
        label=label, n_cases=n, headline=float(np.mean(q)),
        headline_ci=bootstrap_ci(q, n_boot=n_boot, seed=seed),
        headline_answered=float(np.mean(answered)) if answered else None,
        n_answered=len(answered),
        spec_pass_rate=sum(r.spec_passed and not _generation_error(r) for r in records) / n,
        error_rate=sum(r.errored for r in records) / n,
        n_errors=sum(r.errored for r in records),
        n_judge_errors=sum(r.errored and r.error_kind == "judge" for r in records),
        n_spec_failed=sum(not r.spec_passed and not _generation_error(r) for r in records),
        wins=pw.count(CANDIDATE_BETTER), ties=pw.count(TIE), losses=pw.count(GOLD_BETTER),
        n_scored=len(scored), dimension_means=dims, qualities=q,
        judge=judge or (", ".join(judges) if judges else None), ruler=ruler)


# ---- paired comparison -----------------------------------------------------------------------
@dataclass
class PairedComparison:
    label_a: str
    label_b: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float                      # B - A
    diff_ci: tuple[float, float] | None
    b_better: int                         # cases where B's quality is higher
    a_better: int
    equal: int
    sign_test_p: float
    distinguishable: bool

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["diff_ci"] = list(self.diff_ci) if self.diff_ci else None
        return d


def case_key(r: JudgedRecord) -> str:
    return r.case_id if r.case_id else "input:" + normalize_input(r.input)


def paired_comparison(a: list[JudgedRecord], b: list[JudgedRecord], *, label_a: str = "A",
                      label_b: str = "B", n_boot: int = N_BOOT, seed: int = SEED
                      ) -> PairedComparison:
    """Compare two runs case by case; both must cover the same cases (by case_id or input)."""
    from scipy.stats import binomtest

    def by_key(records, label):
        out = {}
        for r in records:
            k = case_key(r)
            if k in out:
                raise ValueError(f"{label}: case {k!r} appears twice ({out[k].where} and "
                                 f"{r.where}); a paired comparison needs one record per case")
            out[k] = r
        return out
    ka, kb = by_key(a, label_a), by_key(b, label_b)
    if set(ka) != set(kb):
        only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
        raise ValueError(f"runs cover different cases: only in {label_a}: {only_a[:5]}"
                         f"{'...' if len(only_a) > 5 else ''}; only in {label_b}: {only_b[:5]}"
                         f"{'...' if len(only_b) > 5 else ''}")
    keys = sorted(ka)
    qa = np.array([record_quality(ka[k]) for k in keys])
    qb = np.array([record_quality(kb[k]) for k in keys])
    diff = qb - qa
    ci = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    b_better, a_better = int((diff > 1e-12).sum()), int((diff < -1e-12).sum())
    nonzero = b_better + a_better
    p = float(binomtest(b_better, nonzero, 0.5).pvalue) if nonzero else 1.0
    return PairedComparison(label_a, label_b, len(keys), float(qa.mean()), float(qb.mean()),
                            float(diff.mean()), ci, b_better, a_better, len(keys) - nonzero, p,
                            bool(ci and (ci[0] > 0 or ci[1] < 0)))


# ---- printing --------------------------------------------------------------------------------
def render_scorecard(card: Scorecard, console=None, notice: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    title = f"Scorecard{': ' + card.label if card.label else ''}"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    ci = (f"  (95% CI {card.headline_ci[0]:.3f}-{card.headline_ci[1]:.3f})"
          if card.headline_ci else "")
    t.add_row("QUALITY (all cases, errors = 0)", f"{card.headline:.3f}{ci}")
    t.add_row("quality, answered cases only",
              "n/a" if card.headline_answered is None
              else f"{card.headline_answered:.3f}  ({card.n_answered} answered; for comparison "
                   "with later published headlines)")
    t.add_row("cases", str(card.n_cases))
    t.add_row("spec-pass rate", f"{card.spec_pass_rate:.1%}  ({card.n_spec_failed} failed the gate)")
    err = f"{card.error_rate:.1%}  ({card.n_errors} error{'' if card.n_errors == 1 else 's'}"
    err += f", of which {card.n_judge_errors} judge errors)" if card.n_judge_errors else ")"
    t.add_row("error rate", err)
    t.add_row("wins / ties / losses vs gold",
              f"{card.wins} / {card.ties} / {card.losses}  (of {card.n_scored} scored)")
    for d in RUBRIC_DIMENSIONS:
        v = card.dimension_means[d]
        t.add_row(f"  {d} (mean, 1-5)", "n/a" if v is None else f"{v:.2f}")
    if card.judge:
        t.add_row("judge", card.judge)
    if card.ruler:
        t.add_row("ruler", f"v{card.ruler.get('version')} {str(card.ruler.get('hash'))[:16]}")
    console.print(t)
    if card.n_judge_errors:
        console.print(f"[yellow]{card.n_judge_errors} case(s) could not be judged and count as 0; "
                      "re-run to fill them (cached verdicts are reused).[/yellow]")
    if notice:
        console.print(f"[yellow]{notice}[/yellow]")


def render_comparison(c: PairedComparison, console=None) -> None:
    from rich.console import Console
    console = console or Console()
    ci = f"{c.diff_ci[0]:+.3f} to {c.diff_ci[1]:+.3f}" if c.diff_ci else "n/a"
    verdict = ("[green]distinguishable from case-sampling noise[/green]" if c.distinguishable
               else "[yellow]NOT distinguishable from noise[/yellow]")
    console.print(
        f"Paired comparison on {c.n} cases: {c.label_b} {c.mean_b:.3f} - {c.label_a} "
        f"{c.mean_a:.3f} = {c.mean_diff:+.3f} (95% paired-bootstrap CI {ci}); "
        f"{c.label_b} better on {c.b_better}, {c.label_a} better on {c.a_better}, equal on "
        f"{c.equal}; sign test p = {c.sign_test_p:.3f}. {verdict}.")
