"""A synthetic full-size afm-text-v7 training run folder, for tests and bench/export.py.

Random fp16 values with the right names and shapes, plus the adapter_config.json and run.json
training would write. No model is involved; it exists to exercise the exporter at real size.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.contract import PROMPT_HASH
from export.layouts import AFM_ARCHITECTURE, AFM_SIGNATURE_26_0, MODULE_ORDER, afm_text_v7


def synthetic_state(*, seed: int = 0, rank: int = 32, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random fp16 LoRA tensors for every afm-text-v7 slot, keyed by PEFT name (~133 MB)."""
    rng = np.random.default_rng(seed)
    state = {}
    for s in afm_text_v7().slots:
        shape = (rank, s.shape[1]) if s.matrix == "A" else (s.shape[0], rank)
        state[s.key] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)
    return state


def synthetic_run(out_dir, *, seed: int = 0, alpha: float = 16, rank: int = 32,
                  rope_layout: str | None = "interleaved", std: float = 0.02,
                  state: dict | None = None, tensors: dict | None = None,
                  target_modules: list[str] | None = None, base_overrides: dict | None = None
                  ) -> Path:
    """Write out_dir/{adapter_model.safetensors, adapter_config.json, run.json}; returns out_dir.

    `state` reuses tensors from synthetic_state(); `tensors` overrides or adds entries
    (name -> array, or None to delete one) to build deliberately broken adapters;
    `base_overrides` edits run.json's base_model (a None value deletes the key).
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(state if state is not None else synthetic_state(seed=seed, rank=rank, std=std))
    for k, v in (tensors or {}).items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = list(target_modules or MODULE_ORDER)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "target_modules": targets, "bias": "none",
        "base_model_name_or_path": None}, indent=2))
    base = {"name_or_path": str(out / "assets"), "revision": None, "identity": "ab" * 32,
            "architecture": AFM_ARCHITECTURE, "rope_layout": rope_layout,
            "base_signature": AFM_SIGNATURE_26_0, "stand_in": False}
    for k, v in (base_overrides or {}).items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    if rope_layout is None:
        base.pop("rope_layout")
    (out / "run.json").write_text(json.dumps({
        "run_id": f"sft-synthetic-{seed}", "stage": "sft", "config": {}, "base_model": base,
        "lora": {"r": rank, "alpha": alpha, "dropout": 0.0, "target_modules": targets},
        "data": {"train_file": str(out / "train.jsonl"), "train_sha256": "cd" * 32,
                 "val_sha256": "ef" * 32, "n_train": 0, "n_val": 0, "inputs": []},
        "prompt_hash": PROMPT_HASH, "versions": {}, "git_commit": None,
        "metrics": {"ruler": {"score": 0.5, "n": 30}}}, indent=2))
    return out


def synthetic_standin_run(out_dir, *, seed: int = 0, layers: int = 2, hidden: int = 64,
                          kv_width: int = 32, ffn: int = 96, rank: int = 8, alpha: float = 16,
                          std: float = 0.05, tensors: dict | None = None) -> Path:
    """A small Llama-shaped stand-in run folder (no model): for refusal and validator tests."""
    from safetensors.numpy import save_file

    from export.layouts import PEFT_PREFIX, module_path

    features = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_width),
                "v_proj": (hidden, kv_width), "o_proj": (hidden, hidden),
                "gate_proj": (hidden, ffn), "up_proj": (hidden, ffn), "down_proj": (ffn, hidden)}
    rng = np.random.default_rng(seed)
    state = {}
    for layer in range(layers):
        for m, (fin, fout) in features.items():
            key = f"{PEFT_PREFIX}{module_path(layer, m)}"
            state[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, fin)) * std).astype(np.float32)
            state[f"{key}.lora_B.weight"] = (rng.standard_normal((fout, rank)) * std).astype(np.float32)
    for k, v in (tensors or {}).items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "target_modules": list(MODULE_ORDER), "bias": "none"}, indent=2))
    (out / "run.json").write_text(json.dumps({
        "run_id": f"sft-standin-{seed}", "stage": "sft",
        "base_model": {"name_or_path": "standin", "revision": None, "identity": "12" * 32,
                       "architecture": "LlamaForCausalLM", "rope_layout": "half-split",
                       "base_signature": None, "stand_in": True},
        "lora": {"r": rank, "alpha": alpha}, "data": {"train_sha256": "34" * 32},
        "prompt_hash": PROMPT_HASH, "metrics": {}}, indent=2))
    return out
