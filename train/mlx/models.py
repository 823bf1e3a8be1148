"""Bases as MLX models: the stand-in (any mlx-lm architecture, e.g. llama/qwen2) and Apple's AFM
text v7 (mlx-lm's independent `afm7` port, fed through this project's own key map).

Two things mlx-lm gets wrong for this job are fixed here rather than worked around by users:
- rotary theta: afm7 defaults to 50000 and mlx-lm's llama ignores transformers 5's nested
  `rope_parameters`; the theta always comes from the checkpoint's config (AFM: 500000);
- afm7 fake-quantises K/V to int8 with `round` and no straight-through gradient (a K/V LoRA
  gets exactly zero gradient) and with steps of 1.0 unless set; `kv_quant` picks "off" (full
  precision) or "device" (the checkpoint's steps, straight-through gradient), as the torch port.
KV-reuse layers also get per-row rotary offsets, so left-padded batches decode correctly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import afm7
from mlx_lm.models.base import scaled_dot_product_attention

from train.config import ConfigError

MLX_DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16, "fp16": mx.float16}


@dataclass
class MLXBase:
    model: nn.Module
    tokenizer: object
    base_info: dict
    kind: str                      # "afm" (afm7) or "hf" (an mlx-lm port of an HF architecture)
    num_regular_layers: int = 0    # afm: layers with their own K/V (the rest reuse them)


def fake_int8_ste(x: mx.array, step: mx.array) -> mx.array:
    """int8 grid of `step` in float32 (codes -128..127); identity gradient (straight-through)."""
    q = (mx.clip(mx.round(x.astype(mx.float32) / step), -128, 127) * step).astype(x.dtype)
    return x + mx.stop_gradient(q - x)


class AFMAttention(afm7.Attention):
    """afm7's attention with a selectable K/V quantiser (kv_quant "off" | "device")."""
    kv_quant = "off"

    def __call__(self, x, mask=None, cache=None):
        B, L, _ = x.shape
        queries, keys, values = self.qkv_proj(x)
        queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache.offset
        queries = self.q_norm(self.rope(queries, offset=offset))
        keys = self.k_norm(self.rope(keys, offset=offset))
        if self.kv_quant == "device":
            keys = fake_int8_ste(keys, self.quant_key_scale)
            values = fake_int8_ste(values, self.quant_value_scale)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        output = scaled_dot_product_attention(queries, keys, values, cache=cache,
                                              scale=self.scale, mask=mask)
        return self.out_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


class AFMReuseAttention(afm7.KVReuseAttention):
    """afm7's KV-reuse attention with the rotary offset taken per row from the source layer's
    cache (afm7 uses S - L, which is wrong for left-padded rows)."""
    source_cache = None

    def __call__(self, x, keys, values, mask=None):
        B, L, _ = x.shape
        queries = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        offset = keys.shape[2] - L
        if self.source_cache is not None and not isinstance(self.source_cache.offset, int):
            offset = self.source_cache.offset - L        # per row, after this step's update
        queries = self.q_norm(self.rope(queries, offset=offset))
        output = scaled_dot_product_attention(queries, keys, values, cache=None,
                                              scale=self.scale, mask=mask)
        return self.out_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


class AFMModel(afm7.Model):
    """afm7 whose reuse layers see the source layer's cache (for per-row rotary offsets)."""

    def __call__(self, inputs, cache=None):
        source = None if cache is None else cache[len(self.model.layers) - 1]
        for layer in self.model.kv_reuse_layers:
            layer.self_attn.source_cache = source
        return super().__call__(inputs, cache)


def set_kv_quant(model: nn.Module, mode: str) -> None:
    for layer in getattr(getattr(model, "model", model), "layers", []):
        if isinstance(getattr(layer, "self_attn", None), AFMAttention):
            layer.self_attn.kv_quant = mode


# --- Apple's base -----------------------------------------------------------------------------

def torch_to_afm7_name(name: str, num_regular: int) -> str:
    """A torch-port parameter name (train.afm) -> the afm7 parameter it becomes (q/k/v handled by
    the caller, which fuses them back into qkv_proj)."""
    if name == "model.embed_tokens.weight":
        return "model.embedding.weight"
    if name == "model.norm.weight":
        return "model.output_norm.weight"
    parts = name.split(".")              # model.layers.{i}.<rest>
    index = int(parts[2])
    rest = ".".join(parts[3:]).replace("self_attn.o_proj", "self_attn.out_proj")
    if index < num_regular:
        return f"model.layers.{index}.{rest}"
    return f"model.kv_reuse_layers.{index - num_regular}.{rest}"


def afm7_to_torch_name(path: str, num_regular: int) -> str:
    """An afm7 module path -> the torch port's (= PEFT's) module path; inverse of the above."""
    parts = path.split(".")
    if parts[1] == "kv_reuse_layers":
        parts[1], parts[2] = "layers", str(int(parts[2]) + num_regular)
    return ".".join(parts).replace("self_attn.out_proj", "self_attn.o_proj")


