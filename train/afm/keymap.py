"""Key mapping from the toolkit's `base-model.pt` state dict to AFMTextV7ForCausalLM parameters.

The table is documented in docs/afm.md. Toolkit keys are normalised first: adapter-wrapped layers
store their base weight under an extra `.wrapped` (or `._wrapped`) segment, which is dropped.
Adapter tensors (`.adapters.`) and KV-quantizer ranges (`kv_quantizer`) are skipped on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from train.afm.configuration import AFMTextV7Config

FUSED_QKV = "<fused qkv>"  # marker target: split into q_proj / k_proj / v_proj

TOP_LEVEL = {
    "embedding.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}
TIED_OUTPUT = "output_transform.weight"  # the output head; tied to embedding.weight

_COMMON = {
    "attention.norm.weight": "input_layernorm.weight",
    "attention.output_transform.weight": "self_attn.o_proj.weight",
    "feed_forward.norm.weight": "post_attention_layernorm.weight",
    "feed_forward.hidden_transform.linear_0.weight": "mlp.gate_proj.weight",
    "feed_forward.hidden_transform.linear_1.weight": "mlp.up_proj.weight",
    "feed_forward.output_transform.weight": "mlp.down_proj.weight",
}
SEGMENT_SUFFIXES = {
    0: {  # regular layers
        **_COMMON,
        "attention.qkv_transform.fused_linear.weight": FUSED_QKV,
        "attention.qkv_transform.weight": FUSED_QKV,
        "attention.qk_norm.query_norm.weight": "self_attn.q_norm.weight",
        "attention.qk_norm.key_norm.weight": "self_attn.k_norm.weight",
    },
    1: {  # KV-reuse layers
        **_COMMON,
        "attention.q_transform.weight": "self_attn.q_proj.weight",
        "attention.q_norm.query_norm.weight": "self_attn.q_norm.weight",
    },
}
_LAYER_KEY = re.compile(r"^layers\.segment_(?P<segment>\d+)\.layer_(?P<index>\d+)\.(?P<suffix>.+)$")
_WRAPPED = re.compile(r"\._?wrapped(?=\.)")


@dataclass
class MappedCheckpoint:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # model parameter name -> tensor
    skipped_adapter: list[str] = field(default_factory=list)
    skipped_quantizer: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # duplicates, bad shapes, untied head


def normalise_key(key: str) -> str:
    return _WRAPPED.sub("", key)


def skip_reason(key: str) -> str | None:
    if ".adapters." in key or key.startswith("adapters."):
        return "adapter"
    if "kv_quantizer" in key:
        return "quantizer"
    return None


def target_for(key: str, config: AFMTextV7Config) -> str | None:
    """Model parameter name (or FUSED_QKV with its layer prefix) for a normalised toolkit key."""
    if key in TOP_LEVEL:
        return TOP_LEVEL[key]
    match = _LAYER_KEY.match(key)
    if not match:
        return None
    segment, index = int(match["segment"]), int(match["index"])
    suffix = SEGMENT_SUFFIXES.get(segment, {}).get(match["suffix"])
    segment_size = config.num_regular_layers if segment == 0 else config.num_kv_reuse_layers
    if suffix is None or index >= segment_size:
        return None
    layer = index if segment == 0 else config.num_regular_layers + index
    return f"model.layers.{layer}.{suffix}"


def split_qkv(weight: torch.Tensor, config: AFMTextV7Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    if weight.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"fused qkv has {weight.shape[0]} rows, expected {q_rows} + 2 x {kv_rows}")
    return weight[:q_rows], weight[q_rows : q_rows + kv_rows], weight[q_rows + kv_rows :]


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.shape == b.shape


def map_checkpoint(state_dict: dict[str, torch.Tensor], config: AFMTextV7Config) -> MappedCheckpoint:
    out = MappedCheckpoint()
    sources: dict[str, str] = {}
    for key, tensor in state_dict.items():
        reason = skip_reason(key)
        if reason == "adapter":
            out.skipped_adapter.append(key)
            continue
        if reason == "quantizer":
            out.skipped_quantizer.append(key)
            continue
        name = normalise_key(key)
        if name == TIED_OUTPUT:
            continue  # checked against the embedding below
        target = target_for(name, config)
        if target is None:
            out.unmatched.append(key)
            continue
        if target.endswith(FUSED_QKV):
            prefix = target[: -len(FUSED_QKV)] + "self_attn."
            try:
                pieces = split_qkv(tensor, config)
            except ValueError as err:
                out.problems.append(f"{key}: {err}")
                continue
            targets = [prefix + f"{p}_proj.weight" for p in "qkv"]
        else:
            pieces, targets = (tensor,), [target]
        for piece, target_name in zip(pieces, targets):
            if target_name in sources:
                out.problems.append(f"{key} and {sources[target_name]} both map to {target_name}")
            sources[target_name] = key
            out.tensors[target_name] = piece
    head = next((t for k, t in state_dict.items() if normalise_key(k) == TIED_OUTPUT), None)
    embedding = out.tensors.get("model.embed_tokens.weight")
    if head is not None and embedding is not None and not _shares_memory(head, embedding):
        if head.shape != embedding.shape or not torch.equal(head, embedding):
            out.problems.append(f"{TIED_OUTPUT} differs from embedding.weight (the model ties them)")
    return out


_QUANTIZER_KEY = re.compile(
    r"^layers\.segment_0\.layer_(?P<index>\d+)\.attention\.kv_quantizer\.(?P<kind>key|value)_quantizer\.range$")


def kv_scale(value_range: torch.Tensor) -> float:
    """The symmetric int8 step for a quantizer range [lo, hi]: max(|lo|, |hi|) / 127, so the range's
    edge maps to the largest code. (Our reading of the toolkit's range tensors; docs/mlx.md.)"""
    return float(value_range.abs().max()) / 127.0


def kv_quant_scales(state_dict, config: AFMTextV7Config) -> dict[int, tuple[float, float]]:
    """Regular layer -> (key step, value step) from the checkpoint's `kv_quantizer` ranges; the
    KV-reuse layers read layer kv_source_layer's already quantised keys/values."""
    found: dict[int, dict[str, float]] = {}
    for key, tensor in state_dict.items():
        match = _QUANTIZER_KEY.match(normalise_key(key))
        if match:
            found.setdefault(int(match["index"]), {})[match["kind"]] = kv_scale(tensor)
    missing = [i for i in range(config.num_regular_layers)
               if set(found.get(i, {})) != {"key", "value"}]
    if missing:
        raise ValueError(f"kv_quant device needs kv_quantizer ranges for every regular layer; "
                         f"the checkpoint lacks them for layers {missing[:10]}")
    return {i: (found[i]["key"], found[i]["value"]) for i in range(config.num_regular_layers)}


def _layer_indices(keys: list[str], segment: int) -> set[int]:
    found = set()
    for key in keys:
        match = _LAYER_KEY.match(key)
        if match and int(match["segment"]) == segment:
            found.add(int(match["index"]))
    return found


def config_from_checkpoint(state_dict: dict[str, torch.Tensor], **overrides) -> AFMTextV7Config:
    """Read the geometry off the tensor shapes (layer counts, widths, heads); rope/eps keep their defaults."""
    keys = [normalise_key(k) for k in state_dict if skip_reason(k) is None]
    tensors = {normalise_key(k): t for k, t in state_dict.items() if skip_reason(k) is None}
    regular, reuse = _layer_indices(keys, 0), _layer_indices(keys, 1)
    first = "layers.segment_0.layer_0."
    needed = ["embedding.weight", first + "attention.qk_norm.query_norm.weight",
              first + "attention.output_transform.weight", first + "feed_forward.hidden_transform.linear_0.weight"]
    qkv_key = next((first + s for s in ("attention.qkv_transform.fused_linear.weight",
                                        "attention.qkv_transform.weight") if first + s in tensors), None)
    absent = [k for k in needed if k not in tensors] + ([] if qkv_key else [first + "attention.qkv_transform…"])
    if absent:
        raise ValueError(f"cannot read the model geometry: checkpoint lacks {absent}")
    vocab_size, hidden_size = tensors["embedding.weight"].shape
    head_dim = tensors[first + "attention.qk_norm.query_norm.weight"].shape[0]
    query_width = tensors[first + "attention.output_transform.weight"].shape[1]
    heads = query_width // head_dim
    kv_heads = (tensors[qkv_key].shape[0] - query_width) // (2 * head_dim)
    geometry = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, head_dim=head_dim,
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=tensors[first + "feed_forward.hidden_transform.linear_0.weight"].shape[0],
        num_hidden_layers=len(regular) + len(reuse), num_kv_reuse_layers=len(reuse),
    )
    geometry.update(overrides)
    return AFMTextV7Config(**geometry)
