"""Rotary position embedding for the AFM text model, in both pair layouts.

Apple's base checkpoint was trained with *interleaved* (GPT-J style) rotary pairs: dimensions
(0, 1), (2, 3), ... of each head rotate together. The on-device runtime computes *half-split*
(NeoX style) pairs: dimensions (i, i + head_dim/2). Pair i has the same frequency in both, so the
two layouts are equivalent once the rows of each head's projection are reordered evens-then-odds
(`permute_rope_rows`). The exporter applies that reorder to the LoRA B matrices of Q and K;
`export/` may import `permute_rope_rows` from here so both sides share one definition.
"""

from __future__ import annotations

import torch

ROPE_LAYOUTS = ("interleaved", "half-split")


def inverse_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """theta^(-2i/d) for pair i = 0..d/2-1, in float32 (cheap enough to recompute every forward)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape (batch, seq, head_dim/2) — one angle per rotary pair, whatever the layout."""
    inv_freq = inverse_frequencies(head_dim, theta, device=position_ids.device)
    angles = position_ids[..., None].float() * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate x of shape (batch, heads, seq, head_dim) with cos/sin of shape (batch, seq, head_dim/2)."""
    cos = cos[:, None, :, :]
    sin = sin[:, None, :, :]
    if layout == "interleaved":
        first, second = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((first * cos - second * sin, first * sin + second * cos), dim=-1)
        return rotated.flatten(-2)
    if layout == "half-split":
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]
        return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
    raise ValueError(f"unknown rope_layout {layout!r}; valid choices: {', '.join(ROPE_LAYOUTS)}")


def permute_rope_rows(tensor: torch.Tensor, head_dim: int = 128) -> torch.Tensor:
    """Reorder dim 0 of `tensor` within each `head_dim` block: even rows first, then odd rows.

    Turns an interleaved-RoPE projection (a full Q/K weight, a LoRA B matrix of Q or K, or a
    per-head QK-norm weight) into its half-split equivalent. Returns a new tensor.
    """
    rows = tensor.shape[0]
    if head_dim % 2 or rows % head_dim:
        raise ValueError(f"cannot permute {rows} rows in blocks of head_dim={head_dim}")
    within_head = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    heads = torch.arange(rows // head_dim)[:, None] * head_dim
    order = (heads + within_head[None, :]).reshape(-1).to(tensor.device)
    return tensor.index_select(0, order)
