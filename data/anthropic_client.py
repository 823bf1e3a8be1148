"""The one Anthropic client layer shared by teacher distillation and the Sonnet judge.

Why our own layer over the SDK: distillation is the only stage that costs money, so every call
goes through one place that (1) reads the key from the environment and keeps it out of every
log, error, record and cache, (2) retries 429/529/5xx/timeouts itself with exponential backoff
and jitter that honours `retry-after` (the SDK runs with max_retries=0 so retries are counted
and testable here), (3) forces a tool call with prompt caching on the system prompt and tool
schema, (4) answers repeated requests from a content-addressed SQLite cache, and (5) meters
tokens and dollars from configs/prices.yaml.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import anthropic

from data.prices import PRICES_PATH, PriceTable, UsageMeter, load_prices, usage_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_CACHE_PATH = REPO_ROOT / ".cache" / "anthropic" / "responses.sqlite"
EPHEMERAL = {"type": "ephemeral"}


class MissingKeyError(RuntimeError):
    """ANTHROPIC_API_KEY is not set (raised before any work is done)."""


class ClaudeAPIError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted). Redacted."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 request_id: str | None = None):
        super().__init__(redact(message))
        self.status, self.retryable, self.request_id = status, retryable, request_id


# ---- secrets ------------------------------------------------------------------------------
_SECRETS: set[str] = set()
_KEY_RE = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")
REDACTED = "[REDACTED]"


def register_secret(secret: str | None) -> None:
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


def redact(text: Any) -> str:
    """`text` as a string with every registered secret and anything shaped like a key removed."""
    s = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        s = s.replace(secret, REDACTED)
    return _KEY_RE.sub(REDACTED, s)


_log_factory_installed = False


def install_log_redaction() -> None:
    """Redact every log record of this process (ours, the SDK's, httpx's) at creation time."""
    global _log_factory_installed
    if _log_factory_installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not crash the run; keep it as-is
            return record
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:   # tracebacks are formatted later: do it now
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record
    logging.setLogRecordFactory(factory)
    _log_factory_installed = True


def api_key_from_env() -> str:
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if not key:
        raise MissingKeyError("ANTHROPIC_API_KEY is not set: export your Anthropic API key "
                              "(and ANTHROPIC_BASE_URL to use a gateway), then run again")
    register_secret(key)
    return key


# ---- the cache ----------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(model: str, prompt_hash: str, parts: Any) -> str:
    """Content address of one request: model + prompt hash + the canonical request parts."""
    return hashlib.sha256(canonical_json({"model": model, "prompt_hash": prompt_hash,
                                          "parts": parts}).encode("utf-8")).hexdigest()


class ResponseCache:
    """SQLite (WAL) map from cache key to a paid-for response. Each put is one atomic statement,
    so a process killed at any moment leaves either the whole row or none of it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS responses (
            key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL,
            prompt_hash TEXT NOT NULL, meta TEXT NOT NULL, value TEXT NOT NULL,
            created_at TEXT NOT NULL)""")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict, *, kind: str, model: str, prompt_hash: str,
            meta: dict | None = None) -> None:
        row = (key, kind, model, prompt_hash, redact(canonical_json(meta or {})),
               redact(canonical_json(value)), now_iso())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def rows(self, kind: str) -> list[dict]:
        with self._lock:
            cur = self._db.execute("SELECT key, model, prompt_hash, meta, value FROM responses "
                                   "WHERE kind = ? ORDER BY rowid", (kind,))
            return [{"key": k, "model": m, "prompt_hash": p, "meta": json.loads(me),
                     "value": json.loads(v)} for k, m, p, me, v in cur.fetchall()]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- replies ------------------------------------------------------------------------------
@dataclass
class ToolReply:
    """What one Messages response said, in the shape we cache and build follow-up turns from."""
    tool_input: dict | None          # the forced tool's input, None if the model made no call
    stop_reason: str | None
    content: list[dict]              # assistant content blocks, ready to send back as a turn
    text: str
    request_id: str | None
    model: str
    usage: dict
    refusal: str = ""
    batch_id: str | None = None      # set when the answer came through the Message Batches API
    cached: bool = False

    def to_cache(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "cached"}

    @classmethod
    def from_cache(cls, d: dict) -> "ToolReply":
        return cls(**{**d, "cached": True})

    @classmethod
    def from_message(cls, msg: Any, tool_name: str, request_id: str | None) -> "ToolReply":
        content, text, tool_input = [], [], None
        for block in msg.content or []:
            kind = getattr(block, "type", None)
            if kind == "tool_use":
                content.append({"type": "tool_use", "id": block.id, "name": block.name,
                                "input": block.input})
                if block.name == tool_name and tool_input is None:
                    tool_input = block.input if isinstance(block.input, dict) else None
            elif kind == "text":
                content.append({"type": "text", "text": block.text})
                text.append(block.text)
        details = getattr(msg, "stop_details", None)
        refusal = ""
        if msg.stop_reason == "refusal":
            refusal = (getattr(details, "explanation", None) or "") if details else ""
            refusal = refusal or "the model declined"
        return cls(tool_input, msg.stop_reason, content, "\n".join(text), request_id,
                   str(msg.model), usage_dict(msg.usage), refusal)


# ---- retries ------------------------------------------------------------------------------
def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, anthropic.APIConnectionError)  # includes APITimeoutError


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait: retry-after-ms, retry-after seconds, or an HTTP date."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff_delay(retry: int, *, base: float, cap: float, retry_after: float | None,
                  rng: random.Random) -> float:
    """Exponential backoff with jitter (50-100 % of base·2^retry, capped), but never shorter
    than what the server asked for: retry-after is honoured even above the cap."""
    delay = min(cap, base * (2 ** retry)) * (0.5 + 0.5 * rng.random())
    return max(delay, retry_after) if retry_after is not None else delay


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        kind = getattr(exc, "type", None) or type(exc).__name__
        msg = getattr(exc, "api_message", None) or str(exc)
        return redact(f"HTTP {exc.status_code} {kind}: {msg}")
    if isinstance(exc, anthropic.APITimeoutError):
        return "request timed out"
    if isinstance(exc, anthropic.APIConnectionError):
        return redact(f"connection error: {exc}")
    return redact(f"{type(exc).__name__}: {exc}")


# ---- the client ---------------------------------------------------------------------------
def forced_tool_request(*, model: str, system: str, tool: dict, messages: list[dict],
                        max_tokens: int) -> dict:
    """messages.create parameters: one forced tool, with the system prompt and the tool schema
    marked for prompt caching (tools + system are the shared prefix of every request)."""
    return {"model": model, "max_tokens": max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
            "tools": [{**tool, "cache_control": EPHEMERAL}],
            "tool_choice": {"type": "tool", "name": tool["name"]},
            "messages": messages}


@dataclass
class RetryPolicy:
    max_retries: int = 6         # retries after the first attempt
    base_delay: float = 1.0      # seconds; the first retry waits 0.5-1x this
    max_delay: float = 60.0
    max_retry_after: float = 600.0  # a server asking for longer than this is an outage: give up


class ClaudeClient:
    """Thread-safe; one instance serves a whole run (the SDK's HTTP pool is shared)."""

    def __init__(self, *, model: str = DEFAULT_MODEL, api_key: str | None = None,
                 base_url: str | None = None, timeout: float = 120.0,
                 retry: RetryPolicy | None = None, cache: ResponseCache | str | Path | None = None,
                 prices: PriceTable | None = None, sleep: Callable[[float], None] = time.sleep,
                 seed: int | None = None):
        key = api_key or api_key_from_env()
        register_secret(key)
        install_log_redaction()
        self.model = model
        self.retry = retry or RetryPolicy()
        self.cache = ResponseCache(cache) if isinstance(cache, (str, Path)) else cache
        if prices is None:
            prices = load_prices() if PRICES_PATH.exists() else None
        self.meter = UsageMeter(prices)
        self.sleep = sleep
        self.slept: list[float] = []     # every backoff wait, for the summary and for tests
        # Set on Ctrl-C: requests in flight finish (and are cached), nothing new is started.
        self.stopping = threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.sdk = anthropic.Anthropic(api_key=key,
                                       base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL")
                                       or None, timeout=timeout, max_retries=0)

    # -- one call, with retries --
    def _with_retries(self, what: str, fn: Callable[[], Any]) -> Any:
        for retry in range(self.retry.max_retries + 1):
            if self.stopping.is_set():
                raise ClaudeAPIError(f"{what}: interrupted before sending", retryable=True)
            try:
                self.meter.count_request()
                return fn()
            except anthropic.AnthropicError as exc:
                if not is_retryable(exc):
                    raise ClaudeAPIError(f"{what}: {describe_error(exc)}",
                                         status=getattr(exc, "status_code", None),
                                         request_id=getattr(exc, "request_id", None)) from None
                wait_for = retry_after_seconds(exc)
                if retry == self.retry.max_retries or (
                        wait_for is not None and wait_for > self.retry.max_retry_after):
                    raise ClaudeAPIError(f"{what}: gave up after {retry + 1} attempts; last error: "
                                         f"{describe_error(exc)}", retryable=True,
                                         status=getattr(exc, "status_code", None)) from None
                with self._rng_lock:
                    delay = backoff_delay(retry, base=self.retry.base_delay,
                                          cap=self.retry.max_delay, retry_after=wait_for,
                                          rng=self._rng)
                self.slept.append(delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def call(self, params: dict, *, key: str | None = None, kind: str = "", prompt_hash: str = "",
             meta: dict | None = None, read_cache: bool = True, write_cache: bool = True
             ) -> ToolReply:
        """One forced-tool request; answered from the cache when `key` is there."""
        tool_name = params["tool_choice"]["name"]
        if key and self.cache is not None and read_cache:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.count_cache_hit()
                return ToolReply.from_cache(hit)

        def send():
            raw = self.sdk.messages.with_raw_response.create(**params)
            return raw.parse(), raw.request_id
        msg, request_id = self._with_retries("messages.create", send)
        reply = ToolReply.from_message(msg, tool_name, request_id)
        self.meter.add(params["model"], reply.usage)
        if key and self.cache is not None and write_cache:
            self.cache.put(key, reply.to_cache(), kind=kind, model=params["model"],
                           prompt_hash=prompt_hash, meta=meta)
        return reply

    # -- Message Batches --
    def submit_batch(self, requests: list[tuple[str, dict]]) -> str:
        body = [{"custom_id": cid, "params": params} for cid, params in requests]
        batch = self._with_retries("batches.create",
                                   lambda: self.sdk.messages.batches.create(requests=body))
        return batch.id

    def batch_status(self, batch_id: str) -> Any:
        return self._with_retries("batches.retrieve",
                                  lambda: self.sdk.messages.batches.retrieve(batch_id))

    def batch_results(self, batch_id: str, tool_name: str) -> Iterator[tuple[str, ToolReply | str]]:
        """(custom_id, reply or error text) per request; usage is metered at the batch price."""
        lines = self._with_retries("batches.results",
                                   lambda: list(self.sdk.messages.batches.results(batch_id)))
        for line in lines:
            result = line.result
            if result.type == "succeeded":
                reply = ToolReply.from_message(result.message, tool_name,
                                               f"{batch_id}/{line.custom_id}")
                reply.batch_id = batch_id
                self.meter.add(str(result.message.model), reply.usage, batch=True)
                yield line.custom_id, reply
            elif result.type == "errored":
                err = result.error.error
                yield line.custom_id, redact(f"batch request errored: {err.type}: "
                                             f"{getattr(err, 'message', '')}")
            else:
                yield line.custom_id, f"batch request {result.type}"

    def close(self) -> None:
        self.sdk.close()
        if self.cache is not None:
            self.cache.close()


def run_concurrently(fn: Callable[[Any], Any], items: Iterable[Any], concurrency: int,
                     stop: threading.Event | None = None) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield (item, result, exception) as calls finish, with at most `concurrency` in flight.
    Items are submitted lazily. If the consumer stops early (Ctrl-C), `stop` is set and the
    calls in flight are waited for, so answers already being paid for still reach the cache."""
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    pending: dict = {}
    try:
        while True:
            while len(pending) < max(1, concurrency) and not (stop and stop.is_set()):
                item = next(items, _END)
                if item is _END:
                    break
                pending[pool.submit(fn, item)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                exc = fut.exception()
                yield item, (None if exc else fut.result()), exc
    finally:
        if pending and stop is not None:
            stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
