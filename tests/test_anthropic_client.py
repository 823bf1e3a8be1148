"""The shared Anthropic client layer, against the real SDK talking HTTP to the fake server."""
from __future__ import annotations

import io
import logging
import random
import sqlite3
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from data.anthropic_client import ClaudeAPIError, ClaudeClient, forced_tool_request
from data.api_retry import RetryPolicy, backoff_delay
from data.concurrency import run_concurrently
from data.redaction import MissingKeyError, api_key_from_env, redact
from data.response_cache import ResponseCache, cache_key
from data.prices import PRICES_PATH, ModelPrice, PriceTable, UsageMeter, load_prices
from data.contract import PROMPT_HASH

try:
    from tests.fakes import FakeAnthropic, Fault
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import FakeAnthropic, Fault

KEY = "sk-ant-test-client-0123456789abcdefSECRET"
TOOL = {"name": "record_discovery", "description": "d", "input_schema": {"type": "object"}}


def params(task: str, max_tokens: int = 512) -> dict:
    return forced_tool_request(model="claude-sonnet-4-6", system="You plan.", tool=TOOL,
                               messages=[{"role": "user", "content": f"Task: {task}"}],
                               max_tokens=max_tokens)


@pytest.fixture
def fake(monkeypatch):
    with FakeAnthropic(api_key=KEY) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        yield srv


def make_client(tmp_path=None, **kw) -> tuple[ClaudeClient, list[float]]:
    slept: list[float] = []
    kw.setdefault("retry", RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.01))
    client = ClaudeClient(cache=(tmp_path / "cache.sqlite") if tmp_path else None,
                          sleep=slept.append, seed=0, **kw)
    return client, slept


def test_missing_key_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingKeyError) as e:
        api_key_from_env()
    assert "\n" not in str(e.value) and "ANTHROPIC_API_KEY" in str(e.value)
    with pytest.raises(MissingKeyError):
        ClaudeClient()


def test_base_url_from_env_key_sent_forced_tool_and_cache_control(fake):
    client, _ = make_client()
    reply = client.call(params("Plan a trip to Paris"))
    assert reply.tool_input["taskTitle"] == "Plan a trip to Paris"
    assert reply.stop_reason == "tool_use" and reply.request_id.startswith("req_fake_")
    (req,) = fake.message_requests()
    assert req.credential_ok                     # the SDK really sent our key ...
    assert KEY not in str(req.headers)           # ... and the fake's log shows it redacted
    body = req.body
    assert body["tool_choice"] == {"type": "tool", "name": "record_discovery"}
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert "temperature" not in body
    assert reply.usage["cache_creation_input_tokens"] > 0   # the fake honours the marks
    assert client.call(params("Plan a trip to Rome")).usage["cache_read_input_tokens"] > 0


def test_retries_429_529_500_and_honours_retry_after(fake):
    fake.script("Paris", Fault.rate_limit(retry_after="7"), Fault.overloaded(),
                Fault.server_error(503))
    client, slept = make_client()
    reply = client.call(params("Plan a trip to Paris"))
    assert reply.tool_input is not None
    assert [r.status for r in fake.message_requests()] == [429, 529, 503, 200]
    assert len(slept) == 3
    assert slept[0] >= 7.0                    # the server's retry-after wins over tiny backoff
    assert all(s <= 0.01 for s in slept[1:])  # capped exponential backoff otherwise


def test_retry_after_ms_and_http_date(fake):
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    fake.script("Paris", Fault.http(429, "rate_limit_error", "slow down", {"retry-after-ms": "1500"}),
                Fault.http(429, "rate_limit_error", "slow down",
                           {"retry-after": format_datetime(when, usegmt=True)}))
    client, slept = make_client()
    client.call(params("Plan a trip to Paris"))
    assert 1.5 <= slept[0] < 2.0
    assert 25 <= slept[1] <= 31


def test_timeout_is_retried(fake):
    fake.script("Paris", Fault.slow(4.0))
    client, slept = make_client(timeout=1.0)
    reply = client.call(params("Plan a trip to Paris"))
    assert reply.tool_input is not None and len(fake.message_requests()) == 2 and len(slept) == 1


def test_non_retryable_error_is_not_retried_and_retries_are_bounded(fake):
    fake.script("Paris", Fault.http(400, "invalid_request_error", "bad field"))
    fake.script("Rome", Fault.overloaded(times=None))
    client, _ = make_client()
    with pytest.raises(ClaudeAPIError) as e:
        client.call(params("Plan a trip to Paris"))
    assert e.value.status == 400 and not e.value.retryable and "bad field" in str(e.value)
    assert len(fake.message_requests()) == 1
    with pytest.raises(ClaudeAPIError) as e:
        client.call(params("Plan a trip to Rome"))
    assert e.value.retryable and "gave up after 4 attempts" in str(e.value)
    assert len(fake.message_requests()) == 1 + 4


