"""Training data in the formats users already have, converted to the project's prompt/completion rows.

- `prompt_completion`: TRL conversational rows `{"prompt": [system, user], "completion":
  [assistant]}` (what `python -m data.sft` writes as train.jsonl);
- `apple`: Apple's adapter toolkit JSONL, each line a JSON array of `{role, content}` messages:
  an optional system turn, then user and assistant turns, the last the assistant's (the answer
  trained on; everything before it is the prompt, as written);
- `messages`: Hugging Face chat JSONL, each line `{"messages": [...]}`;
- a Hugging Face datasets folder (`datasets.save_to_disk`), whose rows are any of the above
  (a `messages` column, or `prompt`/`completion` columns);
- `auto` picks by the path (a folder is a datasets folder) and the first row's shape.

Rows whose system prompt is not the contract's planner prompt are listed (file:line) by
`prompt_mismatches`. The task in each row is found by data.contract.find_task (a documented rule
or the user's --input-pattern) for the leak guard and dedup, and `prompt_record` turns the
prompts into a template that run.json records, so an adapter trained on its own instructions is
evaluated and shipped with them. Malformed rows are errors naming the file and line (or dataset
row).
"""
from __future__ import annotations

import json
from pathlib import Path

from collections import Counter

from data.contract import (PROMPT_HASH, DiscoveryResult, PromptTemplate, TaskNotFound,
                           compile_input_pattern, find_task, parse_assistant,
                           planner_system_prompt)
from data.contract.inputs import InputError, read_jsonl
from data.contract.task_prompt import TaskSpan
from data.contract.text import sha256_text

FORMATS = ("auto", "prompt_completion", "apple", "messages")
ROLES = ("system", "user", "assistant")
SYSTEM_PROMPT_HASH = sha256_text(planner_system_prompt())


class FormatError(ValueError):
    """A malformed training row; the message starts with file:line."""


def _check_messages(msgs, where: str) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) of one conversation, or a FormatError.

    The shape Apple's toolkit takes: an optional system turn first, then user and assistant
    turns in turn, the last one the assistant's (the answer the loss covers; earlier assistant
    turns are part of the prompt, as written).
    """
    if not isinstance(msgs, list) or not msgs:
        raise FormatError(f"{where}: expected a non-empty list of {{role, content}} messages, "
                          f"got {type(msgs).__name__}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or \
                not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            extra = sorted(set(m) - {"role", "content"}) if isinstance(m, dict) else []
            why = (f" (key {extra[0]!r} is not supported: tool calls and guided-generation "
                   "fields are not read)" if extra and m.get("role") in ROLES else "")
            raise FormatError(f"{where}: message {i} must be {{\"role\": system|user|assistant, "
                              f"\"content\": string}}{why}, got {json.dumps(m)[:120]}")
    roles = [m["role"] for m in msgs]
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(turns) // 2)
    if len(turns) < 2 or len(turns) % 2 or turns != expected:
        raise FormatError(f"{where}: expected messages system, user, assistant (the system turn "
                          "optional, then user and assistant turns in turn, the last the "
                          f"assistant's), got {', '.join(roles)}")
    return [dict(m) for m in msgs[:-1]], [dict(msgs[-1])]


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


def row_tasks(rows: list[dict], input_pattern: str | None = None) -> list[TaskSpan]:
    """Where each row's task sits (data.contract.find_task): its text and the rule that found
    it. A row where no rule finds one is a FormatError naming its file:line."""
    rx = compile_input_pattern(input_pattern)
    out = []
    for r in rows:
        try:
            out.append(find_task(r["prompt"], rx))
        except TaskNotFound as e:
            raise FormatError(f"{r['where']}: cannot find the task: {e}") from None
    return out


def answer_of(messages) -> DiscoveryResult | None:
    """The contract object in an assistant turn (list of messages or text), or None when the
    text is not one; for the leak guard's gold-side check, which must not fail on odd rows."""
    if isinstance(messages, list):
        messages = messages[-1].get("content") if messages and isinstance(messages[-1], dict) \
            else None
    return parse_assistant(messages).result if isinstance(messages, str) else None


def prompt_mismatches(rows: list[dict]) -> list[str]:
    """`where: sha256` of every row whose system prompt is not the contract's planner prompt."""
    out = []
    for r in rows:
        if r["prompt"][0]["role"] != "system":
            out.append(f"{r['where']}: no system prompt (contract {SYSTEM_PROMPT_HASH[:12]})")
            continue
        got = sha256_text(r["prompt"][0]["content"])
        if got != SYSTEM_PROMPT_HASH:
            out.append(f"{r['where']}: system prompt sha256 {got[:12]} != contract "
                       f"{SYSTEM_PROMPT_HASH[:12]}")
    return out


def prompt_record(rows: list[dict], input_pattern: str | None = None) -> dict:
    """What run.json says about the prompt training used, so eval and export can use the same.

    Each row's prompt becomes a template (its task replaced by a placeholder). The most common
    template is *the* prompt (`template`, `sha256`); when it is the contract's own, `source` is
    "contract", else "training data". Other templates are listed by hash and row count, and
    `input_rules` counts which rule found the task in how many rows.
    """
    tasks = row_tasks(rows, input_pattern)
    counts: Counter = Counter()
    first: dict[PromptTemplate, str] = {}
    rules: Counter = Counter()
    for r, t in zip(rows, tasks):
        try:
            tpl = PromptTemplate.from_prompt(r["prompt"], t)
        except ValueError as e:
            raise FormatError(f"{r['where']}: {e}") from None
        counts[tpl] += 1
        first.setdefault(tpl, r["where"])
        rules[t.rule] += 1
    # Most rows first; ties broken by the first row, so the choice never depends on hashing.
    seen = {t: i for i, t in enumerate(first)}
    order = sorted(counts, key=lambda t: (-counts[t], seen[t]))
    main = order[0]
    return {"source": "contract" if main.sha256 == PROMPT_HASH else "training data",
            "template": main.to_json(), "sha256": main.sha256, "rows": counts[main],
            "input_pattern": input_pattern or None, "input_rules": dict(rules),
            "other_templates": [{"sha256": t.sha256, "rows": counts[t], "first": first[t]}
                                for t in order[1:]]}
