"""One judge interface: `get_judge(name, **options).judge_many(items)`.

A judge returns, per item, a Verdict or an error string (an error is recorded, never scored).
`name` on the judge object is the identity recorded with every score (e.g.
"offline@<weights hash>:<backend>" or "anthropic:claude-sonnet-4-6"); `prompt_hash` identifies the
prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from data.contract import DiscoveryResult
from judge.verdict import Verdict

JUDGE_NAMES = ("offline", "anthropic")


@dataclass(frozen=True)
class JudgeItem:
    input: str
    gold: DiscoveryResult
    candidate: DiscoveryResult


class Judge(Protocol):
    name: str
    prompt_hash: str

    def judge_many(self, items: list[JudgeItem]) -> list[Verdict | str]: ...


def get_judge(name: str, **options) -> Judge:
    if name == "offline":
        from judge.judges.offline import OfflineJudge
        return OfflineJudge(**options)
    if name == "anthropic":
        from judge.judges.anthropic import AnthropicJudge
        return AnthropicJudge(**options)
    raise ValueError(f"unknown judge {name!r}; choose one of {', '.join(JUDGE_NAMES)}")