def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(1)
    for retry in range(6):
        d = backoff_delay(retry, base=1.0, cap=8.0, retry_after=None, rng=rng)
        full = min(8.0, 2.0 ** retry)
        assert full / 2 <= d <= full
    assert backoff_delay(0, base=1.0, cap=8.0, retry_after=20.0, rng=rng) == 20.0
    delays = {backoff_delay(3, base=1.0, cap=60, retry_after=None, rng=rng) for _ in range(20)}
    assert len(delays) > 10                    # jitter: concurrent clients do not stampede


def test_response_cache_answers_without_a_request_and_survives_reopen(fake, tmp_path):
    client, _ = make_client(tmp_path)
    p = params("Plan a trip to Paris")
    key = cache_key("claude-sonnet-4-6", PROMPT_HASH, p)
    first = client.call(p, key=key, kind="distill", prompt_hash=PROMPT_HASH)
    second = client.call(p, key=key, kind="distill", prompt_hash=PROMPT_HASH)
    assert not first.cached and second.cached and second.tool_input == first.tool_input
    assert len(fake.message_requests()) == 1
    client.close()
    client2, _ = make_client(tmp_path)
    assert client2.call(p, key=key).cached and len(fake.message_requests()) == 1
    mode = sqlite3.connect(tmp_path / "cache.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode[0].lower() == "wal"
    assert cache_key("claude-haiku-4-5", PROMPT_HASH, p) != key   # the model is part of the key


def test_cache_is_safe_under_concurrent_writers(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")

    def put(i):
        cache.put(f"k{i}", {"i": i}, kind="t", model="m", prompt_hash="h")
    threads = [threading.Thread(target=put, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and cache.get("k7") == {"i": 7}


def test_prices_cost_and_config_errors(tmp_path):
    prices = load_prices(PRICES_PATH)
    p = prices.price_for("claude-sonnet-4-6")
    usage = {"input_tokens": 1_000_000, "output_tokens": 2_000_000,
             "cache_creation_input_tokens": 1_000_000, "cache_read_input_tokens": 10_000_000}
    expected = p.input + 2 * p.output + p.cache_write + 10 * p.cache_read
    assert prices.cost("claude-sonnet-4-6", usage) == pytest.approx(expected)
    assert prices.cost("claude-sonnet-4-6", usage, batch=True) == pytest.approx(expected / 2)
    assert prices.price_for("claude-sonnet-4-5-20250929") == prices.price_for("claude-sonnet-4-5")
    assert prices.cost("some-other-model", usage) is None
    meter = UsageMeter(PriceTable({"m": ModelPrice(1, 1, 1, 1)}))
    meter.add("unknown-model", usage)
    assert "unpriced" in meter.cost_text() and "unknown-model" in meter.cost_text()
    bad = tmp_path / "prices.yaml"
    bad.write_text("batch_discount: 0.5\nmodel: {}\n")
    with pytest.raises(ValueError, match=r"unknown key 'model'.*batch_discount, models"):
        load_prices(bad)
    bad.write_text("models:\n  x: {input: 1, output: 1, cache_write: 1, cache_reads: 1}\n")
    with pytest.raises(ValueError, match=r"models.x: unknown key 'cache_reads'.*cache_read"):
        load_prices(bad)


def test_key_is_redacted_from_errors_and_logs(fake):
    fake.script("Paris", Fault.echo_key())
    client, _ = make_client()
    with pytest.raises(ClaudeAPIError) as e:
        client.call(params("Plan a trip to Paris"))
    assert KEY not in str(e.value) and "[REDACTED]" in str(e.value)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("fmdistill.test")
    log.addHandler(handler)
    try:
        log.warning("header was %s", f"Bearer {KEY}")
        try:
            raise RuntimeError(f"boom {KEY}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert KEY not in stream.getvalue() and "[REDACTED]" in stream.getvalue()
    assert redact("x sk-ant-api03-abcdefghijk y") == "x [REDACTED] y"  # any key-shaped text


def test_concurrency_is_bounded(fake):
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    overlapped = threading.Event()

    def responder(body):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] >= 2:
                overlapped.set()
        # Hold each answer until two requests were in flight together (not a fixed sleep that a
        # loaded box could outrun); the timeout only bounds a client that never overlaps.
        overlapped.wait(timeout=120)
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return None                      # then the default answer
    fake.responder = responder
    client, _ = make_client()
    results = list(run_concurrently(lambda i: client.call(params(f"Plan trip {i}")),
                                    range(24), 4))
    assert len(results) == 24 and all(exc is None for _i, _r, exc in results)
    assert 2 <= state["peak"] <= 4
