"""The reference metric, recomputed by hand from hand-built verdicts; records I/O; paired test."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from rich.console import Console

from data.contract import Question
from data.corpus import ruler_cases
from judge.metric import (bootstrap_ci, paired_comparison, record_quality, render_scorecard,
                         scorecard)
from judge.records import JudgedRecord, RecordError, read_records, write_records
from judge.verdict import Verdict

DIMS = ("atomicity", "specificity", "coverage", "naturalness", "nonRedundancy")


@pytest.fixture(scope="module")
def cases():
    return ruler_cases()[:8]


def rec(case, pairwise=None, rubric=None, *, spec=True, error=None, error_kind=None, **kw):
    verdict = Verdict(pairwise, dict(zip(DIMS, rubric))) if pairwise else None
    cand = None if error_kind == "generation" else case.gold
    return JudgedRecord(input=case.input, gold=case.gold, candidate=cand, spec_passed=spec,
                        violations=[] if spec else ["has 6 questions, expected exactly 7"],
                        verdict=verdict, error=error, error_kind=error_kind, case_id=case.id, **kw)


def hand_built(cases):
    c = cases
    return [
        rec(c[0], "candidate", (5, 5, 5, 5, 5)),                       # 0.5*1 + 0.5*1 = 1
        rec(c[1], "tie", (4, 4, 3, 4, 5)),                             # mean 4: 0.375 + 0.25
        rec(c[2], "gold", (1, 1, 1, 1, 1)),                            # 0
        rec(c[3], "gold", (3, 3, 3, 3, 3)),                            # 0.25
        rec(c[4], "candidate", (5, 5, 5, 5, 5), spec=False),          # spec failure: 0
        rec(c[5], error="model refused", error_kind="generation"),     # generation error: 0
        rec(c[6], error="judge error: malformed", error_kind="judge"),  # judge error: 0
        rec(c[7], "tie", (2, 3, 4, 5, 1)),                             # mean 3: 0.25 + 0.25
    ]


def test_headline_wtl_and_dimension_means_recomputed_by_hand(cases):
    card = scorecard(hand_built(cases))
    expected_q = [1.0, 0.625, 0.0, 0.25, 0.0, 0.0, 0.0, 0.5]
    assert card.qualities == pytest.approx(expected_q)
    assert card.headline == pytest.approx(sum(expected_q) / 8)
    # answered-only drops only the generation error (judge error and spec failure stay as 0)
    assert card.headline_answered == pytest.approx(sum(expected_q) / 7)
    assert card.n_answered == 7
    assert (card.wins, card.ties, card.losses, card.n_scored) == (1, 2, 2, 5)
    scored = [(5, 5, 5, 5, 5), (4, 4, 3, 4, 5), (1, 1, 1, 1, 1), (3, 3, 3, 3, 3), (2, 3, 4, 5, 1)]
    for i, d in enumerate(DIMS):
        assert card.dimension_means[d] == pytest.approx(sum(s[i] for s in scored) / 5)
    # spec passed: cases 0-3, the judge-error case, case 7 -> 6 of 8; errors 2 of 8
    assert card.spec_pass_rate == pytest.approx(6 / 8)
    assert card.error_rate == pytest.approx(2 / 8)
    assert (card.n_errors, card.n_judge_errors, card.n_spec_failed) == (2, 1, 1)
    lo, hi = card.headline_ci
    assert lo < card.headline < hi


def test_records_roundtrip_accepts_legacy_pairwise_names_and_snake_keys(cases, tmp_path):
    path = tmp_path / "judged.jsonl"
    legacy = {"goldBetter": "gold", "tie": "tie", "fmBetter": "candidate"}
    lines = []
    for (name, _), case in zip(legacy.items(), cases):
        lines.append({"input": case.input, "gold": case.gold.to_dict("snake"),
                      "candidate": case.gold.to_dict("camel"),
                      "spec": {"passed": True, "violations": []},
                      "verdict": {"pairwise": name, "notes": "",
                                  "rubric": {"atomicity": 4, "specificity": 4, "coverage": 3,
                                             "naturalness": 4, "non_redundancy": 5}},
                      "experiment": "legacy"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = read_records(path)
    assert [r.verdict.pairwise for r in records] == list(legacy.values())
    assert records[0].verdict.rubric["nonRedundancy"] == 5
    assert records[0].gold == cases[0].gold
    out = tmp_path / "again.jsonl"
    write_records(out, records)
    again = read_records(out)
    assert [record_quality(r) for r in again] == [record_quality(r) for r in records]
    assert again[0].experiment == "legacy"


@pytest.mark.parametrize("mutate, needle", [
    (lambda o: o["verdict"]["rubric"].pop("coverage"), "verdict.rubric.coverage"),
    (lambda o: o["verdict"].update(pairwise="better"), "verdict.pairwise"),
    (lambda o: o["verdict"]["rubric"].update(coverage=0.4), "verdict.rubric.coverage"),
    (lambda o: o.pop("verdict"), "'verdict'"),
    (lambda o: o["candidate"].pop("taskTitle"), "key 'candidate'"),
    (lambda o: o.pop("input"), "'input'"),
    (lambda o: o["spec"].update(passed="yes"), "spec.passed"),
])
def test_bad_records_name_file_line_and_key(cases, tmp_path, mutate, needle):
    good = {"input": cases[0].input, "gold": cases[0].gold.to_dict(),
            "candidate": cases[0].gold.to_dict(), "spec": {"passed": True, "violations": []},
            "verdict": {"pairwise": "tie", "notes": "",
                        "rubric": {d: 3 for d in DIMS}}}
    bad = json.loads(json.dumps(good))
    mutate(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert f"{path}:3" in str(e.value) and needle in str(e.value)


def test_bootstrap_ci_is_reproducible_and_degenerate_for_constants():
    values = [0.1, 0.4, 0.45, 0.9, 0.3, 0.0, 0.55]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert bootstrap_ci([0.5]) is None


def test_paired_comparison_separates_real_differences_from_noise(cases):
    all_cases = ruler_cases()
    base = [rec(c, "gold", (3, 3, 3, 3, 3)) for c in all_cases]                 # 0.25 each
    same = paired_comparison(base, [replace(r) for r in base])
    assert same.mean_diff == 0 and not same.distinguishable and same.sign_test_p == 1.0
    better = [rec(c, "tie", (4, 4, 4, 4, 4)) for c in all_cases]                 # 0.625 each
    c = paired_comparison(base, better, label_a="base", label_b="better")
    assert c.mean_diff == pytest.approx(0.375) and c.distinguishable
    assert c.b_better == len(all_cases) and c.sign_test_p < 1e-6
    # one case up, one case down, the rest equal: indistinguishable
    noisy = list(base)
    noisy[0] = rec(all_cases[0], "tie", (4, 4, 4, 4, 4))
    noisy[1] = rec(all_cases[1], "gold", (1, 1, 1, 1, 1))
    n = paired_comparison(base, noisy)
    assert not n.distinguishable and n.b_better == 1 and n.a_better == 1
    with pytest.raises(ValueError, match="different cases"):
        paired_comparison(base, base[:-1])


def test_rendered_scorecard_shows_headline_and_labels(cases):
    card = scorecard(hand_built(cases), label="demo", ruler={"version": 3, "hash": "ab" * 32})
    buf = io.StringIO()
    render_scorecard(card, Console(file=buf, width=160), notice="a proxy")
    text = buf.getvalue()
    assert f"{card.headline:.3f}" in text and "answered cases only" in text
    assert "1 / 2 / 2" in text and "v3" in text and "a proxy" in text
    assert "could not be judged" in text


def test_wrong_question_count_candidate_roundtrips(cases, tmp_path):
    six = replace(cases[0].gold, questions=cases[0].gold.questions[:6] )
    r = JudgedRecord(input=cases[0].input, gold=cases[0].gold, candidate=six, spec_passed=False,
                     violations=["has 6 questions, expected exactly 7"])
    write_records(tmp_path / "r.jsonl", [r])
    back = read_records(tmp_path / "r.jsonl")[0]
    assert len(back.candidate.questions) == 6 and record_quality(back) == 0
    assert isinstance(back.candidate.questions[0], Question)
