"""What every judge takes and is: a JudgeItem in, a Verdict or an error string out.

Kept apart from the factory (judge.judges.get_judge) so the judges themselves, and the learned
judge the factory builds (judge.learned), import these without importing the factory: no cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from data.contract import DiscoveryResult
from judge.verdict import Verdict


@dataclass(frozen=True)
class JudgeItem:
    input: str
    gold: DiscoveryResult
    candidate: DiscoveryResult


class Judge(Protocol):
    name: str
    prompt_hash: str

    def judge_many(self, items: list[JudgeItem]) -> list[Verdict | str]: ...
