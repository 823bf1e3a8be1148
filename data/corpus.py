"""The bundled corpus: task pool, hand-written reference answers, and the ruler's inputs.

Everything here was written for this project (`source: hand-written reference`); none of it is
teacher output. The ruler's cases live in eval/ruler/cases/ and are never part of the pool.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.contract import Case, ContractError, case_from_dict, read_jsonl
from data.contract.inputs import check_length, read_text_lines, require_records

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
TASKS_DIR = CORPUS_DIR / "tasks"
REFERENCES_DIR = CORPUS_DIR / "references"
RULER_CASES_DIR = REPO_ROOT / "eval" / "ruler" / "cases"
HAND_WRITTEN = "hand-written reference"


@dataclass(frozen=True)
class Task:
    id: str
    input: str
    domain: str = ""


def read_tasks(path) -> list[Task]:
    """Tasks from plain text (one per line, `#` comments) or JSONL with `id`/`input`.

    Read through data.contract.inputs: UTF-8 without BOM, a task at most MAX_TASK_CHARS
    characters, and a file without any task is an error (file:line in every message)."""
    path = Path(path)
    tasks: list[Task] = []
    if path.suffix == ".jsonl":
        for where, obj in read_jsonl(path, what="task"):
            if not isinstance(obj.get("input"), str) or not obj["input"].strip():
                raise ContractError(f"{where}: a task needs a non-empty string 'input'")
            check_length(obj["input"].strip(), where, what="task 'input'")
            tid = str(obj.get("id") or f"{path.stem}-{len(tasks) + 1:04d}")
            tasks.append(Task(tid, obj["input"].strip(), str(obj.get("domain", ""))))
    else:
        for _where, lineno, line in read_text_lines(path, what="task"):
            tasks.append(Task(f"{path.stem}-{lineno:04d}", line))
    require_records(tasks, path, what="tasks")
    seen: dict[str, str] = {}
    for t in tasks:
        if t.id in seen:
            raise ContractError(f"{path}: task id {t.id!r} appears twice")
        seen[t.id] = t.input
    return tasks


def pool_tasks() -> list[Task]:
    out: list[Task] = []
    for f in sorted(TASKS_DIR.glob("*.jsonl")):
        out += read_tasks(f)
    return out


def reference_cases() -> list[Case]:
    """The hand-written reference answers of the pool, each validated against the contract."""
    out: list[Case] = []
    for f in sorted(REFERENCES_DIR.glob("*.jsonl")):
        out += [case_from_dict(obj, where=where) for where, obj in read_jsonl(f, what="case")]
    return out


def ruler_cases(cases_dir: Path | None = None) -> list[Case]:
    cases_dir = Path(cases_dir or RULER_CASES_DIR)
    out = []
    for f in sorted(cases_dir.glob("*.json")):
        out.append(case_from_dict(json.loads(f.read_text(encoding="utf-8")), where=str(f)))
    return out


def ruler_inputs(cases_dir: Path | None = None) -> list[tuple[str, str]]:
    return [(c.id, c.input) for c in ruler_cases(cases_dir)]
