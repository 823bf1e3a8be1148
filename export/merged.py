"""A merged Hugging Face model from a stand-in base plus a LoRA run:
`python -m export.merged --adapter RUN --out DIR [--base PATH] [--precision fp32|bf16|fp16]`.

The LoRA deltas are folded into the base weights (PEFT's merge_and_unload), and the result is
written with save_pretrained as safetensors beside a copy of the tokenizer, so any tool that
reads an HF folder (transformers, vLLM, llama.cpp's converter, mlx-lm) runs it without PEFT.

Apple's base (AFM text v7) is refused: its weights are Apple's and the device runs the adapter
as a separate .fmadapter over the system model, so a merged AFM folder has no use and no
licence; `python -m export.fmadapter` is the export for it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class MergeError(ValueError):
    pass


def merge_run(adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None,
              precision: str = "fp32") -> Path:
    """Write the merged model folder; returns it."""
    from train.models import load_with_adapter, read_run

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    run = read_run(adapter_dir)
    info = run.get("base_model") or {}
    if info.get("stand_in") is False or info.get("architecture") == "AFMTextV7ForCausalLM":
        raise MergeError(f"{adapter_dir}: the base is Apple's Foundation Model "
                         f"({info.get('architecture')}); a merged copy is refused (Apple's "
                         "weights, and the device loads adapters separately). Export it with "
                         "python -m export.fmadapter instead")
    base = base or info.get("name_or_path")
    if not base:
        raise MergeError(f"{adapter_dir}/run.json: no base_model.name_or_path; pass --base")
    model, tokenizer, _ = load_with_adapter(base, adapter_dir, precision=precision)
    merged = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "merged_from.json").write_text(json.dumps({
        "adapter": str(adapter_dir), "run_id": run.get("run_id"), "base": base,
        "base_identity": info.get("identity"), "prompt_hash": run.get("prompt_hash"),
        "precision": precision}, indent=2), encoding="utf-8")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.merged", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, help="training run folder (run.json + adapter)")
    ap.add_argument("--out", required=True, help="folder for the merged model")
    ap.add_argument("--base", help="base model (default: the one run.json names)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args(argv)
    try:
        out = merge_run(args.adapter, args.out, base=args.base, precision=args.precision)
    except (MergeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged model written to {out} (safetensors + tokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
