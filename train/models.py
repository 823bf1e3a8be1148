"""Loading a base model (and optionally a LoRA adapter) for training, generation and export.

One entry point for every kind of base: a hub id or local `save_pretrained` folder (the 3B
stand-in), `standin` (the offline tiny model, built on demand), or an Apple toolkit assets folder
holding `base-model.pt` (the AFM text v7 model, through train.afm). Each returns a `base_info`
dict that training records in run.json and export reads back.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

STANDIN_ALIASES = ("standin", "standin:tiny", "toy")   # the tiny offline toy (train.standin)
SMOLLM2_ALIAS = "smollm2-135m"                          # SmolLM2-135M-Instruct (train.smollm2)
BASE_ALIASES = STANDIN_ALIASES + (SMOLLM2_ALIAS,)

# Architectures whose rotary embedding pairs dimensions half-split (NeoX style). Anything else
# must state its layout; export never guesses it.
HALF_SPLIT_ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                            "MistralForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM"}


def pick_device(requested: str = "auto") -> str:
    import torch
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(device: str, requested: str = "auto") -> str:
    """bf16 where the device computes it natively, fp32 otherwise; an explicit value wins."""
    import torch
    if requested != "auto":
        return requested
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device == "mps":
        try:
            (torch.ones(2, dtype=torch.bfloat16, device="mps") * 2).cpu()
            return "bf16"
        except (RuntimeError, TypeError):
            return "fp32"
    return "fp32"


def torch_dtype(precision: str):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def _identity(path: Path | None, name: str, revision: str | None) -> str:
    """A stable hash of what the base is: config, tokenizer and weight files (by content for small
    files, by name and size for large ones), or the hub id and revision when not local."""
    h = hashlib.sha256()
    if path is None or not path.is_dir():
        h.update(f"{name}@{revision or 'main'}".encode())
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".") or rel in ("standin.json", "base.json"):
            continue
        h.update(rel.encode())
        size = f.stat().st_size
        if size <= 64 * 1024 * 1024:
            h.update(f.read_bytes())
        else:
            h.update(str(size).encode())
    return h.hexdigest()


def resolve_base(name_or_path: str) -> str:
    """A base alias (built or fetched on first use, offline afterwards) -> its local folder."""
    if name_or_path in STANDIN_ALIASES:
        from train.standin import build_standin
        return str(build_standin())
    if name_or_path == SMOLLM2_ALIAS:
        from train.smollm2 import build_smollm2
        return str(build_smollm2())
    return name_or_path


def recorded_alias(name_or_path: str) -> str | None:
    """The name run.json records for an alias (every toy spelling as "standin", as before)."""
    if name_or_path in STANDIN_ALIASES:
        return "standin"
    return name_or_path if name_or_path in BASE_ALIASES else None


def load_base(name_or_path: str, *, revision: str | None = None, precision: str = "fp32",
              device: str | None = None, kv_quant: str = "off"):
    """(model, tokenizer, base_info) for any supported base. kv_quant "device" (Apple's base
    only) fake-quantises keys/values as the device runtime does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # a "Loading weights" bar per load is noise, not progress
    alias = recorded_alias(name_or_path)
    name_or_path = resolve_base(name_or_path)
    path = Path(name_or_path)
    try:
        from train import afm
    except ImportError:  # the AFM model is optional for every other base
        afm = None
    if afm is not None and path.is_dir() and afm.is_afm_assets(path):
        model, tokenizer, info = afm.load_afm(path, dtype=torch_dtype(precision), device=device,
                                              kv_quant=kv_quant)
        return model, tokenizer, info
    check_kv_quant_base(kv_quant, name_or_path)
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or path.suffix):
        raise FileNotFoundError(f"base model folder not found: {name_or_path}")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision,
                                                 dtype=torch_dtype(precision))
    if tokenizer.pad_token is None:
        # Many instruct models ship without a pad token; reusing EOS is the usual choice and
        # is safe because padded positions are masked out of attention and loss.
        tokenizer.pad_token = tokenizer.eos_token
    if device:
        model.to(device)
    arch = (model.config.architectures or [type(model).__name__])[0]
    return model, tokenizer, hf_base_info(name_or_path, arch, revision, alias)


def check_kv_quant_base(kv_quant: str, name_or_path: str) -> None:
    if kv_quant != "off":
        raise ValueError(f"kv_quant {kv_quant!r} models Apple's KV-cache quantisation and applies "
                         f"to Apple's base (a toolkit assets folder) only, not {name_or_path!r}")


def hf_base_info(name_or_path: str, arch: str, revision: str | None, alias: str | None) -> dict:
    """run.json["base_model"] for a hub id / save_pretrained folder (either backend); `alias` is
    the name a base alias is recorded under, and `source` where a fetched base came from."""
    from train.smollm2 import provenance
    path = Path(name_or_path)
    return {
        "name_or_path": alias or name_or_path,
        "source": provenance(path) if path.is_dir() else None,
        "revision": revision,
        "identity": _identity(path if path.is_dir() else None, name_or_path, revision),
        "architecture": arch,
        "rope_layout": "half-split" if arch in HALF_SPLIT_ARCHITECTURES else "unknown",
        "base_signature": None,
        "stand_in": True,  # only Apple's own base (train.afm) yields a shippable adapter
    }


def load_with_adapter(base: str, adapter_dir: str | Path | None, *, precision: str = "fp32",
                      device: str | None = None, revision: str | None = None,
                      kv_quant: str = "off"):
    """Base plus an optional PEFT adapter folder, in eval mode."""
    model, tokenizer, info = load_base(base, revision=revision, precision=precision, device=device,
                                       kv_quant=kv_quant)
    if adapter_dir:
        from peft import PeftModel
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter folder "
                                    "(adapter_config.json is missing)")
        with peft_quietly():
            model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer, info


def peft_quietly():
    """PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated (a
    FutureWarning on every adapter load that no caller can act on); only that one is silenced."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=r"`is_gradient_checkpointing` is deprecated")
            yield
    return ctx()


def read_run(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise FileNotFoundError(f"{run_dir}: no run.json (is this a training run folder?)")
    return json.loads(p.read_text(encoding="utf-8"))
