"""What the judge-driven stages share: the judge keys of their configs, building the judge
(offline, learned:DIR, or Anthropic through the cached client after a spend confirmation) and
the training tasks with their gold."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from data.contract import DiscoveryResult, parse_assistant
from judge.judges import check_judge_name
from rl.reward import gold_json
from train.config import ConfigError


@dataclass
class JudgeFields:
    judge: str = field(default="offline", metadata={"help": "offline | anthropic | learned:DIR"})
    fail_reward: float = field(default=0.0, metadata={
        "help": "reward of an answer that fails to parse or fails the spec gate"})
    judge_model: str = "claude-sonnet-4-6"
    judge_cache: str | None = None
    judge_concurrency: int | None = None
    judge_weights: str | None = None
    confirm_spend: bool = field(default=False, metadata={
        "help": "anthropic judge: start without asking after printing the cost estimate"})
    limit: int | None = field(default=None, metadata={"help": "only the first N training tasks"})


def check_judge(cfg) -> None:
    """offline, anthropic or learned:DIR (a fitted judge folder, checked now, before training)."""
    try:
        check_judge_name(cfg.judge)
    except ValueError as e:
        raise ConfigError(f"judge {cfg.judge!r}: {e}") from None


def load_tasks(cfg):
    """The SFT records as sampling prompts, each with its gold (the completion) and input."""
    from datasets import Dataset

    from data.contract import read_jsonl

    if not Path(cfg.train_file).exists():
        raise FileNotFoundError(f"train_file {cfg.train_file} does not exist; build it with "
                                "`python -m data.sft`")
    rows = []
    for where, rec in read_jsonl(cfg.train_file, what="SFT record"):
        try:
            prompt, completion = rec["prompt"], rec["completion"]
            user = next(m["content"] for m in prompt if m["role"] == "user")
            answer = next(m["content"] for m in completion if m["role"] == "assistant")
        except (KeyError, TypeError, StopIteration):
            raise ConfigError(f"{where}: expected a conversational prompt/completion record "
                              "(python -m data.sft writes them)") from None
        parsed = parse_assistant(answer, strict=True)
        if not isinstance(parsed.result, DiscoveryResult) or parsed.problems:
            raise ConfigError(f"{where}: the completion is not a valid gold answer: "
                              f"{'; '.join(parsed.problems) or 'unparseable'}")
        task = user[len("Task: "):] if user.startswith("Task: ") else user
        rows.append({"prompt": prompt, "gold": gold_json(parsed.result), "task_input": task})
    if cfg.limit:
        rows = rows[:cfg.limit]
    if not rows:
        raise ConfigError(f"{cfg.train_file}: no training tasks")
    return Dataset.from_list(rows)


def build_judge(cfg):
    """The judge through judge.cli's option handling (shared verdict cache and defaults)."""
    import argparse

    from judge.cli import build_judge as build_eval_judge
    ns = argparse.Namespace(judge=cfg.judge, swap=False, samples=1, weights=cfg.judge_weights,
                            embedding_model=None, offline_backend=None,
                            model=cfg.judge_model if cfg.judge == "anthropic" else None,
                            cache_path=cfg.judge_cache, concurrency=cfg.judge_concurrency)
    try:
        return build_eval_judge(ns)
    except ValueError as e:
        raise ConfigError(f"judge: {e}") from None


def confirm_spend(cfg, estimate: dict) -> None:
    dollars = estimate["dollars"]
    print(f"judge {cfg.judge_model}: at most {estimate['max_judge_calls']} judge calls "
          f"(~{estimate['input_tokens']:,} input + {estimate['output_tokens']:,} output tokens), "
          f"at most {'an unpriced amount' if dollars is None else f'${dollars:.2f}'}; cached "
          "verdicts and answers failing the spec gate cost nothing", file=sys.stderr)
    if cfg.confirm_spend:
        return
    try:
        answer = input("Spend this? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfigError("not confirmed: nothing was spent (set confirm_spend: true to run "
                          "without asking)")
