"""Load Apple's toolkit assets folder (`base-model.pt` + `tokenizer.model`) as a transformers model.

The assets come from Apple's Foundation Models adapter training toolkit (developer.apple.com,
under Apple's license); this project never ships or downloads them — see docs/afm.md.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from train.afm.configuration import AFM_26_0_SIGNATURE, AFMTextV7Config
from train.afm.keymap import (MappedCheckpoint, config_from_checkpoint, kv_quant_scales,
                              map_checkpoint)
from train.afm.modeling import AFMTextV7ForCausalLM
from train.afm.tokenizer import build_afm_tokenizer

WEIGHTS_FILE = "base-model.pt"
TOKENIZER_FILE = "tokenizer.model"
_SHOWN = 20  # keys listed per category in an error; the count says how many more
_GEOMETRY_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_kv_reuse_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_layout")


def resolve_assets_dir(path: str | Path) -> Path | None:
    """The folder holding base-model.pt: `path` itself or its `assets/` subfolder (the toolkit root)."""
    path = Path(path)
    for candidate in (path, path / "assets"):
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    return None


def is_afm_assets(path: str | Path) -> bool:
    return resolve_assets_dir(path) is not None


def _listing(title: str, keys: list[str]) -> str:
    shown = "\n".join(f"    {k}" for k in sorted(keys)[:_SHOWN])
    more = f"\n    ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"  {title} ({len(keys)}):\n{shown}{more}"


def identity_for(assets_dir: Path, config: AFMTextV7Config) -> str:
    """sha256 over the weight file's name and size, the tokenizer file's bytes, and the geometry.

    The 12.7 GB weight file is deliberately not hashed (minutes of I/O per run); its size plus the
    geometry read from it identify a toolkit release in practice. See docs/afm.md.
    """
    digest = hashlib.sha256(b"afm-assets-identity-v1\n")
    weights = assets_dir / WEIGHTS_FILE
    digest.update(f"{WEIGHTS_FILE}\t{weights.stat().st_size}\n".encode())
    tokenizer = assets_dir / TOKENIZER_FILE
    digest.update(f"{TOKENIZER_FILE}\t{tokenizer.stat().st_size}\t".encode())
    digest.update(hashlib.sha256(tokenizer.read_bytes()).hexdigest().encode() + b"\n")
    geometry = {k: getattr(config, k) for k in _GEOMETRY_FIELDS}
    digest.update(json.dumps(geometry, sort_keys=True).encode())
    return digest.hexdigest()


def base_info_for(assets_dir: str | Path, config: AFMTextV7Config,
                  base_signature: str = AFM_26_0_SIGNATURE) -> dict:
    """run.json["base_model"] for an AFM base (interfaces.md)."""
    assets_dir = Path(assets_dir)
    return {
        "name_or_path": str(assets_dir),
        "revision": None,
        "identity": identity_for(assets_dir, config),
        "architecture": "AFMTextV7ForCausalLM",
        "rope_layout": config.rope_layout,
        "base_signature": base_signature,
        "stand_in": False,
    }


def _read_state_dict(weights: Path) -> Mapping[str, torch.Tensor]:
    # mmap: tensors are paged in from disk on use, so a 12.7 GB fp32 file never sits twice in RAM.
    # weights_only: nothing but tensors and plain containers is unpickled.
    try:
        try:
            state_dict = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # An old (non-zip) torch.save file cannot be memory-mapped: read it whole instead.
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{weights}: cannot read as a plain tensor state dict ({first_line})") from err
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{weights}: expected a plain state dict of tensors, got {type(state_dict).__name__}")
    return state_dict


@dataclass
class CheckedAssets:
    """An assets folder whose checkpoint maps completely onto a meta-device model (nothing loaded yet)."""

    folder: Path
    tokenizer: object
    config: AFMTextV7Config
    mapped: MappedCheckpoint
    model: AFMTextV7ForCausalLM  # on the meta device
    kv_scales: dict[int, tuple[float, float]] | None = None  # per regular layer; None: no ranges
    kv_scales_problem: str | None = None


def check_assets(assets_dir: str | Path) -> CheckedAssets:
    """Find, read (memory-mapped) and map an assets folder; raise listing every key that does not fit."""
    found = resolve_assets_dir(assets_dir)
    if found is None:
        raise FileNotFoundError(f"{assets_dir}: no {WEIGHTS_FILE} here or in {Path(assets_dir) / 'assets'}")
    if not (found / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{found}: {TOKENIZER_FILE} is missing next to {WEIGHTS_FILE}")
    weights = found / WEIGHTS_FILE
    tokenizer = build_afm_tokenizer(found / TOKENIZER_FILE)
    state_dict = _read_state_dict(weights)
    config = config_from_checkpoint(
        state_dict, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{found}: tokenizer has {len(tokenizer)} tokens but the embedding only {config.vocab_size}")
    mapped = map_checkpoint(state_dict, config)
    with torch.device("meta"):
        model = AFMTextV7ForCausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = [k for k in expected if k not in mapped.tensors]
    wrong_shape = [f"{k}: checkpoint {tuple(t.shape)}, model {tuple(expected[k])}"
                   for k, t in mapped.tensors.items() if k in expected and t.shape != expected[k]]
    if mapped.unmatched or missing or wrong_shape or mapped.problems:
        sections = [_listing(title, keys) for title, keys in (
            ("checkpoint keys that match no model weight", mapped.unmatched),
            ("model weights the checkpoint does not provide", missing),
            ("shape mismatches", wrong_shape),
            ("other problems", mapped.problems),
        ) if keys]
        raise ValueError(f"{weights}: cannot load as AFMTextV7ForCausalLM\n" + "\n".join(sections))
    try:
        kv_scales, kv_problem = kv_quant_scales(state_dict, config), None
    except ValueError as err:
        kv_scales, kv_problem = None, f"{weights}: {err}"
    return CheckedAssets(found, tokenizer, config, mapped, model, kv_scales, kv_problem)


def set_kv_quant(model: AFMTextV7ForCausalLM, mode: str, checked: CheckedAssets) -> None:
    """Switch the model's K/V fake quantisation ("off" | "device"), setting the int8 steps."""
    if mode == "device" and checked.kv_scales is None:
        raise ValueError(checked.kv_scales_problem or "kv_quant device: no kv_quantizer ranges")
    model.config.kv_quant = mode
    for layer in model.model.layers[: model.config.num_regular_layers]:
        # Always real tensors (the model was built on the meta device); 1.0 where unused.
        key_step, value_step = (checked.kv_scales or {}).get(layer.layer_idx, (1.0, 1.0))
        attn = layer.self_attn
        attn.key_step = torch.tensor(key_step, device=attn.q_proj.weight.device)
        attn.value_step = torch.tensor(value_step, device=attn.q_proj.weight.device)


