"""How long the offline judge takes to judge the 30 ruler cases, embedding vs lexical.

  .venv/bin/python bench/offline_judge.py [--threads 1] [--repeat 3]

Candidates are each ruler gold with every question reworded (judge.calibration_set.reword), so
every candidate text is new to the judge, as a real adapter's answers are. The model load (and
the slot inventory) is timed apart; the judging time is taken with a fresh text cache each
repeat, the best of --repeat. Prints both backends and the ratio. Target: embedding under 5 s
on 2 CPU cores. Not a test: nothing here fails on a slow machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from data.contract import Question  # noqa: E402
from data.corpus import ruler_cases  # noqa: E402
from judge.calibration_set import reword  # noqa: E402
from judge.judges import JudgeItem  # noqa: E402
from judge.judges.offline import OfflineJudge  # noqa: E402


def items():
    out = []
    for c in ruler_cases():
        cand = replace(c.gold, questions=tuple(Question(reword(q.title), "")
                                               for q in c.gold.questions))
        out.append(JudgeItem(c.input, c.gold, cand))
    return out


def timed(judge, batch, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        enc = getattr(judge.sim, "encoder", None)
        if enc is not None:
            enc._cache.clear()          # every repeat embeds every text again
        t = time.perf_counter()
        judge.judge_many(batch)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 avoids stalls on a CPU shared with other work)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = items()
    t = time.perf_counter()
    emb = OfflineJudge(backend="embedding")
    load = time.perf_counter() - t
    lex = OfflineJudge(backend="lexical")
    te, tl = timed(emb, batch, args.repeat), timed(lex, batch, args.repeat)
    print(f"cases: {len(batch)}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    print(f"embedding judge {emb.name}: load {load:.2f} s, judge 30 cases {te:.2f} s "
          f"(target < 5 s)")
    print(f"lexical judge   {lex.name}: judge 30 cases {tl:.2f} s")
    print(f"ratio embedding / lexical: {te / tl:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
