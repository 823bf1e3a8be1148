"""Keeping the Anthropic key out of every log, error, record and cache.

The key is read from the environment only; once registered, `redact` removes it (and anything
shaped like an Anthropic key) from any text, and `install_log_redaction` applies that to every
log record of the process, the SDK's and httpx's included.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any


class MissingKeyError(RuntimeError):
    """ANTHROPIC_API_KEY is not set (raised before any work is done)."""


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
