"""One judge interface: `get_judge(name, **options).judge_many(items)`.

A judge returns, per item, a Verdict or an error string (an error is recorded, never scored).
`name` on the judge object is the identity recorded with every score (e.g.
"offline@<weights hash>:<backend>", "anthropic:claude-sonnet-4-6" or "learned@<hash>");
`prompt_hash` identifies the prompt (or the learned judge's weights and training data).

Judge names: offline, anthropic, and learned[:DIR] (a folder written by `python -m judge.learn`;
plain `learned` is the one fitted on the seed project's published Sonnet verdicts, shipped in
judge/shipped/learned-dev with its provenance).
`judge_name` is the argparse type every `--judge` option uses; `check_judge_name` is the same
check for config files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from judge.judges.base import Judge, JudgeItem  # noqa: F401  (the interface, re-exported)

JUDGE_NAMES = ("offline", "anthropic", "learned")
LEARNED_PREFIX = "learned:"
# Fitted on the development verdicts of the seed project's public research log (1,883 judged
# cases, 82 experiments; PROVENANCE.md there); leave-one-experiment-out in docs/metric.md.
SHIPPED_LEARNED = Path(__file__).resolve().parent.parent / "shipped" / "learned-dev"
LEARNED_HOWTO = ("fit one with python -m judge.learn --records FILE --out DIR, then pass "
                 "--judge learned:DIR")


def is_learned(name: str) -> bool:
    return name == "learned" or name.startswith(LEARNED_PREFIX)


def learned_folder(name: str) -> str:
    """The folder of `learned:DIR`; plain `learned` (or `learned:`) is the shipped one."""
    folder = name[len(LEARNED_PREFIX):] if name.startswith(LEARNED_PREFIX) else ""
    return folder or str(SHIPPED_LEARNED)


def check_judge_name(name: str) -> str:
    """offline, anthropic, or learned:DIR where DIR holds a fitted learned judge; else ValueError
    saying what to pass."""
    if name in ("offline", "anthropic"):
        return name
    if isinstance(name, str) and is_learned(name):
        from judge.learned import LearnedJudgeError, check_folder
        folder = learned_folder(name)
        try:
            check_folder(folder)
        except LearnedJudgeError as e:
            raise ValueError(f"{folder} is not a fitted learned judge ({e})") from None
        return name
    raise ValueError(f"choose one of offline, anthropic, learned:DIR (got {name!r})")


def judge_name(value: str) -> str:
    """argparse type for --judge: offline | anthropic | learned:DIR (validated, so a bad choice
    is a usage error, exit 2, before anything runs)."""
    try:
        return check_judge_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def get_judge(name: str, **options) -> Judge:
    if name == "offline":
        from judge.judges.offline import OfflineJudge
        return OfflineJudge(**options)
    if name == "anthropic":
        from judge.judges.anthropic import AnthropicJudge
        return AnthropicJudge(**options)
    if is_learned(name):
        return _learned(name, **options)
    raise ValueError(f"unknown judge {name!r}; choose offline, anthropic or learned:DIR")


def _learned(name: str, *, sim=None, swap: bool = False, samples: int = 1, progress=None,
             **rest) -> Judge:
    """The learned judge of `learned:DIR`. Its folder holds everything it needs: options of the
    other judges are refused (swap and samples only at their no-op defaults)."""
    unused = sorted(rest) + (["swap"] if swap else []) + (["samples"] if samples != 1 else [])
    if unused:
        raise ValueError(f"{', '.join(unused)}: do not apply to the learned judge (its folder "
                         "holds everything it needs)")
    from judge.learned import LearnedJudge
    return LearnedJudge(learned_folder(name), sim=sim)
