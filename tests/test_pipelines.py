"""Generation pipelines: leave-one-out retrieval, over-generate-and-prune, pool loading, batching."""
from __future__ import annotations

import json

import pytest

from data.contract import (ContractError, DiscoveryResult, Question, render_assistant,
                           spec_violations)
from data.corpus import reference_cases
from data.leak import near_duplicate
from eval.generate import render_messages
from eval.pipelines import (OVERGEN_QUESTIONS, LeaveOneOutError, PipelineOptions,
                            choose_demonstrations, load_pool, prune_questions, retrieval_messages,
                            run_pipeline)
from eval.ruler import load_ruler

try:
    from tests.greedy_ties import assert_same_greedy_texts
except ImportError:
    from greedy_ties import assert_same_greedy_texts

# Trivial rewordings of ruler tasks (same normalisation as the leak guard must catch them).
REWORDINGS = {"Plan a trip to Paris": "plan my Paris trip!",
              "Adopt a rescue dog": "Adopting a Rescue Dog.",
              "Write a children's picture book": "write a childrens picture book please"}


@pytest.fixture(scope="module")
def ruler_cases():
    return load_ruler()[0]


@pytest.fixture(scope="module")
def poisoned_pool(ruler_cases):
    """The bundled references plus the ruler's own cases and reworded copies of three of them."""
    from data.contract import Case
    pool = list(reference_cases()) + list(ruler_cases)
    by_input = {c.input: c for c in ruler_cases}
    for original, reworded in REWORDINGS.items():
        assert original in by_input, original
        pool.append(Case(f"reworded-{by_input[original].id}", reworded, by_input[original].gold))
    return pool


def test_leave_one_out_holds_when_the_pool_contains_the_ruler(ruler_cases, poisoned_pool):
    for case in ruler_cases:
        # Ask for far more demonstrations than anyone would: the guard must still hold.
        demos, excluded = choose_demonstrations(case.input, poisoned_pool, k=40)
        assert len(demos) == 40
        assert case.id in excluded
        for d in demos:
            assert not near_duplicate(d.input, case.input), (case.id, d.id)
            assert d.gold != case.gold, (case.id, d.id)
        prompt_text = json.dumps(retrieval_messages(case.input, demos))
        assert json.dumps(render_assistant(case.gold))[1:-1] not in prompt_text
        if case.input in REWORDINGS:
            assert f"reworded-{case.id}" in excluded
    # Without the guard the nearest example of every ruler case would be the case itself.
    paris = next(c for c in ruler_cases if c.input == "Plan a trip to Paris")
    demos, _ = choose_demonstrations(paris.input, poisoned_pool, k=3)
    assert all("paris" not in d.input.lower() for d in demos)


def test_retrieval_messages_refuse_a_self_demonstration(ruler_cases):
    case = ruler_cases[0]
    with pytest.raises(LeaveOneOutError, match="must never be shown"):
        retrieval_messages(case.input, [case])
    other = reference_cases()[0]
    msgs = retrieval_messages(case.input, [other])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"].endswith(case.input)
    assert msgs[2]["content"] == render_assistant(other.gold)


def test_nearest_examples_are_ranked_deterministically():
    pool = reference_cases()
    a, _ = choose_demonstrations("Plan a weekend trip to Rome with my partner", pool, k=3)
    b, _ = choose_demonstrations("Plan a weekend trip to Rome with my partner", pool[::-1], k=3)
    assert [d.id for d in a] == [d.id for d in b]
    assert any("trip" in d.input.lower() or "travel" in d.input.lower() for d in a)


def _q(title):
    return Question(title, "why it matters", False)


def test_prune_drops_the_weakest_question():
    qs = ["What is your total budget for the trip?",
          "Which dates are you planning to travel?",
          "Which neighbourhood do you want to stay in?",
          "Do you have any other preferences?",                 # generic filler
          "How many people are travelling with you?",
          "What is your total budget for this trip?",           # near-repeat of question 1
          "Which museums matter most to you?",
          "Do you need a visa and when does your passport expire?"]  # compound ask
    result = DiscoveryResult("Paris Trip", "Plan a trip to Paris.", tuple(_q(t) for t in qs))
    pruned, dropped = prune_questions(result, "Plan a trip to Paris")
    assert len(pruned.questions) == 7 and not spec_violations(pruned)
    assert dropped[0]["title"] in ("Do you have any other preferences?",
                                   "What is your total budget for this trip?")
    # Order of the survivors is kept; pruning is deterministic.
    kept = [q.title for q in pruned.questions]
    assert kept == [t for t in qs if t != dropped[0]["title"]]
    assert prune_questions(result, "Plan a trip to Paris") == (pruned, dropped)
    # Down to 5 from 8: the filler, the repeat and the compound ask go first.
    five, gone = prune_questions(result, "Plan a trip to Paris", keep=5)
    assert {g["title"] for g in gone} == {qs[3], qs[5], qs[7]}
    # Seven or fewer: untouched.
    seven = DiscoveryResult("T", "D", tuple(_q(t) for t in qs[:7]))
    assert prune_questions(seven, "x") == (seven, [])


