"""Benchmark: exporting a synthetic full-size afm-text-v7 adapter (not a test).

  .venv/bin/python bench/export.py [--dir DIR] [--repeats 3]

Prints
- wall time of `export_adapter` as a ratio to copying a file of the same size on the same disk
  (both fsync'd, best of N, same process, warm page cache) - target <= 3x;
- peak memory of one export: Python/numpy heap peak under tracemalloc (every array the exporter
  allocates is numpy, which reports to tracemalloc), as a ratio to the largest tensor - target
  <= 2 x largest tensor + a fixed overhead (reported separately). The RSS high-water growth of a
  fresh process (after imports) is printed too, as a cross-check that also sees memory numpy
  does not report (safetensors' own buffers, any mapped file pages).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.layouts import afm_text_v7  # noqa: E402
from export.package import export_adapter  # noqa: E402
from export.synthetic import synthetic_run, synthetic_state  # noqa: E402

TARGET_TIME_RATIO = 3.0
FIXED_OVERHEAD = 2 * 1024 * 1024  # interpreter-side bookkeeping allowed on top of 2 tensors

CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from export.package import export_adapter
import numpy, safetensors, rich.progress  # imported before the baseline so they do not count
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
export_adapter({run!r}, "bench_rss", {out!r}, progress=False, force=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_kib": before, "after_kib": after}}))
"""


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="work folder on the disk to measure (default: a temp folder)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fmdistill-bench-", dir=args.dir))
    try:
        print(f"generating a synthetic afm-text-v7 adapter in {root} ...", flush=True)
        run = synthetic_run(root / "run", seed=0)  # rank 32, alpha 16: Apple's defaults
        out = root / "out"
        res = export_adapter(run, "bench", out, progress=False)  # warm-up, and the copy source
        weights = res.path / "adapter_weights.bin"

        def fresh_export(run_dir=run):
            shutil.rmtree(out, ignore_errors=True)  # removing the old package is not export work
            export_adapter(run_dir, "bench", out, progress=False)

        def fresh_copy():
            (root / "copy.bin").unlink(missing_ok=True)
            copy_fsync(weights, root / "copy.bin")

        t_export = timed(fresh_export, args.repeats)
        t_copy = timed(fresh_copy, args.repeats)
        ratio = t_export / t_copy
        size = weights.stat().st_size
        print(f"\nfile size                {size:,} bytes ({res.blobs} blobs)")
        print(f"export (best of {args.repeats})     {t_export:.3f} s")
        print(f"copy same size + fsync   {t_copy:.3f} s")
        print(f"ratio export / copy      {ratio:.2f}x   (target <= {TARGET_TIME_RATIO:g}x: "
              f"{'met' if ratio <= TARGET_TIME_RATIO else 'NOT met'})")

        # Context, not the target: an fp32 adapter with alpha 32 takes the float path (fold,
        # range check, one fp16 cast) instead of staying in fp16 bits.
        state = {k: v.astype(np.float32) for k, v in synthetic_state(seed=0).items()}
        slow = synthetic_run(root / "run32", alpha=32, state=state)
        del state
        t_slow = timed(lambda: fresh_export(slow), 1)
        print(f"fp32 + fold variant      {t_slow:.3f} s = {t_slow / t_copy:.2f}x copy (context)")
        shutil.rmtree(slow, ignore_errors=True)

        largest = max(s.nbytes for s in afm_text_v7().slots)
        shutil.rmtree(out, ignore_errors=True)
        tracemalloc.start()
        export_adapter(run, "bench", out, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        overhead = peak - 2 * largest
        print(f"\nlargest tensor (fp16)    {largest:,} bytes")
        print(f"peak heap (tracemalloc)  {peak:,} bytes = {peak / largest:.2f} x largest tensor")
        print(f"  over 2 x largest       {overhead:,} bytes (allowance {FIXED_OVERHEAD:,}: "
              f"{'met' if overhead <= FIXED_OVERHEAD else 'NOT met'})")

        child = CHILD.format(repo=str(Path(__file__).resolve().parent.parent), run=str(run),
                             out=str(root / "rss"))
        r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
        if r.returncode == 0:
            kib = json.loads(r.stdout.strip().splitlines()[-1])
            grow = (kib["after_kib"] - kib["before_kib"]) * 1024
            print(f"RSS high-water growth    {grow:,} bytes (fresh process, over its peak after "
                  "imports)")
        else:
            print(f"RSS measurement failed: {r.stderr.strip()[-300:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
