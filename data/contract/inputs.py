"""The one reader of user-supplied text, JSONL and JSON files, with errors that name file and line.

Every CLI that takes a task, gold, candidate or record file reads it through here, so careless or
hostile input fails the same way everywhere: an `InputError` (a `ContractError`, so each CLI's
existing handler turns it into one line on stderr and exit 2), never a traceback.

The rules (README, "Input files"):
- the path must be a regular file (a folder, FIFO or device is refused before it is opened, so a
  FIFO can never block a reader);
- the bytes must be UTF-8 without a byte-order mark (the error gives the line of the first bad
  byte);
- a JSONL line holds one JSON object; lines longer than MAX_LINE_BYTES are refused;
- a JSON document is at most MAX_JSON_BYTES and nested at most MAX_JSON_DEPTH deep;
- a task is at most MAX_TASK_CHARS characters (tasks are one-liners; a longer one is almost
  surely a pasted document, and it would be sent to the teacher as is);
- blank lines are skipped; a file that holds no records at all is an error (`require_records`),
  not "0 tasks".
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from data.contract.result import ContractError

MAX_LINE_BYTES = 1 << 20          # one JSONL record; a gold case is a few KiB
MAX_JSON_BYTES = 64 << 20         # one JSON document (a case list, a weights file)
MAX_JSON_DEPTH = 64               # our records nest 4-5 deep; json's C parser recurses
MAX_TASK_CHARS = 2000             # one task line
BOM = b"\xef\xbb\xbf"


class InputError(ContractError):
    """An input file is unreadable or malformed; the message names file (and line)."""


def regular_file(path, *, what: str = "file") -> Path:
    """`path` if it is a regular file (symlinks to one are followed); otherwise InputError.
    Checked with stat before any open, so a FIFO or device is refused, never read."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, expected a file ({what})")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a FIFO, socket or device), not read")
    return path


def read_bytes(path, *, what: str = "file", limit: int | None = None) -> bytes:
    path = regular_file(path, what=what)
    if limit is not None and path.stat().st_size > limit:
        raise InputError(f"{path}: {path.stat().st_size:,} bytes, more than the {limit:,}-byte "
                         f"limit for a {what}")
    try:
        # O_NONBLOCK: should the file be swapped for a FIFO after the check, open still returns.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{path}: not a regular file (a FIFO, socket or device), not read")
        return fh.read()


def decode(raw: bytes, path, *, what: str = "file") -> str:
    """Strict UTF-8; a BOM or an invalid byte is an error naming the line."""
    if raw.startswith(BOM):
        raise InputError(f"{path}:1: starts with a UTF-8 byte-order mark; save the {what} as "
                         "UTF-8 without BOM")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); the "
                         f"{what} must be UTF-8 text") from None


def read_text(path, *, what: str = "file", limit: int | None = MAX_JSON_BYTES) -> str:
    return decode(read_bytes(path, what=what, limit=limit), path, what=what)


def _lines(path, what: str, max_line_bytes: int):
    """(line number, text) of every non-blank line."""
    raw = read_bytes(path, what=what)
    text = decode(raw, path, what=what)
    for lineno, line in enumerate(text.split("\n"), 1):
        if len(line) > max_line_bytes // 4 and len(line.encode("utf-8")) > max_line_bytes:
            raise InputError(f"{path}:{lineno}: line of {len(line.encode('utf-8')):,} bytes, "
                             f"more than the {max_line_bytes:,}-byte limit for a {what}")
        if line.strip():
            yield lineno, line.rstrip("\r")


def depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep value cannot blow the stack)."""
    best, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            best = max(best, d)
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            best = max(best, d)
            stack += [(x, d + 1) for x in v]
    return best


def parse_json(text: str, where: str, *, what: str = "record",
               max_depth: int = MAX_JSON_DEPTH, whole_file: bool = False) -> Any:
    """One JSON value; `whole_file`: `where` is a file name, and an error adds its line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if whole_file:
            raise InputError(f"{where}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})"
                             ) from None
        raise InputError(f"{where}: invalid JSON in {what} ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: {what} nested too deeply (limit {max_depth})") from None
    if depth(obj) > max_depth:
        raise InputError(f"{where}: {what} nested more than {max_depth} levels deep")
    return obj


def read_jsonl(path, *, what: str = "record", objects: bool = True,
               max_line_bytes: int = MAX_LINE_BYTES) -> list[tuple[str, Any]]:
    """(where, value) per non-blank line; `objects` refuses any line that is not a JSON object."""
    out = []
    for lineno, line in _lines(path, what, max_line_bytes):
        where = f"{path}:{lineno}"
        obj = parse_json(line, where, what=what)
        if objects and not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object ({what}), got "
                             f"{type(obj).__name__}")
        out.append((where, obj))
    return out


def read_json(path, *, what: str = "JSON file", limit: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """One JSON document, at most `limit` bytes and `max_depth` levels deep."""
    text = read_text(path, what=what, limit=limit)
    return parse_json(text, str(path), what=what, max_depth=max_depth, whole_file=True)


def read_text_lines(path, *, what: str = "task", max_chars: int = MAX_TASK_CHARS,
                    comments: bool = True) -> list[tuple[str, int, str]]:
    """(where, line number, stripped text) of every non-blank (non-`#` comment) line; a line
    over `max_chars` characters is refused with file:line."""
    out = []
    for lineno, line in _lines(path, what, MAX_LINE_BYTES):
        text = line.strip()
        if comments and text.startswith("#"):
            continue
        check_length(text, f"{path}:{lineno}", what=what, max_chars=max_chars)
        out.append((f"{path}:{lineno}", lineno, text))
    return out


def check_length(text: str, where: str, *, what: str = "task",
                 max_chars: int = MAX_TASK_CHARS) -> None:
    if len(text) > max_chars:
        raise InputError(f"{where}: {what} of {len(text):,} characters, more than the "
                         f"{max_chars:,}-character limit")


def require_records(rows: list, path, *, what: str = "records") -> list:
    if not rows:
        raise InputError(f"{path}: no {what} in the file (empty or only blank lines)")
    return rows
