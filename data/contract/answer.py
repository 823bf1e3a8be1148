"""The assistant text the model is trained to emit, and its strict and lenient parsers."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping

from data.contract.result import N_QUESTIONS, ContractError, DiscoveryResult


def render_assistant(result: DiscoveryResult) -> str:
    """The exact text the model is trained to emit: camelCase JSON, one question per line."""
    d = result.to_dict("camel")
    head = json.dumps({"taskTitle": d["taskTitle"], "taskDescription": d["taskDescription"]},
                      ensure_ascii=False)[:-1]
    qs = ",\n".join(json.dumps(q, ensure_ascii=False) for q in d["questions"])
    return f'{head}, "questions": [\n{qs}\n]}}'


@dataclass
class ParsedAnswer:
    """What a lenient parse of model output found. `result` is None when nothing usable was."""
    result: DiscoveryResult | None
    problems: list[str]
    n_questions: int | None = None
    notes: list[str] = field(default_factory=list)  # tolerated oddities (fences, extra prose)

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def _first_json_object(text: str) -> str | None:
    """The first balanced {...} in text, respecting strings; None if there is none."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def parse_assistant(text: str, *, strict: bool = False, n_questions: int = N_QUESTIONS,
                    field_map: Mapping[str, str] | None = None) -> ParsedAnswer:
    """Parse the assistant's text.

    strict=True (data we write): the text must be exactly one JSON object with exactly
    `n_questions` questions, else ContractError. strict=False (model output): code fences and
    surrounding prose are tolerated, and a wrong question count is *reported* in `problems`
    with the result kept as generated — never padded or trimmed. Both read every known key
    spelling (data.contract.keys) plus `field_map`, so a model trained on another planner's key
    names is scored on what it says, not on how it spells the keys.
    """
    if strict:
        try:
            obj = json.loads(text.strip())
        except json.JSONDecodeError as e:
            raise ContractError(f"assistant text: invalid JSON ({e.msg} at line {e.lineno} "
                                f"column {e.colno})") from None
        res = DiscoveryResult.from_dict(obj, where="assistant text", exact_questions=n_questions,
                                       field_map=field_map)
        return ParsedAnswer(res, [], len(res.questions))
    problems: list[str] = []
    notes: list[str] = []
    body = text
    fence = _FENCE_RE.search(text)
    if fence:
        body = fence.group(1)
        notes.append("answer wrapped in a code fence")
    raw = _first_json_object(body)
    if raw is None:
        return ParsedAnswer(None, ["no JSON object found in the output"
                                   + (" (it may have been cut off)" if "{" in body else "")])
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return ParsedAnswer(None, [f"output is not valid JSON: {e.msg} at column {e.colno}"])
    try:
        res = DiscoveryResult.from_dict(obj, where="output", exact_questions=None,
                                       field_map=field_map)
    except ContractError as e:
        return ParsedAnswer(None, [str(e)])
    n = len(res.questions)
    if n != n_questions:
        problems.append(f"output has {n} questions, expected {n_questions}")
    # Prose or fences around the JSON are tolerated but noted for the record (not a failure).
    if body.strip() != raw.strip():
        notes.append("extra text around the JSON")
    return ParsedAnswer(res, problems, n, notes)
