"""argparse types for numeric flags: a value out of range is a usage error (exit 2) naming the
flag, its allowed range and what was given, before any work starts — never a traceback from deep
inside, and never silently clamped (`--concurrency 0` used to run with 1)."""
from __future__ import annotations

import argparse
import math


def integer(lo: int, hi: int | None = None):
    """An int in [lo, hi] (hi None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            allowed = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value
    return parse


def number(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """A finite float in the interval from lo to hi (open at an end when asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= lo if lo_open else value < lo
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or below or above:
            left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {left}{lo}, {'inf' if hi is None else hi}{right}, "
                f"got {text}")
        return value
    return parse


COUNT = integer(1)                       # how many: at least one
NON_NEGATIVE = integer(0)
POSITIVE = number(0.0, lo_open=True)     # seconds, strengths: > 0
FRACTION = number(0.0, 1.0, hi_open=True)   # a share held out: [0, 1)
SHARE = number(0.0, 1.0)                 # [0, 1]
