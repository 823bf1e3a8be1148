"""Calibration recovers known weights from a synthetic verdict file and reports agreement."""
from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data.contract import Question, spec_violations
from data.corpus import ruler_cases
from judge.calibrate import CalibrationError, calibrate, fit_band, main as calibrate_main
from judge.judges.offline import (DEFAULT_WEIGHTS, OfflineJudge, pairwise_decision, pairwise_margin,
                                 predict_scores)
from judge.judges.offline_features import FEATURES
from judge.records import read_records

REPO = Path(__file__).resolve().parent.parent
LEGACY = {"gold": "goldBetter", "tie": "tie", "candidate": "fmBetter"}

# The "real judge" of the synthetic file: every map keeps scores inside 1..5, so nothing clamps.
KNOWN = copy.deepcopy(DEFAULT_WEIGHTS)
KNOWN["dimensions"] = {
    "atomicity": {"intercept": 4.5, "weights": {
        "compound_clause": -2.0, "compound_list": -1.0, "compound_plain": -0.5}},
    "specificity": {"intercept": 2.0, "weights": {
        "generic_rate": -1.0, "task_overlap": 1.5, "concrete_density": 1.2}},
    "coverage": {"intercept": 1.5, "weights": {"coverage_soft": 2.0, "coverage_hit": 1.0}},
    "naturalness": {"intercept": 1.5, "weights": {
        "question_form": 1.0, "length_fit": 0.8, "second_person": 1.2, "robotic_rate": -0.5}},
    "nonRedundancy": {"intercept": 4.8, "weights": {
        "max_pair_sim": -1.0, "mean_pair_sim": -1.5, "dup_rate": -1.0}},
}
KNOWN["pairwise"] = {"weights": {"atomicity": 0.3, "specificity": 0.3, "coverage": 0.2,
                                 "naturalness": 0.1, "nonRedundancy": 0.1},
                     "center": -0.1, "tie_band": 0.2}
FILLERS = ["Do you have any other preferences?", "Is there anything else I should know?",
           "What are your goals?", "Any specific requirements to consider?"]


def _lower(s: str) -> str:
    return s[0].lower() + s[1:]


def perturb(qs: list[str], other: list[str], rng: random.Random) -> list[str]:
    """One random defect, chosen so every feature varies across the file."""
    qs = list(qs)
    i, j = rng.sample(range(len(qs)), 2)
    t = qs[i]
    kind = rng.choice(["filler", "merge", "list", "plain", "dup", "neardup", "robot", "noq",
                       "nosecond", "long", "short", "other"])
    if kind == "filler":
        qs[i] = rng.choice(FILLERS)
    elif kind == "merge":
        qs[i] = t.rstrip("?") + rng.choice([" and ", " or "]) + _lower(qs[j])
    elif kind == "list":
        w = [x for x in qs[j].rstrip("?").split() if len(x) > 4][:3] or ["dates", "budget"]
        qs[i] = "What " + ", ".join(w[:-1] or ["timing"]) + ", and " + w[-1] + " matter to you?"
    elif kind == "plain":
        qs[i] = t.rstrip("?") + " or not?"
    elif kind == "dup":
        qs[j] = t
    elif kind == "neardup":
        qs[j] = "Roughly, " + _lower(t)
    elif kind == "robot":
        qs[i] = "Please specify: " + t.rstrip("?") + "."
    elif kind == "noq":
        qs[i] = "Tell me " + _lower(t).rstrip("?") + "."
    elif kind == "nosecond":
        qs[i] = t.replace("your ", "the ").replace("you ", "one ").replace("Your ", "The ")
    elif kind == "long":
        qs[i] = t.rstrip("?") + " given everything else that is going on for the family this year?"
    elif kind == "short":
        qs[i] = t.split()[-1]
    else:
        qs[i] = rng.choice(other)
    return qs


