"""LoRA for MLX models, saved and loaded in PEFT's own layout.

`apply_lora` wraps the target linears (Apple's set by default) with a LoRA whose math is PEFT's:
y = W x + (alpha / r) * B A dropout(x), A initialised like PEFT (uniform +-1/sqrt(in)), B zero.
afm7 computes q, k and v with one fused `qkv_proj`; it gets one LoRA per part, so the adapter
has exactly the torch port's q_proj/k_proj/v_proj LoRAs (Apple's target set), never a fused one.
`save_peft_adapter` writes adapter_config.json + adapter_model.safetensors with PEFT's tensor
names (A as r x in, B as out x r), so export, eval and torch stages read an MLX run unchanged;
`load_peft_adapter` reads a PEFT folder from either backend.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from train.config import ConfigError
from train.mlx.models import MLXBase, afm7_to_torch_name

ADAPTER_WEIGHTS = "adapter_model.safetensors"
QKV_PARTS = ("q", "k", "v")


def _init_a(in_dims: int, r: int) -> mx.array:
    bound = 1.0 / math.sqrt(in_dims)    # PEFT: kaiming_uniform(a=sqrt(5)) on an r x in matrix
    return mx.random.uniform(low=-bound, high=bound, shape=(in_dims, r))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float):
        super().__init__()
        out_dims, in_dims = base.weight.shape
        self.base = base
        self.dropout = nn.Dropout(p=dropout)
        self.scale = alpha / r
        self.lora_a = _init_a(in_dims, r)
        self.lora_b = mx.zeros((r, out_dims))

    def __call__(self, x):
        y = self.base(x)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(y.dtype)


class FusedQKVLoRA(nn.Module):
    """A LoRA per targeted part (q, k, v) of afm7's fused projection, which returns a tuple."""

    def __init__(self, base: nn.Module, parts: list[str], r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.parts = list(parts)
        self.dropout = nn.Dropout(p=dropout)
        self.scale = alpha / r
        in_dims = base.weight.shape[1]
        widths = dict(zip(QKV_PARTS, base.output_dims))
        for p in self.parts:
            setattr(self, f"lora_a_{p}", _init_a(in_dims, r))
            setattr(self, f"lora_b_{p}", mx.zeros((r, widths[p])))

    def __call__(self, x):
        outs = list(self.base(x))
        dx = self.dropout(x)
        for i, p in enumerate(QKV_PARTS):
            if p in self.parts:
                a, b = getattr(self, f"lora_a_{p}"), getattr(self, f"lora_b_{p}")
                z = (dx @ a.astype(x.dtype)) @ b.astype(x.dtype)
                outs[i] = outs[i] + (self.scale * z).astype(outs[i].dtype)
        return tuple(outs)


def lora_pairs(module: nn.Module) -> dict[str | None, tuple[str, str]]:
    """part (None for a plain linear) -> (A attribute, B attribute)."""
    if isinstance(module, FusedQKVLoRA):
        return {p: (f"lora_a_{p}", f"lora_b_{p}") for p in module.parts}
    return {None: ("lora_a", "lora_b")}


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def apply_lora(base: MLXBase, targets: list[str], r: int, alpha: float,
               dropout: float) -> dict[str, tuple[nn.Module, str | None]]:
    """Wrap every targeted linear; freeze all but the LoRA matrices. Returns PEFT module name ->
    (LoRA module, part), the table saving and loading go through."""
    model, targets = base.model, set(targets)
    found: dict[str, tuple[nn.Module, str | None]] = {}
    replacements = []
    for path, module in model.named_modules():
        leaf = _leaf(path)
        if base.kind == "afm" and leaf == "qkv_proj":
            parts = [p for p in QKV_PARTS if f"{p}_proj" in targets]
            if parts:
                lora = FusedQKVLoRA(module, parts, r, alpha, dropout)
                replacements.append((path, lora))
                stem = afm7_to_torch_name(path, base.num_regular_layers).rsplit(".", 1)[0]
                for p in parts:
                    found[f"{stem}.{p}_proj"] = (lora, p)
            continue
        peft_leaf = "o_proj" if base.kind == "afm" and leaf == "out_proj" else leaf
        if peft_leaf in targets and isinstance(module, nn.Linear):
            lora = LoRALinear(module, r, alpha, dropout)
            replacements.append((path, lora))
            name = afm7_to_torch_name(path, base.num_regular_layers) if base.kind == "afm" else path
            found[name] = (lora, None)
    if not found:
        raise ConfigError(f"lora_target_modules {sorted(targets)} match no linear layer of "
                          f"{base.base_info.get('name_or_path')}")
    model.freeze()
    model.update_modules(tree_unflatten(replacements))
    for _, lora in replacements:
        lora.unfreeze(recurse=False)         # the LoRA matrices only, never the wrapped base
    return found


def lora_state(loras: dict) -> dict[str, np.ndarray]:
    """PEFT tensor names -> float32 arrays (A: r x in, B: out x r)."""
    out = {}
    for name, (module, part) in loras.items():
        a_attr, b_attr = lora_pairs(module)[part]
        prefix = f"base_model.model.{name}"
        for attr, key in ((a_attr, "lora_A"), (b_attr, "lora_B")):
            value = getattr(module, attr).astype(mx.float32)
            out[f"{prefix}.{key}.weight"] = np.array(value).T.copy()
    return out


def set_lora_state(loras: dict, tensors: dict[str, np.ndarray], where: str) -> None:
    expected = set()
    for name, (module, part) in loras.items():
        a_attr, b_attr = lora_pairs(module)[part]
        prefix = f"base_model.model.{name}"
        for attr, key in ((a_attr, f"{prefix}.lora_A.weight"), (b_attr, f"{prefix}.lora_B.weight")):
            expected.add(key)
            if key not in tensors:
                raise ConfigError(f"{where}: adapter lacks {key}")
            value = np.asarray(tensors[key]).T
            current = getattr(module, attr)
            if tuple(value.shape) != tuple(current.shape):
                raise ConfigError(f"{where}: {key} has shape {tuple(value.T.shape)}, the model "
                                  f"needs {tuple(current.shape[::-1])}")
            setattr(module, attr, mx.array(value, current.dtype))
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ConfigError(f"{where}: adapter tensors this model has no place for: {extra[:5]}")


def save_peft_adapter(loras: dict, out: Path, *, r: int, alpha: float, dropout: float,
                      targets: list[str], base_name: str) -> Path:
    """adapter_config.json + adapter_model.safetensors, named as PEFT's save_pretrained names them."""
    from peft import LoraConfig
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (ADAPTER_WEIGHTS + ".tmp")
    save_file(lora_state(loras), str(tmp), metadata={"format": "pt"})
    tmp.replace(out / ADAPTER_WEIGHTS)
    LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
               bias="none", task_type="CAUSAL_LM",
               base_model_name_or_path=base_name).save_pretrained(str(out))
    return out


