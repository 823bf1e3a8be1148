"""rl.rft / train.rft: which samples rejection sampling keeps (spec gate, judge, margin over the
greedy answer), config refusals, and two rounds on the tiny stand-in that resume without
redoing a finished round."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.contract import DiscoveryResult, Question, render_assistant
from judge.judges import get_judge
from rl.reward import PlannerReward, gold_json
from rl.rft import keep_best
from train.config import load_config

REPO = Path(__file__).resolve().parent.parent


def result(title: str, topic: str, n: int = 7) -> DiscoveryResult:
    return DiscoveryResult(title, f"A plan for {topic}.", tuple(
        Question(f"What {kind} do you have for the {topic}?", "It shapes the plan.")
        for kind in ("budget", "dates", "group size", "pace", "must-sees", "lodging style",
                     "dietary needs")[:n]))


PARIS, GARDEN = result("Plan a trip to Paris", "Paris trip"), result("Start a garden", "garden")


def test_keeps_the_best_passing_sample_only_when_it_beats_greedy_by_the_margin():
    tasks = [{"task_input": "Plan a trip to Paris", "gold": gold_json(PARIS)},
             {"task_input": "Start a garden", "gold": gold_json(GARDEN)}]
    greedy = ["{broken", render_assistant(GARDEN)]        # task 2's greedy is already the gold
    samples = [[render_assistant(GARDEN), render_assistant(PARIS)],
               [render_assistant(PARIS), "{broken"]]
    kept, summary = keep_best(PlannerReward(get_judge("offline")), tasks, greedy, samples, 0.05)
    assert summary["tasks"] == 2 and summary["improved"] == 1 and len(kept) == 1
    (row,) = kept
    assert row["completion"][0]["content"] == render_assistant(PARIS)
    assert row["prompt"][-1]["content"].endswith("Plan a trip to Paris")
    assert row["quality"] >= row["greedy_quality"] + 0.05
    assert summary["reward_stats"]["completions"] == 6
    assert summary["reward_stats"]["spec_failed"] == 2
    none, _ = keep_best(PlannerReward(get_judge("offline")), tasks, greedy, samples, 1.0)
    assert none == []                                     # no sample beats greedy by 1.0


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.rft", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_bad_settings_exit_2_through_the_train_alias(tmp_path):
    p = cli("--config", "configs/tiny-rft.yaml", "--margin", "2")
    assert p.returncode == 2 and "margin must be within 0..1" in p.stderr, p.stderr
    p = cli("--config", "configs/tiny-rft.yaml", "--adapter_init", str(tmp_path))
    assert p.returncode == 2 and "not a PEFT adapter folder" in p.stderr, p.stderr


@pytest.mark.slow
def test_two_rounds_then_a_rerun_that_redoes_nothing(standin_dir, sft_data_dir, tiny_sft_run,
                                                     tmp_path):
    from export.package import export_adapter
    from rl.rft import RFTRunConfig, run_rft
    cfg = lambda: load_config(RFTRunConfig, REPO / "configs" / "tiny-rft.yaml", {
        "model_name_or_path": str(standin_dir), "adapter_init": str(tiny_sft_run),
        "train_file": str(sft_data_dir / "train.jsonl"), "val_file": None,
        "output_dir": str(tmp_path / "rft"), "progress": False, "rounds": 2, "limit": 6,
        "samples_per_task": 2, "max_new_tokens": 256, "max_steps": 1, "save_strategy": "no"})
    out = run_rft(cfg())
    log = json.loads((out / "rft.json").read_text())
    assert [r["round"] for r in log["rounds"]] == [1, 2]
    first, second = log["rounds"]
    assert first["student"] == str(tiny_sft_run) and second["student"].endswith("round-1")
    for r in log["rounds"]:
        assert r["tasks"] == 6 and 0 <= r["improved"] <= 6
        assert r["reward_stats"]["completions"] == 6 * 3       # greedy + 2 samples per task
        n_gold = sum(1 for _ in open(sft_data_dir / "train.jsonl"))
        assert r["records"] == n_gold + r["improved"]
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "rft" and run["metrics"]["rft"]["rounds"] == log["rounds"]
    assert run["data"]["ruler_leaks"] == []
    stamp = (out / "rounds" / "round-1" / "run.json").stat().st_mtime_ns
    run_rft(cfg())                                             # both rounds are done
    assert (out / "rounds" / "round-1" / "run.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "rft.json").read_text()) == log
    res = export_adapter(out, "planner_rft", tmp_path, allow_stand_in=True, progress=False)
    assert (res.path / "adapter_weights.bin").stat().st_size == res.bytes
