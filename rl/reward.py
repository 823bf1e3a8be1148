"""The reward of judge-driven training, the ruler's own per-case quality on a training task:
an answer that does not parse or fails the spec gate gets `fail_reward` (the minimum, 0 by
default); a passing one gets the judge's case quality against that task's gold, the same number
eval averages over the ruler (0.5 x normalised rubric + 0.5 x head-to-head)."""
from __future__ import annotations

from dataclasses import dataclass, field

from data.contract import (JUDGE_SYSTEM_PROMPT, JUDGE_TOOL, DiscoveryResult, parse_assistant,
                           spec_violations)
from judge.judges import JudgeItem
from judge.verdict import Verdict, case_quality

JUDGE_ANSWER_TOKENS = 600     # two answers in the judge's user turn, measured on the planner's
JUDGE_OUT_TOKENS = 250        # the judge's tool call


def completion_text(completion) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


@dataclass
class RewardStats:
    completions: int = 0
    spec_failed: int = 0
    judged: int = 0
    judge_errors: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"completions": self.completions, "spec_failed": self.spec_failed,
                "judged": self.judged, "judge_errors": self.judge_errors,
                "spec_pass_rate": (None if not self.completions
                                   else 1 - self.spec_failed / self.completions),
                "first_errors": self.errors[:5]}


class PlannerReward:
    """A TRL reward function: `reward(prompts, completions, gold=..., task_input=...)`, where
    `gold` and `task_input` are dataset columns (gold as the contract's JSON)."""

    def __init__(self, judge, fail_reward: float = 0.0):
        self.judge, self.fail_reward = judge, fail_reward
        self.__name__ = "planner_quality"     # the name TRL logs the reward under
        self.stats = RewardStats()

    def __call__(self, prompts, completions, gold, task_input, **_) -> list[float]:
        rewards = [self.fail_reward] * len(completions)
        items, where = [], []
        for i, (comp, g, task) in enumerate(zip(completions, gold, task_input)):
            parsed = parse_assistant(completion_text(comp))
            if parsed.result is None or spec_violations(parsed.result):
                self.stats.spec_failed += 1
                continue
            items.append(JudgeItem(task, DiscoveryResult.from_json(g, where="gold"),
                                   parsed.result))
            where.append(i)
        verdicts = self.judge.judge_many(items) if items else []
        for i, v in zip(where, verdicts):
            if isinstance(v, Verdict):
                rewards[i] = case_quality(v, spec_passed=True)
                self.stats.judged += 1
            else:       # the judge could not decide: no credit, and the run says how often
                self.stats.judge_errors += 1
                self.stats.errors.append(str(v))
        self.stats.completions += len(completions)
        return rewards


def gold_json(result: DiscoveryResult) -> str:
    return result.to_json()


def judge_cost_estimate(n_completions: int, judge_model: str, *, swap: bool = False) -> dict:
    """Upper bound on judge calls (every completion passes the gate and misses the cache) and
    their list-price cost from configs/prices.yaml (None when the model is not priced)."""
    from data.prices import PRICES_PATH, load_prices

    calls = n_completions * (2 if swap else 1)
    judge_in = len(JUDGE_SYSTEM_PROMPT + str(JUDGE_TOOL)) // 4 + JUDGE_ANSWER_TOKENS
    usage = {"input_tokens": judge_in * calls, "output_tokens": JUDGE_OUT_TOKENS * calls}
    dollars = load_prices().cost(judge_model, usage) if PRICES_PATH.exists() else None
    return {"max_judge_calls": calls, **usage, "dollars": dollars}
