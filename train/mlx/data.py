"""Token batches for the MLX backend, built exactly as TRL builds them for the torch backend
(tests compare both token for token), so a config trains on the same sequences either way.

SFT (TRL's SFTTrainer, prompt/completion rows): prompt ids = the chat template with the
generation prompt, sequence ids = the template over prompt + completion, the loss covers the
tokens after their common prefix (the answer), truncated to max_length keeping the start;
examples with no answer token left are dropped.
ORPO (TRL's ORPOTrainer): prompt and answers rendered to text by TRL's maybe_apply_chat_template,
tokenised without special tokens, BOS/EOS added when missing, the answer truncated to fit.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]           # IGNORE outside the answer


def _template_ids(tokenizer, messages, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return list(out["input_ids"])


def sft_examples(tokenizer, rows: list[dict], max_length: int | None) -> list[Example]:
    out = []
    for row in rows:
        prompt_ids = _template_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full = _template_ids(tokenizer, row["prompt"] + row["completion"])
        n = 0
        while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
            n += 1
        labels = [IGNORE] * n + full[n:]
        if max_length is not None:
            full, labels = full[:max_length], labels[:max_length]
        if any(t != IGNORE for t in labels[1:]):
            out.append(Example(full, labels))
    return out


def _answer_tokens(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """TRL's build_tokenized_answer: (prompt ids, answer ids) cut from enc(prompt + answer)."""
    full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    start = len(prompt_ids)
    if prompt_ids != full[:start]:
        start -= 1            # the prompt's last token merged with the answer's first
    return full[:start], full[start:]


def orpo_examples(tokenizer, records: list[dict], max_length: int) -> list[tuple[Example, Example]]:
    """(chosen, rejected) per preference record, as TRL's ORPOTrainer tokenises it."""
    from trl.data_utils import maybe_apply_chat_template

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for record in records:
        text = maybe_apply_chat_template(
            {k: record[k] for k in ("prompt", "chosen", "rejected")},
            tokenizer)
        pair = []
        for side in ("chosen", "rejected"):
            prompt_ids, answer_ids = _answer_tokens(tokenizer, text["prompt"], text[side])
            if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
                prompt_ids = [bos] + prompt_ids
            if eos is not None and (not answer_ids or answer_ids[-1] != eos):
                answer_ids = answer_ids + [eos]
            if len(prompt_ids) + len(answer_ids) > max_length:
                answer_ids = answer_ids[: max(0, max_length - len(prompt_ids))]
            pair.append(Example(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
        out.append(tuple(pair))
    return out


def pad_batch(examples: list[Example], pad_id: int, length: int | None = None):
    """Right-padded (input_ids, labels, attention mask) arrays."""
    width = length or max(len(e.input_ids) for e in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int32)
    labels = np.full((len(examples), width), IGNORE, dtype=np.int32)
    mask = np.zeros((len(examples), width), dtype=np.int32)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = e.input_ids
        labels[i, : len(e.labels)] = e.labels
        mask[i, : len(e.input_ids)] = 1
    return mx.array(ids), mx.array(labels), mx.array(mask)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded shuffle per epoch (the same on every resume)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order
