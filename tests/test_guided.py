"""Guided generation (train.guided): decoding under the contract's schema, as on device.

On the tiny stand-in: the grammar admits every bundled reference exactly as training renders it
(both tokenizers), guided greedy answers are grammar-valid and those that end have exactly seven
questions, batching does not change them, sampling stays inside the grammar, the MLX engine
decodes the same guided text as torch, and eval.run records the setting in the experiment.
"""
from __future__ import annotations

import json

import pytest

from data.contract import N_QUESTIONS, parse_assistant, render_assistant
from data.corpus import reference_cases, ruler_cases

llguidance = pytest.importorskip("llguidance")


def _lltok(tokenizer, n_vocab):
    from train.guided import _ll_tokenizer
    return _ll_tokenizer(tokenizer, n_vocab)


def grammar_prefix_length(tokenizer, ids: list[int], n_vocab: int) -> int:
    """How many of `ids` a fresh matcher accepts (all of them for a grammar-valid output)."""
    from train.guided import schema_grammar
    m = llguidance.LLMatcher(_lltok(tokenizer, n_vocab), schema_grammar())
    return m.validate_tokens(ids)


def test_schema_admits_every_reference_as_training_renders_it(standin_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(standin_dir)
    refs = reference_cases()
    for case in refs:
        ids = tok(render_assistant(case.gold), add_special_tokens=False)["input_ids"]
        ids.append(tok.eos_token_id)
        assert grammar_prefix_length(tok, ids, len(tok)) == len(ids), case.id
    # ... and refuses a six-question answer at the point where a seventh must start
    six = render_assistant(refs[0].gold).rsplit(",\n{", 1)[0] + "\n]}"
    ids = tok(six, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert grammar_prefix_length(tok, ids, len(tok)) < len(ids)


def test_guided_schema_bounds_strings_above_every_gold_answer():
    from train.guided import STRING_BOUNDS, guided_schema
    s = guided_schema()
    q = s["properties"]["questions"]
    assert q["minItems"] == q["maxItems"] == N_QUESTIONS
    longest = {"taskTitle": 0, "taskDescription": 0, "title": 0, "description": 0}
    for case in reference_cases() + ruler_cases():
        g = case.gold
        longest["taskTitle"] = max(longest["taskTitle"], len(g.task_title))
        longest["taskDescription"] = max(longest["taskDescription"], len(g.task_description))
        for qq in g.questions:
            longest["title"] = max(longest["title"], len(qq.title))
            longest["description"] = max(longest["description"], len(qq.description))
    for key, bound in STRING_BOUNDS.items():
        assert bound >= 1.5 * longest[key], key


@pytest.fixture(scope="module")
def sft_model(standin_dir, tiny_sft_run):
    from train.models import load_with_adapter
    return load_with_adapter(str(standin_dir), str(tiny_sft_run))


def _ids(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.slow
def test_guided_greedy_is_grammar_valid_batched_and_counts_seven(sft_model):
    from eval.generate import generate_texts, render_prompt
    from tests.greedy_ties import tie_problem
    model, tok, _ = sft_model
    inputs = [c.input for c in ruler_cases()[:6]]
    prompts = [render_prompt(tok, t) for t in inputs]
    batched = [t[0] for t in generate_texts(model, tok, prompts, max_new_tokens=500,
                                            batch_size=6, guided=True)]
    ended = 0
    n_vocab = model.get_output_embeddings().weight.shape[0]
    for text in batched:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert grammar_prefix_length(tok, ids, n_vocab) == len(ids), text[:200]
        parsed = parse_assistant(text)
        if parsed.result is not None and text.rstrip().endswith("}"):
            ended += 1
            assert len(parsed.result.questions) == N_QUESTIONS
            json.loads(text)          # whole output is one JSON object, nothing around it
    assert ended >= 4, "the tiny SFT adapter should finish most guided answers in 500 tokens"
    for prompt, text in zip(prompts, batched):
        (single,) = generate_texts(model, tok, [prompt], max_new_tokens=500, guided=True)[0:1]
        a, b = _ids(tok, [text, single[0]])
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert tie_problem(model, prompt_ids, a, b, eos_id=tok.eos_token_id, tol=1e-3) is None


@pytest.mark.slow
def test_guided_sampling_stays_in_the_grammar_and_is_seeded(sft_model):
    from eval.generate import generate_texts, render_prompt
    model, tok, _ = sft_model
    prompts = [render_prompt(tok, c.input) for c in ruler_cases()[:2]]
    kw = dict(max_new_tokens=200, do_sample=True, temperature=1.0, num_return_sequences=2,
              seed=7, guided=True)
    first = generate_texts(model, tok, prompts, **kw)
    assert first == generate_texts(model, tok, prompts, **kw)
    n_vocab = model.get_output_embeddings().weight.shape[0]
    for texts in first:
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert grammar_prefix_length(tok, ids, n_vocab) == len(ids), text[:200]


@pytest.mark.slow
def test_mlx_engine_decodes_the_same_guided_text(standin_dir, tiny_sft_run):
    pytest.importorskip("mlx_lm")
    from eval.generate import generate_texts, render_prompt
    from tests.greedy_ties import tie_problem
    from train.mlx.generate import load_mlx_engine
    from train.models import load_with_adapter
    model, tok, _ = load_with_adapter(str(standin_dir), str(tiny_sft_run))
    engine, mtok, _ = load_mlx_engine(str(standin_dir), str(tiny_sft_run))
    prompts = [render_prompt(tok, c.input) for c in ruler_cases()[:4]]
    torch_texts = generate_texts(model, tok, prompts, max_new_tokens=400, guided=True)
    mlx_texts = generate_texts(engine, mtok, prompts, max_new_tokens=400, guided=True)
    for prompt, (a,), (b,) in zip(prompts, torch_texts, mlx_texts):
        ia, ib = _ids(tok, [a, b])
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert tie_problem(model, prompt_ids, ia, ib, eos_id=tok.eos_token_id, tol=1e-3) is None


@pytest.mark.slow
def test_eval_run_guided_is_recorded_and_every_answer_has_seven_questions(
        standin_dir, tiny_sft_run, tmp_path):
    from eval.run import main
    rc = main(["--base", str(standin_dir), "--adapter", str(tiny_sft_run), "--guided",
               "--label", "guided", "--note", "guided decoding", "--db",
               str(tmp_path / "x.db"), "--out-dir", str(tmp_path / "g"), "--max-new-tokens",
               "500", "--no-progress"])
    assert rc == 0
    import sqlite3
    with sqlite3.connect(tmp_path / "x.db") as db:
        (config_json,) = db.execute("SELECT config_json FROM experiments").fetchone()
    assert json.loads(config_json)["generation"]["guided"]["library"] == "llguidance"
    cases = json.loads((tmp_path / "g" / "cases.json").read_text())
    finished = [c for c in cases if c["candidate"]]
    assert len(finished) >= 20
    assert all(len(c["candidate"]["questions"]) == N_QUESTIONS for c in finished)
