"""What an export will write, checked before a byte is written.

From a training run folder (run.json, adapter_config.json, adapter_model.safetensors): the
layout (Apple's afm-text-v7, or a stand-in layout when explicitly allowed), the base signature,
the LoRA rank and scale, and for every blob slot the tensor it comes from (or zeros for a
module training left out). Any mismatch of name, target, shape or dtype is refused here.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from export.layouts import (AFM_SIGNATURE_26_0, AFM_TEXT_V7, LORA_KEY_RE, MODULE_ORDER, Layout,
                            afm_text_v7, layout_for_architecture, module_layer,
                            stand_in_from_adapter, stand_in_signature)

WEIGHTS_FILE = "adapter_weights.bin"
METADATA_FILE = "metadata.json"
ADAPTER_FILE = "adapter_model.safetensors"


class ExportError(ValueError):
    """An export was refused; the message says which file, key or tensor and why."""


STAND_IN_REFUSAL = (
    "{run}: the adapter was trained on {arch!r}, a stand-in base, not Apple's on-device model "
    "(AFMTextV7ForCausalLM). A .fmadapter is a set of low-rank deltas for the exact weights of "
    "the system model: on a different network they have other shapes, other layers and other "
    "meanings, and the device refuses or misuses them (no matching base signature). To ship, "
    "train on Apple's base checkpoint (the toolkit's assets/base-model.pt) with "
    "configs/afm-sft.yaml and export that run. To test the export pipeline with this adapter "
    "anyway, pass --allow-stand-in: it writes a format-conformance package marked "
    "creatorDefined.standIn = true that must never be shipped.")


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise ExportError(f"{path}: missing ({what})")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return obj


def lora_scale(cfg: dict, where: Path) -> tuple[int, float, float]:
    """(rank, alpha, effective scale) from adapter_config.json; per-module patterns refused."""
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise ExportError(f"{where}: key {key!r} missing or not a number")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ExportError(f"{where}: {key} gives modules their own rank/alpha; the package "
                              "has one rank and one scale, so export supports only uniform LoRA")
    if cfg.get("use_dora"):
        raise ExportError(f"{where}: use_dora is set; DoRA magnitude vectors have no place in "
                          "a .fmadapter (plain LoRA only)")
    r, alpha = int(cfg["r"]), cfg["lora_alpha"]
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, alpha, scale


def _targeted(module: str, cfg: dict) -> bool:
    """Would PEFT have put a LoRA on this module, given adapter_config.json? (PEFT's rules.)"""
    targets = cfg.get("target_modules")
    short = module.rsplit(".", 1)[1]
    if targets == "all-linear":
        hit = short in MODULE_ORDER
    elif isinstance(targets, str):
        hit = re.fullmatch(targets, module) is not None
    elif isinstance(targets, (list, tuple)):
        hit = any(module == t or module.endswith("." + t) for t in targets)
    else:
        hit = True
    layers = cfg.get("layers_to_transform")
    if hit and layers is not None:
        layers = [layers] if isinstance(layers, int) else list(layers)
        hit = module_layer(module) in layers
    return hit


def _open_adapter(path: Path):
    """A lazy safetensors handle; numpy where possible, torch for bf16 (numpy has no bf16)."""
    from safetensors import safe_open
    if not path.exists():
        legacy = path.with_name("adapter_model.bin")
        hint = (" (found adapter_model.bin: re-save the adapter with safe_serialization=True)"
                if legacy.exists() else "")
        raise ExportError(f"{path}: missing{hint}")
    handle = safe_open(str(path), framework="numpy")
    dtypes = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
    if "BF16" in dtypes.values():
        handle = safe_open(str(path), framework="pt")
    return handle, dtypes


def as_numpy(handle, key: str) -> np.ndarray:
    t = handle.get_tensor(key)
    if not isinstance(t, np.ndarray):  # torch tensor (bf16 file)
        t = t.float().numpy()
    return t


def plan(run_dir: Path, *, allow_stand_in: bool) -> dict:
    """Everything needed to write, checked: layout, signature, per-slot source key or zeros."""
    run = _read_json(run_dir / "run.json", "the run record written by training")
    cfg_path = run_dir / "adapter_config.json"
    cfg = _read_json(cfg_path, "the PEFT adapter config")
    base = run.get("base_model")
    if not isinstance(base, dict):
        raise ExportError(f"{run_dir / 'run.json'}: key 'base_model' missing or not an object")
    rank, alpha, scale = lora_scale(cfg, cfg_path)
    handle, dtypes = _open_adapter(run_dir / ADAPTER_FILE)
    shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    for k, dt in dtypes.items():
        if dt not in ("F16", "BF16", "F32", "F64"):
            raise ExportError(f"{run_dir / ADAPTER_FILE}: tensor {k!r} has dtype {dt}; "
                              "LoRA weights must be floating point")

    arch = base.get("architecture")
    layout_name = layout_for_architecture(arch)
    permute = False
    if layout_name == AFM_TEXT_V7:
        layout: Layout = afm_text_v7()
        if rank != layout.rank:
            raise ExportError(f"{cfg_path}: r = {rank}; the afm-text-v7 layout (and the device) "
                              f"uses rank {layout.rank}. Retrain with lora_r: {layout.rank}")
        signature = base.get("base_signature")
        if signature != AFM_SIGNATURE_26_0:
            raise ExportError(
                f"{run_dir / 'run.json'}: base_model.base_signature is {signature!r}; the "
                f"afm-text-v7 layout is the 26.0 system model, signature {AFM_SIGNATURE_26_0}. "
                "Training records it from the toolkit's base checkpoint")
        rope = base.get("rope_layout")
        if rope not in ("interleaved", "half-split"):
            raise ExportError(
                f"{run_dir / 'run.json'}: base_model.rope_layout is {rope!r}; export needs the "
                "rotary layout the training model used, 'interleaved' or 'half-split', recorded "
                "by training (it is never guessed: a wrong guess silently scrambles Q and K)")
        permute = rope == "interleaved"
    else:
        if not allow_stand_in:
            raise ExportError(STAND_IN_REFUSAL.format(run=run_dir / "run.json", arch=arch))
        identity = base.get("identity")
        if not isinstance(identity, str) or not identity:
            raise ExportError(f"{run_dir / 'run.json'}: base_model.identity is missing; the "
                              "stand-in signature is derived from it")
        layout = stand_in_from_adapter(shapes, rank)
        signature = stand_in_signature(identity)

    if not layout.slots:
        raise ExportError(f"{run_dir / ADAPTER_FILE}: no LoRA tensors named like "
                          "base_model.model.model.layers.N.(self_attn|mlp).NAME.lora_A.weight")
    sources: list[str | None] = []
    problems: list[str] = []
    slot_keys = {s.key for s in layout.slots}
    for s in layout.slots:
        if s.key in shapes:
            if shapes[s.key] != s.shape:
                problems.append(f"tensor {s.key!r} has shape {list(shapes[s.key])}, the "
                                f"{layout.name} layout needs {list(s.shape)} (rank {layout.rank})")
            sources.append(s.key)
            continue
        partner = s.key.replace(f"lora_{s.matrix}.", "lora_B." if s.matrix == "A" else "lora_A.")
        if partner in shapes or (layout.name != AFM_TEXT_V7) or _targeted(s.module, cfg):
            problems.append(f"missing LoRA tensor {s.key!r}")
        sources.append(None)  # an untrained module: zeros, which change nothing
    for key in sorted(set(shapes) - slot_keys):
        m = LORA_KEY_RE.match(key)
        why = "not a LoRA module of this layout" if m else "not a LoRA A/B weight"
        problems.append(f"extra tensor {key!r}: {why} ({layout.name})")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExportError(f"{run_dir / ADAPTER_FILE}: does not fit the {layout.name} layout:"
                          f"\n  {shown}{more}")
    return {"run": run, "cfg": cfg, "layout": layout, "signature": signature, "rank": rank,
            "alpha": alpha, "scale": scale, "permute": permute, "sources": sources,
            "handle": handle, "stand_in": layout.name != AFM_TEXT_V7}
