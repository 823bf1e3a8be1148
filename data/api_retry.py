"""When and how long to retry an Anthropic request: retryable statuses, the server's
retry-after, and exponential backoff with jitter."""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import anthropic

from data.redaction import redact


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


@dataclass
class RetryPolicy:
    max_retries: int = 6         # retries after the first attempt
    base_delay: float = 1.0      # seconds; the first retry waits 0.5-1x this
    max_delay: float = 60.0
    max_retry_after: float = 600.0  # a server asking for longer than this is an outage: give up
