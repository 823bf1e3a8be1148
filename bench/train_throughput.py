"""Benchmark: SFT training throughput (not a test). Two modes.

  .venv/bin/python bench/train_throughput.py [--steps 8] [--threads N]
      Packed vs padded LoRA SFT on the bundled data and the stand-in, same data, one process:
      useful (non-pad) tokens per second and the share of padding, and their ratio.

  .venv/bin/python bench/train_throughput.py --model-config qwen2.5-3b|afm-text-v7|tiny
                                             [--batch 4] [--seq 1024] [--device auto]
      One LoRA SFT step (rank 32, Apple's targets, gradient checkpointing, bf16 where supported)
      on a random-init model of that shape (config written below, nothing from the hub):
      tokens/s, peak memory and MFU.

MFU counts 6 x (parameters) x tokens per step: with the base frozen there are no weight
gradients, but checkpointing recomputes the forward, so forward (2) + recompute (2) + activation
gradients (2); attention's quadratic term and the LoRA matrices are left out (a few % at 1024).
The peak is the GPU's dense bf16 figure (table below); on CPU no honest peak exists, so MFU is
printed as "-". docs/benchmarks.md records measured figures; scripts/gpu-check.sh runs the
full-size shapes on a CUDA machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Shapes of the real models (published configs), so memory and speed are those of the real thing.
QWEN25_3B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                 num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                 max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                 tie_word_embeddings=True)
TINY = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True)
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets; SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12}


# ---------------------------------------------------------------------------- packed vs padded

def _batch_tokens(trainer, steps: int) -> tuple[int, int]:
    """(useful tokens, tokens computed) of the first `steps` batches: padding-free batches have
    no pad positions; padded ones carry attention_mask zeros."""
    useful = total = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i == steps:
            break
        total += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        useful += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    return useful, total


def packed_vs_padded(steps: int) -> int:
    from data.corpus import REFERENCES_DIR
    from data.sft import build_sft_data
    from train.config import load_config
    from train.sft import SFTRunConfig, build_trainer

    tmp = Path(tempfile.mkdtemp(prefix="fmdistill-bench-"))
    build_sft_data([REFERENCES_DIR], tmp / "data", val_fraction=0.1, seed=0)
    rows = []
    for packing in (False, True):
        cfg = load_config(SFTRunConfig, Path("configs/tiny-sft.yaml"), {
            "model_name_or_path": "standin", "train_file": str(tmp / "data" / "train.jsonl"),
            "val_file": None, "output_dir": str(tmp / f"run-{packing}"), "max_steps": steps,
            "save_strategy": "no", "logging_steps": 1000, "progress": False, "packing": packing})
        trainer = build_trainer(cfg)[0]
        useful, total = _batch_tokens(trainer, steps)
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
        rows.append(("packed" if packing else "padded", useful, total, dt))
    print(f"{'mode':8s} {'useful tok':>10s} {'computed':>9s} {'padding':>8s} {'seconds':>8s} "
          f"{'useful tok/s':>12s}")
    rate = {}
    for mode, useful, total, dt in rows:
        rate[mode] = useful / dt
        print(f"{mode:8s} {useful:10d} {total:9d} {1 - useful / total:8.1%} {dt:8.2f} "
              f"{rate[mode]:12.0f}")
    ratio = rate["packed"] / rate["padded"]
    print(f"packed / padded useful tokens/s: {ratio:.2f}x (target >= 1.5x) over {steps} steps "
          f"of batch {cfg.per_device_train_batch_size}, max_length {cfg.max_length}")
    return 0


# ---------------------------------------------------------------------------- full-size shapes

def build_random(name: str, device: str, dtype):
    """A random-init model of the named shape, LoRA rank 32 on Apple's targets, checkpointing on."""
    import torch
    from peft import LoraConfig, get_peft_model

    if name == "afm-text-v7":
        from train.afm.configuration import AFMTextV7Config
        from train.afm.modeling import AFMTextV7ForCausalLM
        cls, config = AFMTextV7ForCausalLM, AFMTextV7Config()
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM
        cls, config = Qwen2ForCausalLM, Qwen2Config(**(QWEN25_3B if name == "qwen2.5-3b" else TINY))
    with torch.device("meta"):  # no 12 GB of fp32 init on the host first
        model = cls(config).to(dtype)
    model = model.to_empty(device=device)
    model.tie_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(1.0)
    n_params = sum(p.numel() for p in model.parameters())
    from train.common import APPLE_LORA_TARGETS
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=16,
                                             target_modules=APPLE_LORA_TARGETS))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    return model, n_params


def _sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def one_step_figures(name: str, device: str, batch: int, seq: int, steps: int) -> dict:
    import torch

    from train.models import pick_device, pick_precision, torch_dtype
    device = pick_device(device)
    precision = pick_precision(device)
    model, n_params = build_random(name, device, torch_dtype(precision))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator, optimizer state
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch * seq / dt
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in gpu), None) \
        if precision == "bf16" else None
    mfu = 6 * n_params * tok_s / peak_flops if peak_flops else None
    return {"model": name, "device": gpu, "precision": precision, "params_b": n_params / 1e9,
            "batch": batch, "seq": seq, "s_per_step": dt, "tok_s": tok_s, "peak_gib": peak,
            "mfu": mfu}


def print_table(rows: list[dict]) -> None:
    print(f"{'model':12s} {'device':28s} {'prec':5s} {'params':>7s} {'shape':>9s} "
          f"{'s/step':>7s} {'tok/s':>8s} {'peak GiB':>8s} {'MFU':>6s}")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['model']:12s} {r['device'][:28]:28s} {r['precision']:5s} "
              f"{r['params_b']:6.2f}B {r['batch']:>3d}x{r['seq']:<5d} {r['s_per_step']:7.2f} "
              f"{r['tok_s']:8.0f} {peak:>8s} {mfu:>6s}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-config", nargs="+", choices=["qwen2.5-3b", "afm-text-v7", "tiny"],
                    help="full-size shape(s); without it: packed vs padded on the stand-in")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (default: 8 packed/padded, 2 per shape)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if not args.model_config:
        return packed_vs_padded(args.steps or 8)
    rows = []
    for name in args.model_config:
        rows.append(one_step_figures(name, args.device, args.batch, args.seq, args.steps or 2))
        import gc
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
