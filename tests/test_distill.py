"""python -m data.distill against the fake Messages API: faults, resume after SIGKILL, batches,
and the API key never reaching anything the command writes."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.api_retry import RetryPolicy
from data.prices import load_prices
from data.appendlog import AppendLog, read_records
from data.contract import ContractError, PROMPT_HASH, load_cases, spec_violations
from data.distill import batch_state_path, distill_tasks, main, request_key

try:
    from tests.fakes import FakeAnthropic, Fault, task_input
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic, Fault, task_input

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-ant-test-distill-9f8e7d6c5b4a39281SECRET"
FAST = RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.01)


@pytest.fixture
def fake(monkeypatch):
    with FakeAnthropic(api_key=KEY) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def task(i: int) -> dict:
    return {"id": f"t{i:03d}", "input": f"Plan project {i:03d} for the team offsite"}


def lines_of(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path} ends with a partial line"
    return [json.loads(line) for line in raw.decode().splitlines()]


def cli(*args, env_extra=None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "data.distill", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sixty_tasks_with_every_fault(fake, tmp_path):
    tasks = [task(i) for i in range(60)]
    faults = {0: [Fault.rate_limit("0"), Fault.rate_limit("0")], 1: [Fault.overloaded()],
              2: [Fault.server_error(500)], 3: [Fault.slow(60.0)], 4: [Fault.six_questions()],
              5: [Fault.emoji_title()], 6: [Fault.max_tokens()], 7: [Fault.refusal()],
              8: [Fault.six_questions(times=None)], 9: [Fault.overloaded(times=None)]}
    for i, t in enumerate(tasks):
        fake.script(t["input"], *faults[i % 10])
    out = tmp_path / "gold.jsonl"
    summary = distill_tasks(tasks, out, cache_path=tmp_path / "cache.sqlite", concurrency=8,
                            retry=FAST, timeout=4.0, progress=False)

    gold, quarantine = lines_of(out), lines_of(tmp_path / "gold.quarantine.jsonl")
    gold_ids, q_ids = [g["id"] for g in gold], [q["id"] for q in quarantine]
    assert len(gold_ids) == len(set(gold_ids)) and len(q_ids) == len(set(q_ids))
    assert sorted(gold_ids + q_ids) == [t["id"] for t in tasks]       # every task, once
    assert {int(i[1:]) % 10 for i in q_ids} == {7, 8, 9}
    assert (summary.written, summary.quarantined, summary.failed) == (42, 12, 6)
    for case in load_cases(out):                                       # all pass the gate
        assert not spec_violations(case.gold) and case.source == "teacher:claude-sonnet-4-6"
    by_id = {g["id"]: g for g in gold}
    prov = by_id["t004"]["provenance"]
    assert prov["prompt_hash"] == PROMPT_HASH and prov["attempts"] == 2
    assert prov["request_id"].startswith("req_fake_") and prov["usage"]["output_tokens"] > 0
    reasons = {q["id"]: (q["kind"], q["reason"]) for q in quarantine}
    assert reasons["t007"][0] == "refused" and "refused" in reasons["t007"][1]
    assert reasons["t008"][0] == "invalid" and "has 6 questions" in reasons["t008"][1]
    assert reasons["t009"][0] == "failed" and "529" in reasons["t009"][1]

    # The failing answer was fed back as a tool_result error; a cut-off answer got more room.
    t4 = [r.body for r in fake.message_requests() if task_input(r.body) == tasks[4]["input"]]
    feedback = t4[1]["messages"][-1]["content"][0]
    assert feedback["type"] == "tool_result" and feedback["is_error"]
    assert "has 6 questions" in feedback["content"]
    t6 = [r.body for r in fake.message_requests() if tasks[6]["input"] in json.dumps(r.body)]
    assert t6[1]["max_tokens"] == 2 * t6[0]["max_tokens"]
    assert "cut off" in json.dumps(t6[1]["messages"])

    # Re-run: only the failed tasks are tried again; finished ones cost nothing.
    before = out.read_bytes()
    fake.reset_log()
    again = distill_tasks(tasks, out, cache_path=tmp_path / "cache.sqlite", concurrency=8,
                          retry=FAST, timeout=4.0, progress=False)
    asked = {task_input(r.body) for r in fake.message_requests()}
    assert asked == {t["input"] for i, t in enumerate(tasks) if i % 10 == 9}
    assert again.skipped == 54 and again.written == 0 and again.failed == 6
    assert out.read_bytes() == before
    assert len(lines_of(tmp_path / "gold.quarantine.jsonl")) == 18    # no duplicate entries


def test_rerun_after_fix_uses_cache_then_writes(fake, tmp_path):
    """A task that failed at the API is retried; steps already paid for come from the cache."""
    tasks = [task(1)]
    fake.script(tasks[0]["input"], Fault.six_questions(), Fault.overloaded(times=4))
    out = tmp_path / "gold.jsonl"
    s1 = distill_tasks(tasks, out, cache_path=tmp_path / "c.sqlite", retry=FAST, progress=False)
    assert s1.failed == 1 and lines_of(out) == []
    fake.reset_log()
    s2 = distill_tasks(tasks, out, cache_path=tmp_path / "c.sqlite", retry=FAST, progress=False)
    (resent,) = fake.message_requests()        # only the feedback turn: the first is cached
    assert len(resent.body["messages"]) == 3 and "has 6 questions" in json.dumps(resent.body)
    assert s2.written == 1
    assert lines_of(tmp_path / "gold.quarantine.jsonl") == []


def test_sigkill_mid_run_then_restart_repeats_no_finished_request(fake, tmp_path):
    # 8 answers, then the fake holds the 3 requests in flight: the kill lands mid-run for sure.
    fake.answer_limit = 8
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(task(i)) + "\n" for i in range(30)))
    out, cache = tmp_path / "gold.jsonl", tmp_path / "cache.sqlite"
    proc = cli("--tasks", str(tasks_file), "--out", str(out), "--cache", str(cache),
               "--concurrency", "3", "--retry-base-delay", "0.001", "--yes", "--no-progress")
    deadline = time.time() + 300          # a bound for a broken run, never reached by a good one
    while time.time() < deadline and proc.poll() is None and not (
            fake.held == 3 and out.exists() and out.read_text().count("\n") == 8):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fake.lift_answer_limit()
    finished = {r["id"] for r in lines_of(out)}
    assert len(finished) == 8
    with open(out, "ab") as fh:                       # what a kill inside write() leaves
        fh.write(b'{"id": "t029", "input": "Plan proj')
    paid = {row[0] for row in sqlite3.connect(cache).execute("SELECT key FROM responses")}
    assert len(paid) >= len(finished)

    fake.reset_log()
    summary = distill_tasks([task(i) for i in range(30)], out, cache_path=cache, concurrency=3,
                            retry=FAST, progress=False)
    resent = fake.message_requests()
    assert not {request_key(r.body) for r in resent} & paid     # nothing paid for twice
    done_inputs = {task(int(i[1:]))["input"] for i in finished}
    assert not {task_input(r.body) for r in resent} & done_inputs
    final = lines_of(out)                                       # torn line gone, all complete
    assert sorted(r["id"] for r in final) == [f"t{i:03d}" for i in range(30)]
    assert summary.skipped == len(finished) and summary.written == 30 - len(finished)
    fake.reset_log()
    distill_tasks([task(i) for i in range(30)], out, cache_path=cache, progress=False)
    assert fake.message_requests() == []                       # an immediate re-run: 0
    fresh = tmp_path / "again.jsonl"                            # every answer is in the cache
    distill_tasks([task(i) for i in range(30)], fresh, cache_path=cache, progress=False)
    assert fake.message_requests() == [] and len(lines_of(fresh)) == 30


def test_ctrl_c_stops_cleanly_and_resumes(fake, tmp_path):
    # The fake answers 4 requests, then holds further ones open: SIGINT is sent while the run is
    # provably mid-way (4 lines written, 2 requests in flight) on an idle box or a loaded one.
    # Then the held requests are answered, as a real API would: a Ctrl-C'd run waits for them so
    # that what is being paid for lands in the cache, and writes no more lines.
    fake.answer_limit = 4
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("".join(task(i)["input"] + "\n" for i in range(20)))
    out, cache = tmp_path / "gold.jsonl", tmp_path / "cache.sqlite"
    args = ["--tasks", str(tasks_file), "--out", str(out), "--cache", str(cache),
            "--concurrency", "2", "--yes", "--no-progress"]
    proc = cli(*args)
    deadline = time.time() + 300          # a bound for a broken run, never reached by a good one
    while time.time() < deadline and proc.poll() is None and not (
            fake.held == 2 and out.exists() and out.read_text().count("\n") == 4):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and time.time() < deadline:
        fake.release_held()               # answers only what is in flight; the run cannot finish
        time.sleep(0.02)
    stdout, _stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stdout
    finished = len(lines_of(out))
    assert 4 <= finished < 20
    paid = {row[0] for row in sqlite3.connect(cache).execute("SELECT key FROM responses")}
    assert len(paid) >= finished + 2      # the two in flight at Ctrl-C were kept
    fake.lift_answer_limit()
    fake.reset_log()
    assert main(args) == 0
    assert not {request_key(r.body) for r in fake.message_requests()} & paid
    assert len(lines_of(out)) == 20


def test_batch_end_to_end(fake, tmp_path):
    tasks = [task(i) for i in range(12)]
    fake.script(tasks[1]["input"], Fault.six_questions())
    fake.script(tasks[2]["input"], Fault.refusal())
    fake.script(tasks[3]["input"], Fault.overloaded())
    out = tmp_path / "gold.jsonl"
    summary = distill_tasks(tasks, out, batch=True, cache_path=tmp_path / "c.sqlite",
                            poll_interval=0.01, progress=False)
    paths = [(r.method, r.path) for r in fake.requests]
    assert ("POST", "/v1/messages") not in paths
    assert paths.count(("POST", "/v1/messages/batches")) == 2     # round 2 = the feedback retry
    gold = {g["id"]: g for g in lines_of(out)}
    assert set(gold) == {t["id"] for t in tasks} - {"t002", "t003"}
    assert gold["t001"]["provenance"]["attempts"] == 2
    assert gold["t000"]["provenance"]["batch_id"].startswith("msgbatch_")
    quarantine = {q["id"]: q for q in lines_of(tmp_path / "gold.quarantine.jsonl")}
    assert quarantine["t002"]["kind"] == "refused"
    assert quarantine["t003"]["kind"] == "failed" and "overloaded" in quarantine["t003"]["reason"]
    second = fake.batch_requests()[-1]
    assert second["custom_id"].endswith("-a2") and second["custom_id"].startswith("t001-")
    expected = load_prices().cost("claude-sonnet-4-6", summary.usage, batch=True)
    assert summary.cost_usd == pytest.approx(expected)            # half price
    assert not batch_state_path(out).exists()


def test_batch_restart_between_submit_and_collect(fake, tmp_path):
    fake.hold_batches = True
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("".join(task(i)["input"] + "\n" for i in range(5)))
    out, cache = tmp_path / "gold.jsonl", tmp_path / "c.sqlite"
    args = ["--tasks", str(tasks_file), "--out", str(out), "--cache", str(cache), "--batch",
            "--poll-interval", "0.05", "--yes", "--no-progress"]
    proc = cli(*args)
    state = batch_state_path(out)
    deadline = time.time() + 60
    while time.time() < deadline and not state.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    batch_id = json.loads(state.read_text())["batches"][0]["id"]
    submits = [r for r in fake.requests if r.method == "POST"]
    assert len(submits) == 1 and submits[0].path == "/v1/messages/batches"

    fake.release_batches()
    fake.reset_log()
    assert main(args) == 0                                       # the same command, again
    assert all(r.method == "GET" for r in fake.requests)          # resumed, not resubmitted
    assert any(batch_id in r.path for r in fake.requests)
    assert len(lines_of(out)) == 5 and not state.exists()
    fake.reset_log()
    assert main(args) == 0
    assert fake.requests == []


def test_key_never_written_or_printed(fake, tmp_path):
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("Plan a trip to Paris\nPlan a trip to Rome\nPlan a garden party\n")
    fake.script("Rome", Fault.echo_key(times=None))          # a gateway echoing the key
    fake.script("garden", Fault.six_questions(times=None))
    outdir = tmp_path / "run"
    args = ["--tasks", str(tasks_file), "--out", str(outdir / "gold.jsonl"), "--cache",
            str(outdir / "cache.sqlite"), "--retry-base-delay", "0.001", "--yes"]
    done = subprocess.run([sys.executable, "-m", "data.distill", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ,
                                                                 "ANTHROPIC_LOG": "debug"})
    assert done.returncode == 1                              # one task failed at the API
    assert all(r.credential_ok for r in fake.requests)       # the key was really sent
    quarantine = (outdir / "gold.quarantine.jsonl").read_text()
    assert "[REDACTED]" in quarantine                        # the echoed key was caught
    written = sorted(p for p in outdir.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"gold.jsonl", "gold.quarantine.jsonl", "cache.sqlite"}
    for p in written:
        assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in done.stdout and KEY not in done.stderr
    assert "DEBUG" in done.stderr                            # the SDK's debug log was on


def test_missing_key_fails_before_any_work(fake, tmp_path, monkeypatch, capsys):
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("Plan a trip to Paris\n")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert main(["--tasks", str(tasks_file), "--out", str(tmp_path / "gold.jsonl"), "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ANTHROPIC_API_KEY" in err
    assert not (tmp_path / "gold.jsonl").exists() and fake.requests == []


def test_retry_quarantined_bypasses_the_cache(fake, tmp_path):
    tasks = [task(7)]
    fake.script(tasks[0]["input"], Fault.refusal())
    out = tmp_path / "gold.jsonl"
    distill_tasks(tasks, out, cache_path=tmp_path / "c.sqlite", progress=False)
    assert distill_tasks(tasks, out, cache_path=tmp_path / "c.sqlite",
                         progress=False).skipped == 1          # quarantined: left alone
    s = distill_tasks(tasks, out, cache_path=tmp_path / "c.sqlite", progress=False,
                      retry_quarantined=True)
    assert s.written == 1 and len(fake.message_requests()) == 2
    assert lines_of(tmp_path / "gold.quarantine.jsonl") == []


def test_torn_tail_is_truncated_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "inp')
    with AppendLog(path) as log:
        assert log.repaired_bytes == len(b'{"id": 3, "inp')
        log.append({"id": 4})
    assert [o["id"] for _w, o in read_records(path)] == [1, 2, 4]
    path.write_bytes(b'{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ContractError, match=r"x.jsonl:2"):
        read_records(path)


def test_resume_refuses_an_id_that_now_means_another_task(fake, tmp_path):
    out = tmp_path / "gold.jsonl"
    distill_tasks([task(1)], out, cache_path=tmp_path / "c.sqlite", progress=False)
    moved = {"id": "t001", "input": "Plan something else entirely"}
    with pytest.raises(ContractError, match=r"'t001' is already there for a different input"):
        distill_tasks([moved], out, cache_path=tmp_path / "c.sqlite", progress=False)
