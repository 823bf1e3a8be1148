"""AnthropicJudge against the fake Messages API: order, swap rule, samples, cache, malformed
verdicts, and the judged-record export."""
from __future__ import annotations

import json
import threading

import pytest

from data.redaction import MissingKeyError
from data.contract import (
    JUDGE_PROMPT_HASH, JUDGE_SYSTEM_PROMPT, DiscoveryResult, Question, judge_user_message,
)
from judge.judges import JudgeItem, get_judge
from judge.judges.anthropic import AnthropicJudge, export_records

try:
    from tests.fakes import FakeAnthropic, Fault, judge_sets
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic, Fault, judge_sets

KEY = "sk-ant-test-judge-5a4b3c2d1e0f9988SECRET"


def result(title: str, prefix: str) -> DiscoveryResult:
    return DiscoveryResult(title, f"{title}.", tuple(
        Question(f"{prefix} question number {i} about it?", "why") for i in range(1, 8)))


GOLD = result("Plan a trip to Paris", "Gold")
CAND = result("Paris trip plan", "Cand")
ITEM = JudgeItem("Plan a trip to Paris", GOLD, CAND)


def verdict(better: str, score: int = 3, notes: str = "ok") -> dict:
    return {"better": better, "atomicity": score, "specificity": score, "coverage": score,
            "naturalness": score, "nonRedundancy": score, "notes": notes}


@pytest.fixture
def fake(monkeypatch):
    with FakeAnthropic(api_key=KEY) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def judge(tmp_path, **kw) -> AnthropicJudge:
    kw.setdefault("retry_base_delay", 0.001)
    return AnthropicJudge(cache_path=tmp_path / "judge.sqlite", **kw)


def test_request_and_normal_order(fake, tmp_path):
    fake.responders["record_verdict"] = lambda body: verdict("B", 4)
    j = judge(tmp_path)
    assert j.name == "anthropic:claude-sonnet-4-6" and j.prompt_hash == JUDGE_PROMPT_HASH
    (v,) = j.judge_many([ITEM])
    assert v.pairwise == "candidate" and v.rubric["coverage"] == 4 and v.judge == j.name
    (req,) = fake.message_requests()
    assert req.body["system"][0]["text"] == JUDGE_SYSTEM_PROMPT
    assert req.body["tool_choice"] == {"type": "tool", "name": "record_verdict"}
    assert req.body["messages"][0]["content"] == judge_user_message(ITEM.input, GOLD, CAND, False)
    fake.responders["record_verdict"] = lambda body: verdict("A")
    assert judge(tmp_path / "other").judge_many([ITEM])[0].pairwise == "gold"


def test_swap_disagreement_is_a_tie_with_averaged_rubric(fake, tmp_path):
    # A position-biased judge: always prefers SET A, and scores whichever set is B 2 or 4.
    fake.responders["record_verdict"] = lambda body: verdict(
        "A", 4 if judge_sets(body)["candidate_first"] else 2)
    (v,) = judge(tmp_path, swap=True).judge_many([ITEM])
    assert v.pairwise == "tie" and v.rubric["atomicity"] == 3.0
    assert v.extra["swap_disagreements"] == 1
    orders = sorted(judge_sets(r.body)["candidate_first"] for r in fake.message_requests())
    assert orders == [False, True]


def test_swap_agreement_keeps_the_verdict(fake, tmp_path):
    # A consistent judge that prefers the candidate wherever it is shown.
    fake.responders["record_verdict"] = lambda body: verdict(
        "A" if judge_sets(body)["candidate_first"] else "B", 5)
    (v,) = judge(tmp_path, swap=True).judge_many([ITEM])
    assert v.pairwise == "candidate" and v.rubric["coverage"] == 5.0


def test_samples_majority_and_mean(fake, tmp_path):
    answers = iter([verdict("B", 5), verdict("A", 2), verdict("B", 5)])
    lock = threading.Lock()

    def responder(body):
        with lock:
            return next(answers)
    fake.responders["record_verdict"] = responder
    (v,) = judge(tmp_path, samples=3, concurrency=1).judge_many([ITEM])
    assert v.pairwise == "candidate" and v.rubric["naturalness"] == pytest.approx(4.0)
    assert len(fake.message_requests()) == 3
    answers2 = iter([verdict("B"), verdict("A")])
    fake.responders["record_verdict"] = lambda body: next(answers2)
    (v2,) = judge(tmp_path / "two", samples=2, concurrency=1).judge_many([ITEM])
    assert v2.pairwise == "tie"                       # no strict majority


