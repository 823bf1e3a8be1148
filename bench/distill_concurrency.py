"""Benchmark (not a test): distillation wall time, sequential vs concurrent, and re-run cost.

    python bench/distill_concurrency.py [--tasks 100] [--latency 0.2] [--concurrency 16]

Runs data.distill.distill_tasks against the fake Messages API (tests/fakes) answering every
request after `latency` seconds, first with concurrency 1, then with `--concurrency`, each with a
fresh cache and output. Prints the wall-time ratio (target >= 10x at 16) and the number of
requests an immediate re-run sends, both into the same output (target 0) and into a new output
file with the same cache (target 0: every answer comes from the cache).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data.api_retry import RetryPolicy  # noqa: E402
from data.distill import distill_tasks  # noqa: E402
from tests.fakes import FakeAnthropic  # noqa: E402

KEY = "sk-ant-bench-not-a-real-key-000000"


def run(srv: FakeAnthropic, tasks, workdir: Path, name: str, concurrency: int,
        cache: str) -> tuple[float, int]:
    srv.reset_log()
    start = time.perf_counter()
    distill_tasks(tasks, workdir / f"{name}.jsonl", cache_path=workdir / cache,
                  concurrency=concurrency, retry=RetryPolicy(base_delay=0.01), progress=False)
    return time.perf_counter() - start, len(srv.message_requests())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.2, help="seconds per fake request")
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    tasks = [{"id": f"b{i:04d}", "input": f"Plan benchmark project number {i}"}
             for i in range(a.tasks)]
    with FakeAnthropic(api_key=KEY, latency=a.latency) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        os.environ["ANTHROPIC_API_KEY"] = KEY
        os.environ["ANTHROPIC_BASE_URL"] = srv.base_url
        work = Path(tmp)
        seq_s, seq_n = run(srv, tasks, work, "sequential", 1, "seq.sqlite")
        par_s, par_n = run(srv, tasks, work, "concurrent", a.concurrency, "par.sqlite")
        _s, rerun_n = run(srv, tasks, work, "concurrent", a.concurrency, "par.sqlite")
        _s, fresh_out_n = run(srv, tasks, work, "fresh-output", a.concurrency, "par.sqlite")
    ratio = seq_s / par_s
    print(f"tasks {a.tasks}, fake latency {a.latency * 1000:.0f} ms per request")
    print(f"sequential (concurrency 1): {seq_s:7.2f} s  ({seq_n} requests)")
    print(f"concurrency {a.concurrency:<2}:            {par_s:7.2f} s  ({par_n} requests)")
    print(f"speed-up sequential / concurrency {a.concurrency}: {ratio:.1f}x "
          f"(target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
    print(f"immediate re-run, same output: {rerun_n} requests (target 0)")
    print(f"re-run into a new output, same cache: {fresh_out_n} requests (target 0)")


if __name__ == "__main__":
    main()
