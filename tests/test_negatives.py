"""Synthetic negatives: valid contract objects, each damaged on the dimension it targets."""
from __future__ import annotations

import pytest

from data.contract import DiscoveryResult, Question, spec_violations
from data.corpus import reference_cases
from data.leak import content_words
from data.negatives import (COMPOUND, DROP_CRITICAL, GENERIC_QUESTIONS, KINDS, REDUNDANT, TARGETS,
                            NegativeError, compound, drop_critical, make_negatives, paraphrase,
                            redundant)
from judge.judges import JudgeItem, get_judge


@pytest.fixture(scope="module")
def cases():
    return reference_cases()


@pytest.fixture(scope="module")
def judged(cases):
    """(case, negative, gold verdict, negative verdict) for every negative of every reference."""
    judge = get_judge("offline")
    out = []
    for case in cases:
        negs = make_negatives(case.gold, task_input=case.input)
        verdicts = judge.judge_many([JudgeItem(case.input, case.gold, case.gold)]
                                    + [JudgeItem(case.input, case.gold, n.result) for n in negs])
        out += [(case, n, verdicts[0], v) for n, v in zip(negs, verdicts[1:])]
    return out


def test_every_reference_gets_every_kind(cases, judged):
    per_case = {}
    for case, neg, _, _ in judged:
        per_case.setdefault(case.id, []).append(neg.kind)
    assert len(per_case) == len(cases)
    for kinds in per_case.values():
        assert sorted(kinds) == sorted(KINDS * 2)   # default: two of each kind


def test_every_negative_is_a_valid_contract_object(judged):
    for case, neg, _, _ in judged:
        r = neg.result
        assert len(r.questions) == 7
        assert spec_violations(r) == [], (case.id, neg.note)
        # round-trips through both JSON spellings with the exact-7 check
        assert DiscoveryResult.from_dict(r.to_dict("camel")) == r
        assert DiscoveryResult.from_dict(r.to_dict("snake")) == r
        assert r != case.gold and r.task_title == case.gold.task_title


def test_offline_judge_scores_each_negative_below_gold_on_its_target(judged):
    failures = []
    for case, neg, gold_v, neg_v in judged:
        for dim in TARGETS[neg.kind]:
            if not neg_v.rubric[dim] < gold_v.rubric[dim]:
                failures.append(f"{case.id} {neg.kind} {dim}: {neg_v.rubric[dim]} vs gold "
                                f"{gold_v.rubric[dim]} ({neg.note})")
    assert not failures, "\n".join(failures)


def test_targets_name_the_issue_dimensions():
    assert TARGETS == {DROP_CRITICAL: ("specificity", "coverage"), COMPOUND: ("atomicity",),
                       REDUNDANT: ("nonRedundancy",)}


def test_drop_critical_removes_one_early_question_and_adds_filler(cases):
    gold = cases[0].gold
    neg = drop_critical(gold, index=1, filler=2)
    assert [q.title for q in neg.result.questions[:6]] == \
        [q.title for i, q in enumerate(gold.questions) if i != 1]
    assert neg.result.questions[6].title == GENERIC_QUESTIONS[2][0]
    assert gold.questions[1].title in neg.note and neg.positions == (1,)
    for neg in make_negatives(gold, per_kind=3):
        if neg.kind == DROP_CRITICAL:
            assert neg.positions[0] in (0, 1, 2)   # the most decision-critical questions


def test_compound_joins_two_asks_and_keeps_seven(cases):
    gold = cases[1].gold
    neg = compound(gold, 2, 3, "or")
    a, b = gold.questions[2].title, gold.questions[3].title
    merged = neg.result.questions[2].title
    assert merged.startswith(a.rstrip("?")) and ", or " in merged and merged.endswith("?")
    assert content_words(b) <= content_words(merged)
    assert [q for i, q in enumerate(neg.result.questions) if i != 2] == \
        [q for i, q in enumerate(gold.questions) if i != 2]


def test_redundant_repeats_another_question(cases):
    gold = cases[2].gold
    neg = redundant(gold, source=0, replaced=5)
    src, new = gold.questions[0].title, neg.result.questions[5].title
    assert new != src and len(content_words(src) - content_words(new)) == 0
    assert gold.questions[5] not in neg.result.questions


@pytest.mark.parametrize("title,expected", [
    ("How many guests will attend?", "Roughly how many guests will attend?"),
    ("What is your total budget for the trip?",
     "Can you tell me what your total budget for the trip is?"),
    ("When is the wedding?", "Around when is the wedding?"),
    ("Do you have a written contract?", "Just to confirm: do you have a written contract?"),
])
def test_paraphrase(title, expected):
    assert paraphrase(title) == expected


def test_paraphrase_keeps_proper_nouns():
    assert paraphrase("Paris or Rome first?", 1) == "Again: Paris or Rome first?"


def test_deterministic_for_a_seed(cases):
    gold, inp = cases[3].gold, cases[3].input
    assert make_negatives(gold, seed=7, task_input=inp) == make_negatives(gold, seed=7,
                                                                          task_input=inp)
    seeds = {tuple(n.result for n in make_negatives(gold, seed=s, task_input=inp))
             for s in range(5)}
    assert len(seeds) > 1


def test_bad_input_is_refused(cases):
    gold = cases[0].gold
    six = DiscoveryResult(gold.task_title, gold.task_description, gold.questions[:6])
    with pytest.raises(NegativeError, match="6 questions"):
        make_negatives(six)
    with pytest.raises(NegativeError, match="two different"):
        compound(gold, 1, 1)
    with pytest.raises(NegativeError, match="two different"):
        redundant(gold, 4, 4)
    with pytest.raises(ValueError, match="unknown negative kind"):
        make_negatives(gold, kinds=("shuffled",))


def test_filler_never_stands_in_for_the_dropped_question():
    qs = tuple(Question(t, "d") for t in (
        "What is your main goal for this networking push?", "Which events suit you?",
        "How many contacts do you want?", "Where do you live?", "When can you start?",
        "Who do you already know?", "How much time do you have weekly?"))
    gold = DiscoveryResult("Networking in Austin", "Grow a network.", qs)
    with pytest.raises(NegativeError, match="shares words"):
        drop_critical(gold, index=0, filler=4)       # "What are your main goals for this?"
    for neg in make_negatives(gold, per_kind=3):
        if neg.kind == DROP_CRITICAL and neg.positions == (0,):
            assert "main goal" not in neg.result.questions[-1].title
