"""Training data in the formats users already have, converted to the project's prompt/completion rows.

- `prompt_completion`: TRL conversational rows `{"prompt": [system, user], "completion":
  [assistant]}` (what `python -m data.sft` writes as train.jsonl);
- `apple`: Apple's adapter toolkit JSONL, each line a JSON array of `{role, content}` messages
  (system, user, assistant), as `python -m data.sft` writes apple_train.jsonl;
- `messages`: Hugging Face chat JSONL, each line `{"messages": [...]}`;
- a Hugging Face datasets folder (`datasets.save_to_disk`), whose rows are any of the above
  (a `messages` column, or `prompt`/`completion` columns);
- `auto` picks by the path (a folder is a datasets folder) and the first row's shape.

Rows whose system prompt is not the contract's planner prompt are listed (file:line) by
`prompt_mismatches`; training warns and records them in run.json, as it does for ruler leaks,
because an adapter trained on another prompt is exported and evaluated under the contract's
prompt. Malformed rows are errors naming the file and line (or dataset row).
"""
from __future__ import annotations

import json
from pathlib import Path

from data.contract import DiscoveryResult, parse_assistant, planner_system_prompt
from data.contract.text import sha256_text
from data.contract.inputs import InputError, read_jsonl
from data.leak import Leak, LeakGuard, ruler_guard

FORMATS = ("auto", "prompt_completion", "apple", "messages")
ROLES = ("system", "user", "assistant")
SYSTEM_PROMPT_HASH = sha256_text(planner_system_prompt())


class FormatError(ValueError):
    """A malformed training row; the message starts with file:line."""


def _check_messages(msgs, where: str) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) of one conversation, or a FormatError."""
    if not isinstance(msgs, list) or not msgs:
        raise FormatError(f"{where}: expected a non-empty list of {{role, content}} messages, "
                          f"got {type(msgs).__name__}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or \
                not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise FormatError(f"{where}: message {i} must be {{\"role\": system|user|assistant, "
                              f"\"content\": string}}, got {json.dumps(m)[:120]}")
    roles = [m["role"] for m in msgs]
    if roles != ["system", "user", "assistant"]:
        raise FormatError(f"{where}: expected messages system, user, assistant (one planner "
                          f"turn), got {', '.join(roles)}")
    return [dict(m) for m in msgs[:2]], [dict(msgs[2])]


def _row_format(row) -> str:
    if isinstance(row, list):
        return "apple"
    if isinstance(row, dict) and "messages" in row:
        return "messages"
    if isinstance(row, dict) and "prompt" in row and "completion" in row:
        return "prompt_completion"
    return "unknown"


def convert_row(row, fmt: str, where: str) -> dict:
    """One row of the given format as {"prompt": [...], "completion": [...]}."""
    got = _row_format(row)
    if got != fmt:
        want = {"apple": "a JSON array of messages", "messages": 'an object with "messages"',
                "prompt_completion": 'an object with "prompt" and "completion"'}[fmt]
        raise FormatError(f"{where}: data_format {fmt} expects {want}, got "
                          f"{json.dumps(row)[:120]}")
    if fmt == "apple":
        msgs = row
    elif fmt == "messages":
        msgs = row["messages"]
    else:
        if not isinstance(row["prompt"], list) or not isinstance(row["completion"], list):
            raise FormatError(f"{where}: prompt and completion must be lists of messages")
        msgs = row["prompt"] + row["completion"]
    prompt, completion = _check_messages(msgs, where)
    return {"prompt": prompt, "completion": completion}


def _jsonl_rows(path: Path):
    # The shared reader (UTF-8 without BOM, regular file, line limit); rows may be arrays
    # (Apple's toolkit format), so any JSON value is accepted here and checked per format.
    try:
        yield from read_jsonl(path, what="training row", objects=False)
    except InputError as e:
        raise FormatError(str(e)) from None


def _dataset_rows(path: Path):
    from datasets import DatasetDict, load_from_disk
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise FormatError(f"{path}: a DatasetDict without a 'train' split "
                              f"(splits: {list(ds)})")
        ds = ds["train"]
    for i, row in enumerate(ds):
        where = f"{path}#row{i}"
        if "messages" in row:
            yield where, {"messages": row["messages"]}
        elif "prompt" in row and "completion" in row:
            yield where, {"prompt": row["prompt"], "completion": row["completion"]}
        else:
            raise FormatError(f"{where}: expected a 'messages' column or 'prompt'/'completion' "
                              f"columns, found {sorted(row)}")


def load_rows(path: str | Path, data_format: str = "auto") -> tuple[list[dict], str]:
    """(rows, the format read). Each row is prompt, completion and `where` (file:line)."""
    if data_format not in FORMATS:
        raise FormatError(f"data_format must be one of {list(FORMATS)}, got {data_format!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    rows_in = _dataset_rows(path) if path.is_dir() else _jsonl_rows(path)
    out, fmt = [], data_format
    for where, row in rows_in:
        if fmt == "auto":
            fmt = _row_format(row)
            if fmt == "unknown":
                raise FormatError(f"{where}: cannot tell the data format from this row (expected "
                                  "a message array, {\"messages\": ...} or {\"prompt\", "
                                  f"\"completion\"}}), got {json.dumps(row)[:120]}")
        out.append(dict(convert_row(row, fmt, where), where=where))
    if not out:
        raise FormatError(f"{path}: no training rows")
    return out, fmt


def row_inputs(rows: list[dict]) -> list[str]:
    """The task input of each row (user turn, 'Task: ' stripped), for the leak guard and run.json."""
    out = []
    for r in rows:
        text = r["prompt"][1]["content"]
        out.append(text[len("Task: "):] if text.startswith("Task: ") else text)
    return out


def answer_of(messages) -> DiscoveryResult | None:
    """The contract object in an assistant turn (list of messages or text), or None when the
    text is not one; for the leak guard's gold-side check, which must not fail on odd rows."""
    if isinstance(messages, list):
        messages = messages[-1].get("content") if messages and isinstance(messages[-1], dict) \
            else None
    return parse_assistant(messages).result if isinstance(messages, str) else None


def row_leaks(rows: list[dict], guard: LeakGuard | None = None) -> list[Leak]:
    """The leak guard over converted rows: each row's input and its answer (gold side), every
    offending row listed by file:line."""
    guard = guard or ruler_guard()
    return guard.find_leaks((r["where"], t, answer_of(r["completion"]))
                            for r, t in zip(rows, row_inputs(rows)))


def prompt_mismatches(rows: list[dict]) -> list[str]:
    """`where: sha256` of every row whose system prompt is not the contract's planner prompt."""
    out = []
    for r in rows:
        got = sha256_text(r["prompt"][0]["content"])
        if got != SYSTEM_PROMPT_HASH:
            out.append(f"{r['where']}: system prompt sha256 {got[:12]} != contract "
                       f"{SYSTEM_PROMPT_HASH[:12]}")
    return out
