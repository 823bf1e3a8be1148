"""Comparing greedy outputs that were computed two ways, without hinging on float ties.

Batched and one-by-one generation, the torch and MLX engines, or an adapter before and after its
fp16 export compute the same logits up to their last bits (or up to the fp16 rounding). Where
the top two tokens' logits are that close, greedy decoding may take either, and which one it
takes depends on the CPU's kernels — and the stand-in model itself is trained on the machine that
runs the suite. So two greedy outputs count as the same when they are identical, or when they
first part at a step where the reference model's top two logits are the two tokens taken and
lie within `tol` of each other (a near-tie; `tol` sits well above the expected numeric drift
and far below an ordinary logit gap). Any other difference is a real one and fails.
"""
from __future__ import annotations

import torch


def parting(a: list[int], b: list[int]) -> int | None:
    """The first step where two token lists differ (a shorter list has stopped there)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def tie_problem(model, prompt_ids: list[int], a: list[int], b: list[int], *, eos_id: int,
                tol: float) -> str | None:
    """None when `a` and `b` (generated ids after `prompt_ids`) agree up to a near-tie.

    A list that ended before the other took EOS (or hit the same length cap) at that step.
    """
    k = parting(a, b)
    if k is None:
        return None
    taken = {a[k] if k < len(a) else eos_id, b[k] if k < len(b) else eos_id}
    with torch.no_grad():
        ids = torch.tensor([list(prompt_ids) + list(a[:k])])
        logits = model(input_ids=ids).logits[0, -1].float()
    top = torch.topk(logits, 2)
    gap = float(top.values[0] - top.values[1])
    if set(top.indices.tolist()) == taken and gap < tol:
        return None
    return (f"greedy outputs part at step {k}: tokens {sorted(taken)}, reference top two "
            f"{top.indices.tolist()} with a logit gap {gap:.3g} (a near-tie is < {tol})")


def assert_same_greedy_texts(model, tokenizer, prompts: list[str], texts_a: list[str],
                             texts_b: list[str], *, tol: float = 1e-3) -> int:
    """Texts decoded from greedy runs agree case by case up to near-ties; returns how many parted.

    The texts are re-encoded to find where they part; `model` is the reference (run A).
    """
    assert len(texts_a) == len(texts_b) == len(prompts)
    parted, problems = 0, []
    for prompt, ta, tb in zip(prompts, texts_a, texts_b):
        if ta == tb:
            continue
        parted += 1
        enc = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
        problem = tie_problem(model, enc(prompt), enc(ta), enc(tb),
                              eos_id=tokenizer.eos_token_id, tol=tol)
        if problem:
            problems.append(f"{prompt[-60:]!r}: {problem}")
    assert not problems, "\n".join(problems)
    return parted