def synthetic_verdicts(path: Path, *, per_case: int = 6, seed: int = 0, rounding: bool = False):
    """Records whose verdicts come from KNOWN applied to the offline features."""
    rng, judge, cases = random.Random(seed), OfflineJudge(), ruler_cases()
    lines = []
    for ci, c in enumerate(cases):
        other = [q.title for q in cases[(ci + 1) % len(cases)].gold.questions]
        gold_scores = predict_scores(judge.features(c.input, c.gold, c.gold), KNOWN)
        for _ in range(per_case):
            qs = [q.title for q in c.gold.questions]
            for _ in range(rng.randint(0, 3)):
                qs = perturb(qs, other, rng)
            cand = replace(c.gold, questions=tuple(Question(t, "") for t in qs))
            sc = predict_scores(judge.features(c.input, cand, c.gold), KNOWN)
            pw = pairwise_decision(pairwise_margin(sc, gold_scores, KNOWN["pairwise"]),
                                   KNOWN["pairwise"]["tie_band"])
            v = spec_violations(cand)
            lines.append({"case_id": c.id, "input": c.input, "gold": c.gold.to_dict(),
                          "candidate": cand.to_dict(), "spec": {"passed": not v, "violations": v},
                          "verdict": {"pairwise": LEGACY[pw], "notes": "synthetic",
                                      "rubric": {d: round(x) if rounding else x
                                                 for d, x in sc.items()}}})
    # records a calibration must skip: a generation error and a spec failure without verdict
    c = cases[0]
    lines.append({"input": c.input, "gold": c.gold.to_dict(), "error": "refused"})
    six = replace(c.gold, questions=c.gold.questions[:6])
    lines.append({"input": c.input, "gold": c.gold.to_dict(), "candidate": six.to_dict(),
                  "spec": {"passed": False, "violations": spec_violations(six)}})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def exact_file(tmp_path_factory):
    return synthetic_verdicts(tmp_path_factory.mktemp("cal") / "verdicts.jsonl")


def test_recovers_known_dimension_weights_and_reports_agreement(exact_file):
    weights, report = calibrate(read_records(exact_file), holdout=0.3, seed=0, ridge=0.0)
    for dim, spec in KNOWN["dimensions"].items():
        got = weights["dimensions"][dim]
        assert got["intercept"] == pytest.approx(spec["intercept"], abs=1e-3), dim
        for k in FEATURES[dim]:
            # features added after KNOWN was written (the semantic ones) truly weigh 0 there
            assert got["weights"][k] == pytest.approx(spec["weights"].get(k, 0.0), abs=1e-3), \
                (dim, k)
    pw = weights["pairwise"]["weights"]
    assert all(v >= 0 for v in pw.values()) and sum(pw.values()) == pytest.approx(1.0)
    f = report["fitted"]
    assert report["n_skipped"] == 2 and report["n_used"] == 180
    assert report["n_train"] + report["n_holdout"] == 180 and report["n_holdout"] > 30
    assert f["spearman_quality"] > 0.95 and f["pairwise_accuracy"] >= 0.9
    assert max(f["mae"].values()) < 1e-3
    # the defaults are a different judge: the fitted weights agree better
    assert max(report["defaults"]["mae"].values()) > 0.1


def test_integer_verdicts_still_calibrate_better_than_defaults(tmp_path):
    path = synthetic_verdicts(tmp_path / "rounded.jsonl", rounding=True, seed=1)
    _, report = calibrate(read_records(path), holdout=0.3, seed=0)
    f, d = report["fitted"], report["defaults"]
    assert f["spearman_quality"] > 0.8 and f["pairwise_accuracy"] > 0.8
    assert np.mean(list(f["mae"].values())) < np.mean(list(d["mae"].values()))


def test_cli_writes_weights_the_offline_judge_loads(exact_file, tmp_path, capsys):
    out = tmp_path / "weights.json"
    assert calibrate_main(["--verdicts", str(exact_file), "--out", str(out), "--ridge", "0",
                           "--holdout", "0.25", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "Spearman of case quality" in text and "pairwise accuracy" in text
    assert "MAE coverage" in text and "held-out split" in text
    w = json.loads(out.read_text())
    assert w["calibration"]["seed"] == 3 and w["calibration"]["fitted"]["n"] > 0
    judge = OfflineJudge(weights_path=out)
    assert judge.name in text and judge.weights["dimensions"]["coverage"]["weights"][
        "coverage_soft"] == pytest.approx(2.0, abs=1e-3)
    c = ruler_cases()[0]
    from judge.judges import JudgeItem
    assert judge.judge_one(JudgeItem(c.input, c.gold, c.gold)).pairwise in ("tie", "gold")


def test_cli_subprocess_and_clear_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "eval.calibrate", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--verdicts" in r.stdout and "Spearman" in r.stdout
    few = tmp_path / "few.jsonl"
    path = synthetic_verdicts(tmp_path / "all.jsonl", per_case=1)
    few.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    with pytest.raises(CalibrationError, match="usable training record"):
        calibrate(read_records(few), holdout=0.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().splitlines()[0].replace('"coverage"', '"cover"') + "\n")
    r = subprocess.run([sys.executable, "-m", "eval.calibrate", "--verdicts", str(bad)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"{bad}:1" in r.stderr and "verdict.rubric" in r.stderr


def test_fit_band_finds_the_separating_cuts():
    d = np.array([-2.0, -1.5, -1.0, -0.1, 0.0, 0.2, 1.2, 1.5])
    y = np.array([-1, -1, -1, 0, 0, 0, 1, 1])
    center, band, acc = fit_band(d, y)
    assert acc == 1.0
    assert -1.0 < center - band < -0.1 and 0.2 < center + band < 1.2
