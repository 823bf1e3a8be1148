"""Benchmark: batched vs one-by-one greedy generation of the 30 ruler cases (not a test).

  .venv/bin/python bench/generation.py [--base standin] [--adapter RUN_DIR] [--batch-size 30]
                                       [--max-new-tokens 640] [--threads N] [--repeats 1]

Generates every ruler case through the `single` pipeline twice in the same process with the same
model: once batched (left-padded, `--batch-size` prompts per generate call) and once one prompt
at a time. Prints both wall times, the speed ratio (target >= 4x) and whether all 30 outputs are
identical token for token. Greedy outputs must not depend on the batch: padded positions are
masked out of attention and the rotary positions come from the attention mask, so each row sees
exactly what it would see alone. Exit status 1 if any output differs.

Batched greedy generation drops finished rows from the batch (eval.generate.greedy_shrinking);
with `model.generate`, which computes every row until the longest ends, the same run measured
1.6-2.3x on the stand-in. On a CPU shared with other work, `--threads 1` avoids OpenMP stalls
that otherwise dominate both timings (the ratio is similar, the absolute times are not).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed_run(model, tokenizer, inputs, batch_size: int, max_new_tokens: int, repeats: int):
    from eval.pipelines import PipelineOptions, run_pipeline
    best, gens = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        gens = run_pipeline("single", model, tokenizer, inputs,
                            PipelineOptions(max_new_tokens=max_new_tokens, batch_size=batch_size))
        best = min(best, time.perf_counter() - t0)
    return best, gens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="standin", help="base model (default: the tiny stand-in)")
    ap.add_argument("--adapter", default=None, help="optional PEFT adapter / training run folder")
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=640)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 avoids OpenMP stalls on a loaded machine)")
    ap.add_argument("--repeats", type=int, default=1, help="best of N for each mode")
    ap.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    args = ap.parse_args(argv)

    import torch

    from eval.ruler import load_ruler
    from train.models import load_with_adapter, pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    cases, info = load_ruler()
    inputs = [c.input for c in cases]
    model, tokenizer, base_info = load_with_adapter(args.base, args.adapter,
                                                    device=pick_device(args.device))
    device = next(model.parameters()).device
    print(f"ruler v{info.version}: {len(inputs)} cases; base {base_info['name_or_path']}"
          f"{' + ' + args.adapter if args.adapter else ''} on {device}, "
          f"{torch.get_num_threads()} thread(s), max_new_tokens {args.max_new_tokens}")

    # Warm-up (first-call allocations and kernel selection) so neither mode pays it.
    timed_run(model, tokenizer, inputs[:2], 2, 8, 1)
    t_batch, batched = timed_run(model, tokenizer, inputs, args.batch_size, args.max_new_tokens,
                                 args.repeats)
    t_single, single = timed_run(model, tokenizer, inputs, 1, args.max_new_tokens, args.repeats)

    different = [c.id for c, a, b in zip(cases, batched, single) if a.text != b.text]
    n_tokens = sum(len(tokenizer(g.text, add_special_tokens=False)["input_ids"]) for g in single)
    ratio = t_single / t_batch
    print(f"batched (batch size {args.batch_size}): {t_batch:8.2f} s")
    print(f"one by one:                  {t_single:8.2f} s   (about {n_tokens} new tokens in all)")
    print(f"speed ratio: {ratio:.1f}x  (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})")
    if different:
        print(f"outputs: {len(different)} of {len(cases)} DIFFER between batched and one-by-one: "
              f"{', '.join(different)}")
        return 1
    print(f"outputs: all {len(cases)} identical between batched and one-by-one generation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
