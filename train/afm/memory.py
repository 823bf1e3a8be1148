"""Measure peak accelerator memory of LoRA training steps on the full-size AFM model.

    python -m train.afm.memory --device cuda --dtype bfloat16 --shapes 1x1024 2x1024 4x2048

No Apple files are needed: the full-size architecture is built with random weights (memory does
not depend on their values). Each shape runs two optimizer steps of rank-32 LoRA on Apple's target
set and reports the peak allocated memory, so you can size a GPU (or a Mac) before training.
docs/afm.md quotes numbers measured with this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from train.afm.configuration import LORA_TARGET_MODULES, AFMTextV7Config
from train.afm.modeling import AFMTextV7ForCausalLM


def build(device: str, dtype: torch.dtype, checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    with torch.device("meta"):
        model = AFMTextV7ForCausalLM(AFMTextV7Config()).to(dtype)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty gives the shared embedding two storages; share it again
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02) if param.ndim > 1 else param.fill_(1.0)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=16, target_modules=LORA_TARGET_MODULES))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    if device == "mps":
        return torch.mps.driver_allocated_memory()  # MPS has no peak counter; read right after the step
    raise ValueError(f"memory is measured on cuda or mps, not {device}")


def measure(model, device: str, batch: int, seq: int) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    start = time.perf_counter()
    try:
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
    except torch.OutOfMemoryError:
        return {"batch": batch, "seq": seq, "peak_gib": None, "error": "out of memory"}
    finally:
        del optimizer
    return {"batch": batch, "seq": seq, "peak_gib": round(peak_bytes(device) / 2**30, 2),
            "seconds_per_step": round((time.perf_counter() - start) / 2, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "mps"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--shapes", nargs="+", default=["1x1024", "2x1024"], help="BATCHxSEQ, e.g. 2x1024")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep all activations")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    model = build(args.device, dtype, not args.no_checkpointing)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    results = {"dtype": args.dtype, "checkpointing": not args.no_checkpointing,
               "weights_gib": round(weights_gib, 2), "runs": []}
    print(f"{args.dtype}, gradient checkpointing {'off' if args.no_checkpointing else 'on'}, "
          f"weights + LoRA {weights_gib:.2f} GiB")
    for shape in args.shapes:
        batch, seq = (int(x) for x in shape.lower().split("x"))
        run = measure(model, args.device, batch, seq)
        results["runs"].append(run)
        print(f"  batch {batch} x {seq} tokens: peak {run['peak_gib']} GiB"
              + (f", {run['seconds_per_step']} s/step" if run.get("seconds_per_step") else f" ({run.get('error')})"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
