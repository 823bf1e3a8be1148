"""The AFM tokenizer: SentencePiece parity, the <n> newline convention, and the chat format."""
from __future__ import annotations

import random
import re

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from train.afm import DEFAULT_SYSTEM_MESSAGE, build_afm_tokenizer
from train.afm.testing import train_tiny_sentencepiece

MARKERS = ("<n>", "<turn_start>", "<turn_end>")


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("sp") / "tokenizer.model")


@pytest.fixture(scope="module")
def tok(sp_path):
    return build_afm_tokenizer(sp_path)


def sentencepiece_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Apple's pipeline: one SentencePiece pass over the text with newlines as <n>; the lone
    leading '▁' before a marker is dropped."""
    text = text.replace("\n", "<n>")
    ids = sp.encode(text)
    starts_with_marker = any(text.lstrip(" ").startswith(m) for m in MARKERS)
    if starts_with_marker and ids and ids[0] == sp.piece_to_id("▁"):
        ids = ids[1:]
    return ids


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["plan", "the", "task", "Title", "question", "clarify", "seven", "ocean", "haiku", "json", "{",
             "}", ":", "42", ",", "<n>", "<turn_start>", "<turn_end>", "assistant", "user", "A"]
    seps = ["", " ", "  ", "\n", "\n\n", " \n "]
    return ["".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_ids_match_sentencepiece_on_the_whole_string(tmp_path, model_type):
    path = train_tiny_sentencepiece(tmp_path / "tokenizer.model", model_type=model_type, seed=3)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = build_afm_tokenizer(path)
    mismatches = []
    for text in random_texts(400, seed=7):
        ours = tok(text, add_special_tokens=False)["input_ids"]
        if ours != sentencepiece_ids(sp, text):
            pieces = sp.encode(text.replace("\n", "<n>"), out_type=str)
            mismatches.append((text, tok.convert_ids_to_tokens(ours), pieces))
    assert not mismatches, mismatches[:3]


def test_newlines_are_the_n_piece_and_round_trip(tok, sp_path):
    text = "Plan the task:\nfirst question?\n\nsecond question.\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    newline_id = spm.SentencePieceProcessor(model_file=str(sp_path)).piece_to_id("<n>")
    assert tok.convert_tokens_to_ids("<n>") == newline_id
    assert ids.count(newline_id) == text.count("\n")
    assert tok.decode(ids) == text
    assert "<n>" not in tok.decode(ids)


def test_chat_template_renders_the_afm_format(tok):
    messages = [{"role": "user", "content": "write a haiku\nabout the ocean"},
                {"role": "assistant", "content": "title: ocean"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        f"<s><turn_start> system<n>{DEFAULT_SYSTEM_MESSAGE}<turn_end>"
        "<turn_start> user<n>write a haiku\nabout the ocean<turn_end>"
        "<turn_start> assistant<n>title: ocean<turn_end>"
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<turn_start> assistant<n>")
    assert rendered.startswith(prompt)


def test_custom_instructions_are_appended_to_the_default_system_message(tok):
    user = {"role": "user", "content": "plan the task"}
    appended = tok.apply_chat_template([{"role": "system", "content": "Plan the task."}, user], tokenize=False)
    assert appended.startswith(f"<s><turn_start> system<n>{DEFAULT_SYSTEM_MESSAGE} Plan the task.<turn_end>")
    already = f"{DEFAULT_SYSTEM_MESSAGE} Be brief."
    kept = tok.apply_chat_template([{"role": "system", "content": already}, user], tokenize=False)
    assert kept.count(DEFAULT_SYSTEM_MESSAGE) == 1
    with pytest.raises(Exception, match="system message is only allowed as the first"):
        tok.apply_chat_template([user, {"role": "system", "content": "late"}], tokenize=False)


def test_assistant_mask_covers_reply_and_one_turn_end(tok):
    messages = [{"role": "system", "content": "Plan the task."},
                {"role": "user", "content": "write a haiku"},
                {"role": "assistant", "content": "title: ocean\nquestion?"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "seven questions"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "title: ocean\nquestion?<turn_end>seven questions<turn_end>"
    turn_end = tok.convert_tokens_to_ids("<turn_end>")
    assert tok.eos_token_id == turn_end
    assert ids.count(turn_end) == len(messages)  # one per turn, never doubled
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids[-1] == turn_end
    assert tok.pad_token_id != turn_end  # padding must never hide the stop token from the loss


def test_save_and_reload_keeps_ids_and_template(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "plan\nthe task"}, {"role": "assistant", "content": "ok"}]
    assert again.apply_chat_template(messages) == tok.apply_chat_template(messages)
    assert again.chat_template == tok.chat_template
    assert again.decode(tok("a\nb", add_special_tokens=False)["input_ids"]) == "a\nb"


def test_a_model_without_the_chat_pieces_is_rejected(sp_path, tmp_path):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_path.read_bytes())
    for piece in proto.pieces:
        if piece.piece == "<turn_end>":
            piece.piece = "<end_of_turn>"
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=re.escape("['<turn_end>']")) as err:
        build_afm_tokenizer(bad)
    assert str(bad) in str(err.value)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        build_afm_tokenizer(tmp_path / "junk.model")