def load_afm_mlx(assets_dir: str | Path, precision: str, kv_quant: str) -> MLXBase:
    from train.afm.loader import base_info_for, check_assets

    checked = check_assets(assets_dir)        # the project's key map, with every key checked
    config, regular = checked.config, checked.config.num_regular_layers
    if config.hidden_size // config.num_attention_heads != config.head_dim:
        raise ConfigError(f"{assets_dir}: head_dim {config.head_dim} != hidden/heads; mlx-lm's "
                          "afm7 derives head_dim from the width and cannot load this geometry")
    scale_factor = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * scale_factor) != config.intermediate_size:
        raise ConfigError(f"{assets_dir}: FFN width {config.intermediate_size} is not expressible "
                          "as afm7's hidden_dim_scale_factor")
    args = afm7.ModelArgs(
        model_type="afm7", vocab_size=config.vocab_size, hidden_dim=config.hidden_size,
        num_layers=config.num_hidden_layers, num_kv_reuse_layers=config.num_kv_reuse_layers,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads,
        hidden_dim_scale_factor=scale_factor, rope_theta=float(config.rope_theta),
        rms_norm_eps=config.rms_norm_eps)
    model = AFMModel(args)
    for layer in model.model.layers:
        layer.self_attn.__class__ = AFMAttention
    for layer in model.model.kv_reuse_layers:
        layer.self_attn.__class__ = AFMReuseAttention
    dtype = MLX_DTYPES[precision]
    tensors = checked.mapped.tensors
    weights = {}
    for name, tensor in tensors.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name and int(name.split(".")[2]) < regular:
            stem = name.rsplit(".q_proj.", 1)[0]
            fused = np.concatenate([tensors[f"{stem}.{p}_proj.weight"].float().numpy()
                                    for p in "qkv"], axis=0)
            weights[torch_to_afm7_name(f"{stem}.qkv_proj.weight", regular)] = mx.array(fused, dtype)
            continue
        weights[torch_to_afm7_name(name, regular)] = mx.array(tensor.float().numpy(), dtype)
    if checked.kv_scales:
        for i, (key_step, value_step) in checked.kv_scales.items():
            weights[f"model.layers.{i}.self_attn.quant_key_scale"] = mx.array(key_step)
            weights[f"model.layers.{i}.self_attn.quant_value_scale"] = mx.array(value_step)
    elif kv_quant == "device":
        raise ConfigError(checked.kv_scales_problem or "kv_quant device: no kv_quantizer ranges")
    model.load_weights(list(weights.items()), strict=checked.kv_scales is not None)
    mx.eval(model.parameters())
    set_kv_quant(model, kv_quant)
    return MLXBase(model, checked.tokenizer, base_info_for(checked.folder, config), "afm", regular)


# --- Hugging Face bases (the stand-in) --------------------------------------------------------

def _rope_overrides(config: dict) -> dict:
    """transformers 5 nests rotary settings under `rope_parameters`; mlx-lm reads `rope_theta`."""
    rope = config.get("rope_parameters") or {}
    out = {}
    if "rope_theta" not in config and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") not in ("default", None) and "rope_scaling" not in config:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def load_hf_mlx(name_or_path: str, precision: str, alias: str | None) -> MLXBase:
    from mlx_lm.utils import load_model
    from transformers import AutoTokenizer

    from train.models import hf_base_info

    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path}: backend mlx loads a local model folder "
                                "(config.json + *.safetensors); download hub models first")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    try:
        model, _ = load_model(path, model_config=_rope_overrides(config))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{name_or_path}: mlx-lm cannot load this model ({err})") from None
    if precision != "fp32":
        model.set_dtype(MLX_DTYPES[precision])
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token     # as train.models.load_base
    arch = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    return MLXBase(model, tokenizer, hf_base_info(name_or_path, arch, None, alias), "hf")


def load_mlx_base(name_or_path: str, precision: str = "fp32", kv_quant: str = "off") -> MLXBase:
    """Any base train.models.load_base takes (standin alias, local folder, toolkit assets)."""
    from train.models import check_kv_quant_base, recorded_alias, resolve_base

    if precision not in MLX_DTYPES:
        raise ConfigError(f"precision {precision!r}: backend mlx takes {', '.join(MLX_DTYPES)}")
    alias = recorded_alias(name_or_path)
    resolved = resolve_base(name_or_path)
    from train.afm.loader import is_afm_assets
    if Path(resolved).is_dir() and is_afm_assets(resolved):
        return load_afm_mlx(resolved, precision, kv_quant)
    check_kv_quant_base(kv_quant, name_or_path)
    return load_hf_mlx(resolved, precision, alias)
