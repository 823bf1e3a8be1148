"""The content-addressed SQLite cache of paid-for responses (teacher answers and verdicts)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data.redaction import redact


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