def read_peft_adapter(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config, tensors) of a PEFT LoRA folder, refusing what MLX cannot reproduce."""
    from safetensors.numpy import load_file

    config_path = folder / "adapter_config.json"
    if not config_path.exists() or not (folder / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (adapter_config.json and "
                                f"{ADAPTER_WEIGHTS} are needed)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    unsupported = [k for k, bad in (("peft_type", config.get("peft_type") != "LORA"),
                                    ("use_dora", bool(config.get("use_dora"))),
                                    ("use_rslora", bool(config.get("use_rslora"))),
                                    ("bias", config.get("bias", "none") != "none"),
                                    ("rank_pattern", bool(config.get("rank_pattern"))),
                                    ("alpha_pattern", bool(config.get("alpha_pattern")))) if bad]
    if unsupported:
        raise ConfigError(f"{config_path}: backend mlx trains plain LoRA adapters; this one sets "
                          f"{', '.join(unsupported)}. Use backend: torch for it")
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    return config, tensors


def load_peft_adapter(base: MLXBase, folder: str | Path) -> tuple[dict, dict]:
    """Wrap the base with the folder's LoRA shape and weights; (loras, adapter_config)."""
    folder = Path(folder)
    config, tensors = read_peft_adapter(folder)
    targets = config["target_modules"]
    targets = sorted(targets) if isinstance(targets, (list, set)) else [targets]
    loras = apply_lora(base, targets, int(config["r"]), float(config["lora_alpha"]),
                       float(config.get("lora_dropout") or 0.0))
    set_lora_state(loras, tensors, str(folder / ADAPTER_WEIGHTS))
    return loras, config
