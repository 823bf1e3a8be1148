"""The one Anthropic client layer shared by teacher distillation and the Sonnet judge.

Why our own layer over the SDK: distillation is the only stage that costs money, so every call
goes through one place that (1) reads the key from the environment and keeps it out of every
log, error, record and cache (data.redaction), (2) retries 429/529/5xx/timeouts itself with
exponential backoff and jitter that honours `retry-after` (data.api_retry; the SDK runs with
max_retries=0 so retries are counted and testable here), (3) forces a tool call with prompt caching on the system prompt and tool
schema, (4) answers repeated requests from a content-addressed SQLite cache (data.response_cache), and (5) meters
tokens and dollars from configs/prices.yaml.
"""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic

from data.api_retry import RetryPolicy, backoff_delay, describe_error, is_retryable, retry_after_seconds
from data.prices import PRICES_PATH, PriceTable, UsageMeter, load_prices, usage_dict
from data.response_cache import ResponseCache
from data.redaction import api_key_from_env, install_log_redaction, redact, register_secret

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_CACHE_PATH = REPO_ROOT / ".cache" / "anthropic" / "responses.sqlite"
EPHEMERAL = {"type": "ephemeral"}


class ClaudeAPIError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted). Redacted."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 request_id: str | None = None):
        super().__init__(redact(message))
        self.status, self.retryable, self.request_id = status, retryable, request_id


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


def forced_tool_request(*, model: str, system: str, tool: dict, messages: list[dict],
                        max_tokens: int) -> dict:
    """messages.create parameters: one forced tool, with the system prompt and the tool schema
    marked for prompt caching (tools + system are the shared prefix of every request)."""
    return {"model": model, "max_tokens": max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
            "tools": [{**tool, "cache_control": EPHEMERAL}],
            "tool_choice": {"type": "tool", "name": tool["name"]},
            "messages": messages}


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
