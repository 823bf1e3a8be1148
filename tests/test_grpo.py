"""rl.grpo / train.grpo: the judge reward (spec gate, then case quality against the gold), the
Anthropic judge as reward through the fake Messages API with its cost bound, config refusals,
and GRPO and RLOO runs on the tiny stand-in from the tiny SFT adapter."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.contract import DiscoveryResult, Question, render_assistant
from judge.judges import get_judge
from judge.verdict import case_quality
from rl.reward import PlannerReward, gold_json, judge_cost_estimate
from train.config import load_config

try:
    from tests.fakes import FakeAnthropic
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path
    from fakes import FakeAnthropic

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-ant-test-grpo-77aa66bb55cc44ddSECRET"


def result(title: str, topic: str, n: int = 7) -> DiscoveryResult:
    return DiscoveryResult(title, f"A plan for {topic}.", tuple(
        Question(f"What {kind} do you have for the {topic}?", "It shapes the plan.")
        for kind in ("budget", "dates", "group size", "pace", "must-sees", "lodging style",
                     "dietary needs")[:n]))


PARIS = result("Plan a trip to Paris", "Paris trip")
GARDEN = result("Start a vegetable garden", "vegetable garden")


def completion(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def call(reward, texts: list[str], gold=PARIS, task="Plan a trip to Paris") -> list[float]:
    n = len(texts)
    return reward([None] * n, [completion(t) for t in texts], gold=[gold_json(gold)] * n,
                  task_input=[task] * n)


def test_failing_answers_get_the_minimum_and_the_gold_beats_another_tasks_answer():
    reward = PlannerReward(get_judge("offline"), fail_reward=-1.0)
    six = render_assistant(result("Plan a trip to Paris", "Paris trip", n=6))
    gold, other, broken, short = call(reward, [render_assistant(PARIS), render_assistant(GARDEN),
                                               "{not json", six])
    assert broken == short == -1.0
    assert 0.0 <= other < gold <= 1.0
    s = reward.stats.to_dict()
    assert (s["completions"], s["spec_failed"], s["judged"]) == (4, 2, 2)
    assert reward.__name__ == "planner_quality"


def test_anthropic_judge_as_reward_sends_only_passing_answers(monkeypatch, tmp_path):
    from judge.judges.anthropic import AnthropicJudge
    with FakeAnthropic(api_key=KEY) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        srv.responders["record_verdict"] = lambda body: {
            "better": "tie", "atomicity": 4, "specificity": 4, "coverage": 3,
            "naturalness": 5, "nonRedundancy": 4, "notes": "fine"}
        judge = AnthropicJudge(cache_path=tmp_path / "judge.sqlite", retry_base_delay=0.001,
                               progress=False)
        reward = PlannerReward(judge)
        out = call(reward, [render_assistant(PARIS), "no answer here"])
        again = call(reward, [render_assistant(PARIS)])       # cached: no second request
        assert len(srv.message_requests()) == 1
        judge.close()
    expected = 0.5 * ((4 + 4 + 3 + 5 + 4) / 5 - 1) / 4 + 0.5 * 0.5
    assert out == pytest.approx([expected, 0.0]) and again == pytest.approx([expected])
    assert KEY not in json.dumps(reward.stats.to_dict())


def test_cost_estimate_bounds_every_completion():
    one, many = judge_cost_estimate(1, "claude-sonnet-4-6"), judge_cost_estimate(
        400, "claude-sonnet-4-6", swap=True)
    assert many["max_judge_calls"] == 800 and many["input_tokens"] == 800 * one["input_tokens"]
    assert one["dollars"] is not None and many["dollars"] == pytest.approx(800 * one["dollars"])
    assert judge_cost_estimate(10, "no-such-model")["dollars"] is None


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.grpo", *args], cwd=REPO, text=True,
                          capture_output=True, input=stdin, timeout=120)


@pytest.mark.parametrize("override, message", [
    (["--method", "ppo"], "method 'ppo': choose one of grpo, rloo"),
    (["--num_generations", "1"], "num_generations must be >= 2"),
    (["--num_generations", "3"], "must be a multiple of num_generations = 3"),
    (["--judge", "gpt"], "judge 'gpt': choose one of offline, anthropic"),
])
def test_bad_settings_exit_2_through_the_train_alias(override, message):
    p = cli("--config", "configs/tiny-grpo.yaml", *override)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_anthropic_judge_asks_before_spending(sft_data_dir, monkeypatch):
    p = cli("--config", "configs/tiny-grpo.yaml", "--judge", "anthropic",
            "--train_file", str(sft_data_dir / "train.jsonl"), stdin="n\n")
    assert p.returncode == 2 and "not confirmed: nothing was spent" in p.stderr
    assert "at most 16 judge calls" in p.stderr       # 4 steps x 4 answers


def grpo_config(method: str, standin, sft_data, sft_run, out: Path, **kw):
    from rl.grpo import GRPORunConfig
    base = {"model_name_or_path": str(standin), "adapter_init": str(sft_run),
            "train_file": str(sft_data / "train.jsonl"), "output_dir": str(out),
            "progress": False, "max_steps": 2, "save_strategy": "no",
            "max_completion_length": 256}
    base.update(kw)
    return load_config(GRPORunConfig, REPO / "configs" / f"tiny-{method}.yaml", base)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "rloo", "adversarial"])
def test_run_from_the_sft_adapter_writes_a_run_folder_that_exports(
        method, standin_dir, sft_data_dir, tiny_sft_run, tmp_path):
    from safetensors.torch import load_file

    from export.package import export_adapter
    from rl.grpo import run_grpo
    out = run_grpo(grpo_config(method, standin_dir, sft_data_dir, tiny_sft_run, tmp_path / method))
    run = json.loads((out / "run.json").read_text())
    m = run["metrics"]
    assert run["stage"] == ("grpo" if method == "adversarial" else method)
    assert m["global_step"] == 2 and len(m["reward"]) == 2
    assert m["reward_stats"]["completions"] == 2 * 4          # steps x answers per step
    if method == "adversarial":
        assert m["judge"] is None and m["reward_source"] == "discriminator"
        assert len(m["discriminator"]) == 2                    # one update per reward call
    else:
        assert m["judge"].startswith("offline") and m["judge_spent"] is None
    assert all(0.0 <= r <= 1.0 for r in m["reward"])
    assert run["started_from"]["run_dir"] == str(tiny_sft_run)
    assert run["data"]["ruler_leaks"] == [] and run["data"]["inputs"]
    assert (out / "reward_curve.png").is_file()
    assert load_file(str(out / "adapter_model.safetensors")).keys() == load_file(
        str(tiny_sft_run / "adapter_model.safetensors")).keys()
    res = export_adapter(out, f"planner_{method}", tmp_path, allow_stand_in=True, progress=False)
    assert (res.path / "adapter_weights.bin").stat().st_size == res.bytes


def test_reward_matches_the_ruler_metric():
    """The reward of a passing answer is exactly eval's case quality for the same verdict."""
    judge = get_judge("offline")
    reward = PlannerReward(judge)
    (r,) = call(reward, [render_assistant(GARDEN)], gold=GARDEN, task="Start a vegetable garden")
    from judge.judges import JudgeItem
    (v,) = judge.judge_many([JudgeItem("Start a vegetable garden", GARDEN, GARDEN)])
    assert r == pytest.approx(case_quality(v, spec_passed=True))


def test_the_discriminator_learns_gold_from_student_and_rewards_gold_like_answers():
    from rl.discriminator import Discriminator, DiscriminatorReward
    sloppy = DiscoveryResult("Plan a trip to Paris", "Stuff.", tuple(
        Question(f"Anything else thing {i}?", "") for i in range(7)))
    reward = DiscriminatorReward(Discriminator(lr=0.05, steps=5, seed=0), fail_reward=-1.0)
    before = call(reward, [render_assistant(PARIS), render_assistant(sloppy), "{bad"])
    for _ in range(4):     # the policy keeps producing the sloppy answer; the gold is PARIS
        call(reward, [render_assistant(sloppy)] * 2)
    gold_like, student_like, broken = call(reward, [render_assistant(PARIS),
                                                    render_assistant(sloppy), "{bad"])
    assert broken == before[2] == -1.0
    assert abs(before[0] - before[1]) < 0.05                   # untrained: no opinion yet
    assert gold_like > 0.6 > 0.4 > student_like
    assert reward.d.history[-2]["accuracy"] == 1.0                # gold vs sloppy, separated
    assert reward.stats.completions == 3 + 4 * 2 + 3 and reward.stats.spec_failed == 2
