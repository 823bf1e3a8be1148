"""recipes.distill_to_device end to end on the tiny stand-in against the fake Messages API:
teacher and judge both over real HTTP; a forced stop (SIGKILL) in the middle of distillation
and a resume; the confirmation prompt; and the estimate's call counts against what the fake
server actually received (no faults are scripted, so no HTTP retries and no spec-gate re-asks:
teacher requests must equal the estimate exactly, judge requests are bounded by it)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.fake_anthropic import FakeAnthropic, default_discovery, forced_tool, judge_sets, \
    task_input

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-ant-fake-recipe-0123456789"
TASKS = [
    "Repaint the garden shed before the autumn rains",
    "Organise a chess club for retired railway workers",
    "Learn to bake sourdough with a wood-fired oven",
    "Migrate the village library catalogue to a spreadsheet",
    "Train a rescue greyhound to walk calmly on a lead",
    "Set up a monthly repair cafe in the parish hall",
    "Write a family cookbook from grandmother's recipe cards",
    "Plan a canoe descent of the Dordogne with teenagers",
    "Start a beekeeping hobby on a city rooftop",
    "Record an album of sea shanties with a local choir",
    "Convert a campervan to run on solar power",
    "Build a dry stone wall along the lower paddock",
]


def teacher(body):
    return default_discovery(task_input(body))


def judge(body):
    # Prefers the gold when the candidate is not the gold itself; exercises the swap parsing.
    sets = judge_sets(body)
    same = sets["candidate"]["questions"] == sets["gold"]["questions"]
    gold_letter = "B" if sets["candidate_first"] else "A"
    return {"better": "tie" if same else gold_letter, "atomicity": 4, "specificity": 3,
            "coverage": 3, "naturalness": 4, "nonRedundancy": 4, "notes": "fake judge"}


def by_tool(srv, tool):
    return [r for r in srv.message_requests() if forced_tool(r.body) == tool]


def gold_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(l)["id"] for l in path.read_text().splitlines() if l.strip().endswith("}")]


def test_recipe_end_to_end_with_kill_and_resume(tmp_path, monkeypatch, standin_dir):
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("\n".join(TASKS) + "\n")
    out = tmp_path / "recipe"
    argv = ["--tasks", str(tasks_file), "--config", "configs/tiny-recipe.yaml", "--out", str(out)]
    with FakeAnthropic(api_key=KEY, latency=0.4,
                       responders={"record_discovery": teacher, "record_verdict": judge}) as srv:
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": srv.base_url}
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        monkeypatch.chdir(REPO)

        # 1. No answer on stdin: nothing is spent, a clear message, exit status 1.
        from recipes.distill_to_device import main, run_recipe, RecipeConfig
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        assert main(argv) == 1
        assert srv.message_requests() == []
        assert not (out / "gold.jsonl").exists()

        # 2. A forced stop in the middle of distillation.
        srv.answer_limit = 3
        proc = subprocess.Popen([sys.executable, "-m", "recipes.distill_to_device", *argv,
                                 "--yes"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # The fake answers 3 teacher requests, then holds the 2 in flight (concurrency 2): the
        # kill lands mid-distillation with nothing in transit, however loaded the box is.
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (
                len(gold_ids(out / "gold.jsonl")) == 3 and srv.held == 2):
            time.sleep(0.05)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        log = proc.communicate()[0]
        srv.lift_answer_limit()
        stopped_at = gold_ids(out / "gold.jsonl")
        assert len(stopped_at) == 3, log[-2000:]
        assert "estimate: 12 teacher calls" in log
        assert not (out / "gold.done.json").exists()
        teacher_before = len(by_tool(srv, "record_discovery"))

        # 3. Resume in-process: the estimate counts only tasks neither written nor cached.
        srv.reset_log()
        from data.corpus import read_tasks
        from train.config import load_config
        cfg = load_config(RecipeConfig, REPO / "configs" / "tiny-recipe.yaml")
        res = run_recipe(read_tasks(tasks_file), cfg, out, yes=True)
        est = res["estimate"]
        teacher_now = len(by_tool(srv, "record_discovery"))
        judge_now = len(by_tool(srv, "record_verdict"))
        assert est["teacher_calls"] == teacher_now, (est, teacher_before, stopped_at)
        assert est["teacher_calls"] <= len(TASKS) - len(stopped_at)
        # nothing paid for twice: requests before the kill whose answers were cached are free
        assert teacher_before + teacher_now >= len(TASKS)
        assert 0 < judge_now <= est["judge_calls_eval"] + est["judge_calls_prefs"]
        # The run's own account of what it paid for matches what the server saw.
        assert res["spent"] == {"teacher_calls": teacher_now, "judge_calls": judge_now}
        assert est["judge_calls_eval"] == 30 * 3 * 2
        assert all(r.credential_ok for r in srv.requests)

        ids = gold_ids(out / "gold.jsonl")
        assert sorted(ids) == sorted(set(ids)) and len(ids) == len(TASKS)
        assert stopped_at == ids[:len(stopped_at)]          # append-only: the old lines stay
        assert set(res["scores"]) == {"base", "sft", "orpo"}
        for card in res["scores"].values():
            assert 0.0 <= card["headline"] <= 1.0
        pkg = Path(res["package"])
        meta = json.loads((pkg / "metadata.json").read_text())
        assert meta["creatorDefined"]["standIn"] is True        # stand-in base: conformance only
        assert KEY not in (out / "gold.jsonl").read_text()

        # 4. A second run does nothing and sends nothing.
        srv.reset_log()
        again = run_recipe(read_tasks(tasks_file), cfg, out, yes=False)
        assert again["estimate"]["teacher_calls"] == 0
        assert again["estimate"]["judge_calls_eval"] == 0
        assert srv.message_requests() == []
        assert again["spent"] == {"teacher_calls": 0, "judge_calls": 0}