def test_load_pool_formats(tmp_path, sft_data_dir, ruler_cases):
    sft = load_pool(sft_data_dir / "train.jsonl")
    assert sft and all(not c.input.startswith("Task:") for c in sft)
    refs = {c.input: c.gold for c in reference_cases()}
    assert all(refs[c.input] == c.gold for c in sft)
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(c.to_dict()) for c in ruler_cases[:3]) + "\n")
    assert [c.input for c in load_pool(gold)] == [c.input for c in ruler_cases[:3]]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(gold.read_text())
    assert len(load_pool(folder)) == 3
    assert len(load_pool()) == len(reference_cases())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(gold.read_text() + '{"input": "x", "gold": {"taskTitle": 3}}\n')
    with pytest.raises(ContractError, match=r"bad.jsonl:4"):
        load_pool(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pool(tmp_path / "missing.jsonl")


# ---- with the tiny stand-in (a few inputs, short answers: seconds) ------------------------------
@pytest.fixture(scope="module")
def sft_model(standin_dir, tiny_sft_run):
    import torch

    from train.models import load_with_adapter
    torch.set_num_threads(1)
    model, tok, _ = load_with_adapter(str(standin_dir), tiny_sft_run)
    return model, tok


@pytest.mark.slow
def test_retrieval_pipeline_on_the_model_never_shows_a_case_itself(sft_model, ruler_cases,
                                                                 poisoned_pool):
    model, tok = sft_model
    cases = ruler_cases[:4]
    opts = PipelineOptions(max_new_tokens=24, batch_size=4, k=3, pool=poisoned_pool)
    gens = run_pipeline("retrieval", model, tok, [c.input for c in cases], opts)
    for case, g in zip(cases, gens):
        shown = g.details["demonstrations"]
        assert shown, "the context leaves room for at least one demonstration"
        assert case.id in g.details["excluded_as_self"]
        assert all(not near_duplicate(d["input"], case.input) for d in shown)
        # What was cut to fit the stand-in's 1024-token context is recorded.
        assert len(shown) + g.details["dropped_for_context"] == 3
        prompt = render_messages(tok, retrieval_messages(
            case.input, [next(p for p in poisoned_pool if p.id == d["id"]) for d in shown]))
        assert len(tok(prompt)["input_ids"]) + 24 <= model.config.max_position_embeddings


@pytest.mark.slow
def test_overgen_prune_and_single_on_the_model(sft_model, ruler_cases):
    model, tok = sft_model
    inputs = [c.input for c in ruler_cases[:3]]
    opts = PipelineOptions(max_new_tokens=640, batch_size=3)
    over = run_pipeline("overgen-prune", model, tok, inputs, opts)
    for g in over:
        # The tiny model may ramble past the token bound (recorded as the case's error); whatever
        # it did produce is pruned to at most 7 questions, with the dropped ones recorded.
        assert (g.result is None) == (g.error is not None)
        if g.result is not None:
            n = g.details["generated_questions"]
            assert len(g.result.questions) == min(n, 7)
            assert len(g.details["dropped"]) == max(0, n - 7)
    again = run_pipeline("overgen-prune", model, tok, inputs, opts)
    assert [g.text for g in again] == [g.text for g in over]           # greedy: repeatable
    assert OVERGEN_QUESTIONS == 8
    with pytest.raises(ValueError, match="unknown pipeline"):
        run_pipeline("beam", model, tok, inputs, opts)


@pytest.mark.slow
def test_batched_generation_equals_one_by_one_and_model_generate(sft_model, ruler_cases,
                                                                 standin_dir, monkeypatch):
    """Left padding and rows leaving the batch must not change greedy outputs, and the shrinking
    loop must produce what `model.generate` produces (up to near-ties of the logits, where the
    computations' last bits may pick either token: tests/greedy_ties.py)."""
    import eval.generate as gen
    from train.models import load_with_adapter
    model, tok = sft_model
    base, base_tok, _ = load_with_adapter(str(standin_dir), None)   # stops at uneven lengths
    prompts = [gen.render_prompt(base_tok, c.input) for c in ruler_cases[:8]]
    batched = gen.generate_texts(base, base_tok, prompts, max_new_tokens=48, batch_size=8)
    single = gen.generate_texts(base, base_tok, prompts, max_new_tokens=48, batch_size=1)
    # Equal up to near-ties: padding changes the matmuls' last bits (tests/greedy_ties.py).
    assert_same_greedy_texts(base, base_tok, prompts, [t[0] for t in batched],
                             [t[0] for t in single])
    inputs = [c.input for c in ruler_cases[:6]]
    fast = run_pipeline("single", model, tok, inputs,
                        PipelineOptions(max_new_tokens=48, batch_size=6))
    one = run_pipeline("single", model, tok, inputs,
                       PipelineOptions(max_new_tokens=48, batch_size=1))
    sft_prompts = [gen.render_prompt(tok, i) for i in inputs]
    assert_same_greedy_texts(model, tok, sft_prompts, [g.text for g in fast],
                             [g.text for g in one])
    calls = []
    monkeypatch.setattr(gen, "plain_greedy_config", lambda m: calls.append(1) and False)
    via_generate = gen.generate_texts(base, base_tok, prompts, max_new_tokens=48, batch_size=8)
    assert calls
    assert_same_greedy_texts(base, base_tok, prompts, [t[0] for t in via_generate],
                             [t[0] for t in batched])
    via_generate = run_pipeline("single", model, tok, inputs,
                                PipelineOptions(max_new_tokens=48, batch_size=6))
    assert_same_greedy_texts(model, tok, sft_prompts, [g.text for g in via_generate],
                             [g.text for g in fast])


@pytest.mark.slow
def test_logits_processing_configs_use_model_generate(standin_dir):
    from eval.generate import plain_greedy_config
    from train.models import load_with_adapter
    model, _, _ = load_with_adapter(str(standin_dir), None)
    assert plain_greedy_config(model)
    model.generation_config.repetition_penalty = 1.05
    assert not plain_greedy_config(model)