def test_rescoring_hits_the_cache(fake, tmp_path):
    fake.responders["record_verdict"] = lambda body: verdict("B", 4)
    items = [ITEM, JudgeItem("Plan a trip to Rome", GOLD, CAND)]
    first = judge(tmp_path, swap=True, samples=2).judge_many(items)
    assert len(fake.message_requests()) == 2 * 2 * 2
    fake.reset_log()
    again = judge(tmp_path, swap=True, samples=2).judge_many(items)
    assert fake.message_requests() == []
    assert [v.to_dict()["rubric"] for v in again] == [v.to_dict()["rubric"] for v in first]
    other = JudgeItem("Plan a trip to Rome", GOLD, result("Rome trip", "Other"))
    judge(tmp_path).judge_many([other])
    assert len(fake.message_requests()) == 1          # a new candidate is a new question


def test_malformed_output_is_retried_then_an_error(fake, tmp_path):
    fake.script("Paris", Fault.tool_input({"better": "B"}), Fault.no_tool_call())
    (v,) = judge(tmp_path).judge_many([ITEM])
    assert v.pairwise == "tie" and len(fake.message_requests()) == 3   # third try was valid
    fake.reset_log()
    bad = dict(verdict("B"), atomicity="5")           # wrong type
    fake.script("Rome", Fault.tool_input(bad, times=None))
    item = JudgeItem("Plan a trip to Rome", GOLD, CAND)
    (err,) = judge(tmp_path, max_attempts=3).judge_many([item])
    assert isinstance(err, str) and "malformed" in err and "atomicity" in err
    assert len(fake.message_requests()) == 3
    fake.reset_log()
    judge(tmp_path).judge_many([item])                # errors are not cached
    assert len(fake.message_requests()) == 3


def test_scores_are_clamped(fake, tmp_path):
    fake.responders["record_verdict"] = lambda body: dict(verdict("tie", 9), coverage=0)
    (v,) = judge(tmp_path).judge_many([ITEM])
    assert v.rubric["atomicity"] == 5.0 and v.rubric["coverage"] == 1.0


def test_api_error_becomes_an_error_string(fake, tmp_path):
    fake.script("Paris", Fault.overloaded(times=None))
    (err,) = judge(tmp_path, max_retries=1).judge_many([ITEM])
    assert isinstance(err, str) and "529" in err and len(fake.message_requests()) == 2


def test_get_judge_and_missing_key(fake, tmp_path, monkeypatch):
    j = get_judge("anthropic", cache_path=tmp_path / "c.sqlite", samples=2)
    assert isinstance(j, AnthropicJudge) and j.samples == 2
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(MissingKeyError):
        AnthropicJudge(cache_path=tmp_path / "c.sqlite")


def test_export_records(fake, tmp_path):
    fake.responders["record_verdict"] = lambda body: verdict(
        "A" if judge_sets(body)["candidate_first"] else "B", 4, "too generic")
    six = DiscoveryResult("Rome trip", "x", CAND.questions[:6])
    items = [ITEM, JudgeItem("Plan a trip to Rome", GOLD, six)]
    verdicts = judge(tmp_path, swap=True).judge_many(items)
    out = tmp_path / "records.jsonl"
    assert export_records(tmp_path / "judge.sqlite", out) == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_input = {r["input"]: r for r in records}
    paris = by_input["Plan a trip to Paris"]
    assert paris["verdict"]["pairwise"] == verdicts[0].pairwise == "candidate"
    assert paris["verdict"]["rubric"]["coverage"] == 4.0 and paris["verdict"]["notes"] == "too generic"
    assert paris["spec"] == {"passed": True, "violations": []}
    assert paris["candidate"]["taskTitle"] == "Paris trip plan"
    assert by_input["Plan a trip to Rome"]["spec"]["passed"] is False
    assert DiscoveryResult.from_dict(paris["gold"]) == GOLD
