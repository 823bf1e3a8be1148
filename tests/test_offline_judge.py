"""The offline judge orders obviously different candidates correctly, on the ruler's own gold."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from data.contract import Question
from data.corpus import ruler_cases
from judge.judges import JudgeItem, get_judge
from judge.judges.offline import (DEFAULT_WEIGHTS, OfflineJudge, WeightsError, load_weights)
from judge.judges.offline_features import compound_kind, is_generic, split_asks
from judge.verdict import GOLD_BETTER, TIE

FILLERS = ("Do you have any other preferences?", "Is there anything else I should know?")


@pytest.fixture(scope="module")
def cases():
    return ruler_cases()


@pytest.fixture(scope="module")
def judge():
    return OfflineJudge()


def with_titles(gold, titles):
    return replace(gold, questions=tuple(Question(t, "why it matters") for t in titles))


def merge(a: str, b: str, conj: str) -> str:
    return f"{a.rstrip('?')} {conj} {b[0].lower()}{b[1:]}"


def filler_variant(gold):
    titles = [q.title for q in gold.questions]
    return with_titles(gold, titles[:5] + list(FILLERS))


def compound_variant(gold):
    t = [q.title for q in gold.questions]
    return with_titles(gold, [merge(t[0], t[1], "and"), merge(t[2], t[3], "or"),
                              merge(t[4], t[5], "and"), t[6]])


def duplicate_variant(gold):
    t = [q.title for q in gold.questions]
    return with_titles(gold, t[:5] + [t[0], t[1]])


def test_gold_against_itself_is_a_tie_on_every_case(cases, judge):
    verdicts = judge.judge_many([JudgeItem(c.input, c.gold, c.gold) for c in cases])
    assert all(v.pairwise == TIE for v in verdicts)
    assert all(v.extra["margin"] == 0 for v in verdicts)


@pytest.mark.parametrize("variant, dimension", [
    (filler_variant, "specificity"),
    (compound_variant, "atomicity"),
    (duplicate_variant, "nonRedundancy"),
])
def test_degraded_gold_scores_lower_and_loses(cases, judge, variant, dimension):
    for c in cases:
        own = judge.judge_one(JudgeItem(c.input, c.gold, c.gold))
        worse = judge.judge_one(JudgeItem(c.input, c.gold, variant(c.gold)))
        assert worse.rubric[dimension] < own.rubric[dimension] - 1.0, (c.id, worse.rubric)
        assert worse.pairwise == GOLD_BETTER, (c.id, worse.extra["margin"])


def test_questions_from_another_task_lose(cases, judge):
    for i, c in enumerate(cases):
        other = cases[(i + 1) % len(cases)].gold
        v = judge.judge_one(JudgeItem(c.input, c.gold, replace(c.gold, questions=other.questions)))
        assert v.pairwise == GOLD_BETTER and v.rubric["coverage"] < 3


def test_deterministic_name_and_registry(cases):
    a, b = OfflineJudge(), get_judge("offline")
    assert a.name == b.name and a.name.startswith("offline@") and a.name.endswith(":lexical")
    assert len(a.name) == len("offline@") + 12 + len(":lexical")
    items = [JudgeItem(c.input, c.gold, filler_variant(c.gold)) for c in cases[:5]]
    assert [v.to_dict() for v in a.judge_many(items)] == [v.to_dict() for v in b.judge_many(items)]


def test_weights_file_changes_the_name_and_is_validated(tmp_path, cases):
    w = json.loads(json.dumps(DEFAULT_WEIGHTS))
    w["pairwise"]["tie_band"] = 5.0                      # everything becomes a tie
    path = tmp_path / "w.json"
    path.write_text(json.dumps(w))
    j = OfflineJudge(weights_path=path)
    assert j.name != OfflineJudge().name
    c = cases[0]
    assert j.judge_one(JudgeItem(c.input, c.gold, duplicate_variant(c.gold))).pairwise == TIE
    w["dimensions"]["coverage"]["weights"]["coverage_sof"] = 1.0
    path.write_text(json.dumps(w))
    with pytest.raises(WeightsError, match=r"coverage_sof; valid: coverage_soft, coverage_hit"):
        load_weights(path)
    path.write_text("{not json")
    with pytest.raises(WeightsError, match=r"w\.json:1"):
        load_weights(path)


@pytest.mark.parametrize("title, kind", [
    ("When are you traveling and how long will you stay?", "clause"),
    ("What is your budget? When do you travel?", "clause"),
    ("What dates, budget, and companions do you have in mind?", "list"),
    ("Do you prefer hotels or apartments?", "plain"),
    ("When are you planning to travel to Paris?", None),
])
def test_compound_detection(title, kind):
    assert compound_kind(title) == kind


def test_compounds_split_into_their_asks_and_generic_filler_is_found():
    assert split_asks("When are you traveling and how long will you stay?") == [
        "When are you traveling", "how long will you stay"]
    assert all(is_generic(t) for t in FILLERS + ("What are your goals?",))
    assert not is_generic("Does your daughter have any special needs to consider?")


def test_local_embedding_model_is_used_when_given(tmp_path, cases):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizerFast
    torch.manual_seed(0)
    words = sorted({w.strip("?,.'").lower() for c in cases[:3] for q in c.gold.questions
                    for w in q.title.split()} | set(" ".join(FILLERS).lower().strip("?").split()))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    folder = tmp_path / "tiny-embedder"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    j = OfflineJudge(embedding_model=folder)
    assert j.sim.name == "embedding" and j.name != OfflineJudge().name
    c = cases[0]
    assert j.judge_one(JudgeItem(c.input, c.gold, c.gold)).pairwise == TIE
    dup = j.judge_one(JudgeItem(c.input, c.gold, duplicate_variant(c.gold)))
    assert dup.extra["features"]["max_pair_sim"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(WeightsError, match="lexical similarity"):
        path = tmp_path / "lexical.json"
        path.write_text(json.dumps(DEFAULT_WEIGHTS))
        OfflineJudge(weights_path=path, embedding_model=folder)
    assert j.name.split(":", 1)[1].startswith("embedding/tiny-embedder/")
    with pytest.raises(FileNotFoundError, match="no config.json|no weight file"):
        OfflineJudge(embedding_model=tmp_path)