def load_afm(assets_dir: str | Path, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
             *, base_signature: str = AFM_26_0_SIGNATURE, kv_quant: str = "off"):
    """-> (AFMTextV7ForCausalLM in eval mode, tokenizer, base_info).

    kv_quant "device" fake-quantises keys/values with the checkpoint's kv_quantizer ranges, as
    Apple's runtime does (the model's forward, generation and training all see it).

    dtype None keeps the checkpoint's dtype (float32 for the toolkit); device None keeps CPU.
    Fails, listing the keys, if the checkpoint has keys that map nowhere or lacks model weights.
    """
    checked = check_assets(assets_dir)
    model, tokenizer = checked.model, checked.tokenizer
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    converted = {}
    for name, tensor in tqdm(checked.mapped.tensors.items(), desc=f"loading {WEIGHTS_FILE}", unit="tensor"):
        converted[name] = tensor.to(device=device or "cpu", dtype=dtype or tensor.dtype)
    model.load_state_dict(converted, strict=False, assign=True)
    model.tie_weights()
    set_kv_quant(model, kv_quant, checked)
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise RuntimeError(f"{checked.folder}: weights left unloaded after mapping: {still_meta[:_SHOWN]}")
    model.eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, base_info_for(checked.folder, checked.config, base_signature)
