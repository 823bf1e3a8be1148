"""Benchmark: one LoRA SFT step, MLX vs torch, same model and batch, in one process (not a test).

  .venv/bin/python bench/backends.py [--model standin|PATH] [--batch 4] [--seq 256] [--steps 5]
                                     [--rank 32] [--device auto]

Both backends load the same base folder (the stand-in, a save_pretrained folder, or Apple's
toolkit assets), wrap Apple's seven target modules with a rank-`--rank` LoRA, and run the same
token batch (random ids, loss on every position) through forward, backward and an AdamW update.
Printed: tokens per second (after one warm-up step) and peak memory, and MLX / torch ratios.

Peak memory is what each framework's allocator reports where it has a counter (torch on CUDA:
max_memory_allocated; MLX: mx.get_peak_memory), otherwise the growth of this process's resident
memory while the steps run (torch on CPU/MPS), so compare like with like: the "how" column says
which. On Linux, mlx-cpu links the reference BLAS, so MLX on a Linux CPU is slower than torch;
the figures that matter are an Apple-silicon Mac's (Metal). docs/mlx.md records them.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RSSPeak:
    """Peak growth of this process's resident set while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def grown(self) -> int:
        return self.peak - self.start


def torch_figures(path: str, ids, steps: int, rank: int, device: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from train.models import load_base, pick_device

    dev = pick_device(device)
    model, _, _ = load_base(path, device=dev)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = torch.tensor(ids, device=dev)

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        elif dev == "mps":
            torch.mps.synchronize()

    step()                                       # warm-up (allocations, kernels)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with RSSPeak() as rss:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - t0
    if dev == "cuda":
        peak, how = torch.cuda.max_memory_allocated(), "cuda allocator"
    else:
        peak, how = rss.grown, "RSS growth"
    return {"backend": f"torch ({dev})", "tokens_per_s": batch.numel() * steps / seconds,
            "peak_bytes": peak, "how": how}


def mlx_figures(path: str, ids, steps: int, rank: int, device: str) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from train.mlx.lora import apply_lora
    from train.mlx.losses import sft_loss
    from train.mlx.models import load_mlx_base
    from train.mlx.trainer import mlx_runtime

    dev, _ = mlx_runtime(device, "fp32")
    base = load_mlx_base(path, precision="fp32")
    apply_lora(base, TARGETS, rank, 16, 0.0)
    base.model.train()
    opt = optim.AdamW(learning_rate=1e-4, bias_correction=True)
    batch = mx.array(ids)

    def loss_fn(model):
        total, count = sft_loss(model, batch, batch)
        return total / count

    value_and_grad = nn.value_and_grad(base.model, loss_fn)

    def step():
        _, grads = value_and_grad(base.model)
        opt.update(base.model, grads)
        mx.eval(base.model.trainable_parameters(), opt.state)

    step()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"backend": f"mlx ({dev})", "tokens_per_s": batch.size * steps / seconds,
            "peak_bytes": mx.get_peak_memory(), "how": "mlx allocator"}


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="standin", help="standin, a model folder or toolkit assets")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from train.mlx import require_mlx
    from train.models import resolve_base
    require_mlx("bench/backends.py")
    path = resolve_base(args.model)
    from train.mlx.models import load_mlx_base
    vocab = load_mlx_base(path).model.args.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, size=(args.batch, args.seq)).tolist()
    rows = [torch_figures(path, ids, args.steps, args.rank, args.device),
            mlx_figures(path, ids, args.steps, args.rank, args.device)]
    print(f"LoRA SFT step (rank {args.rank}, Apple's targets), batch {args.batch} x {args.seq} "
          f"tokens, {args.steps} steps after one warm-up; model {args.model}")
    print(f"{'backend':<18} {'tokens/s':>10} {'peak MiB':>10}  how")
    for r in rows:
        print(f"{r['backend']:<18} {r['tokens_per_s']:>10.1f} {r['peak_bytes'] / 2**20:>10.1f}  "
              f"{r['how']}")
    t, m = rows
    print(f"mlx / torch: {m['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
          f"{m['peak_bytes'] / max(t['peak_bytes'], 1):.2f}x peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
