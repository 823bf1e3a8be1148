"""The typed answer (title, one-sentence summary, questions), its two JSON key styles (the
project's snake_case and the camelCase of existing Swift harnesses) and its JSON schema."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from data.contract.errors import ContractError
from data.contract.keys import pick, spellings

N_QUESTIONS = 7


@dataclass(frozen=True)
class Question:
    title: str
    description: str
    requires_external_action: bool = False


@dataclass(frozen=True)
class DiscoveryResult:
    task_title: str
    task_description: str
    questions: tuple[Question, ...] = field(default_factory=tuple)

    # ---- JSON in/out -------------------------------------------------------------------
    def to_dict(self, style: str = "camel") -> dict:
        if style not in ("camel", "snake"):
            raise ValueError(f"style must be 'camel' or 'snake', got {style!r}")
        camel = style == "camel"
        return {
            ("taskTitle" if camel else "task_title"): self.task_title,
            ("taskDescription" if camel else "task_description"): self.task_description,
            "questions": [
                {"title": q.title, "description": q.description,
                 ("requiresExternalAction" if camel else "requires_external_action"):
                     q.requires_external_action}
                for q in self.questions
            ],
        }

    def to_json(self, style: str = "camel") -> str:
        return json.dumps(self.to_dict(style), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, *, where: str = "record", exact_questions: int | None = N_QUESTIONS,
                  field_map: Mapping[str, str] | None = None) -> "DiscoveryResult":
        """Build from any known key spelling (data.contract.keys) or a user's `field_map`.
        `exact_questions=None` accepts any count (model output)."""
        if not isinstance(obj, Mapping):
            raise ContractError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        title = _pick(obj, where, spellings("taskTitle", field_map, question=False))
        desc = _pick(obj, where, spellings("taskDescription", field_map, question=False))
        qkey, qs = pick(obj, where, spellings("questions", field_map, question=False))
        if not isinstance(qs, list):
            raise ContractError(f"{where}: key {qkey or 'questions'!r} must be a list, got "
                                f"{'nothing' if qs is None else type(qs).__name__}")
        if exact_questions is not None and len(qs) != exact_questions:
            raise ContractError(f"{where}: {qkey!r} has {len(qs)} items, expected exactly "
                                f"{exact_questions}")
        questions = []
        for i, q in enumerate(qs):
            qwhere = f"{where}: {qkey}[{i}]"
            if not isinstance(q, Mapping):
                raise ContractError(f"{qwhere}: expected an object, got {type(q).__name__}")
            qt = _pick(q, qwhere, spellings("title", field_map, question=True))
            dkey, qd = pick(q, qwhere, spellings("description", field_map, question=True))
            qd = "" if dkey is None else qd
            if not isinstance(qd, str):
                raise ContractError(f"{qwhere}.{dkey}: expected a string")
            ekey, ext = pick(q, qwhere, spellings("requiresExternalAction", field_map,
                                                  question=True))
            ext = False if ekey is None else ext
            if not isinstance(ext, bool):
                raise ContractError(f"{qwhere}.{ekey}: expected true/false, got {ext!r}")
            questions.append(Question(qt.strip(), qd.strip(), ext))
        return cls(title.strip(), desc.strip(), tuple(questions))

    @classmethod
    def from_json(cls, text: str, *, where: str = "record") -> "DiscoveryResult":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ContractError(f"{where}: invalid JSON ({e.msg} at line {e.lineno} "
                                f"column {e.colno})") from None
        return cls.from_dict(obj, where=where)


def _pick(obj: Mapping, where: str, keys: tuple[str, ...]) -> str:
    key, v = pick(obj, where, keys)
    if key is None:
        raise ContractError(f"{where}: missing key {' / '.join(repr(k) for k in keys)}")
    if not isinstance(v, str):
        raise ContractError(f"{where}.{key}: expected a string, got {type(v).__name__}")
    return v


def json_schema(n_questions: int = N_QUESTIONS) -> dict:
    """JSON schema of the camelCase result, for tool calls and structured output."""
    return {
        "type": "object",
        "properties": {
            "taskTitle": {"type": "string", "description":
                          "Short, specific restatement of the user's goal (2-8 words)."},
            "taskDescription": {"type": "string",
                                "description": "One sentence describing the task."},
            "questions": {
                "type": "array", "minItems": n_questions, "maxItems": n_questions,
                "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string",
                                  "description": "One atomic question to the user, 5-10 words."},
                        "description": {"type": "string",
                                        "description": "Why the answer matters, one short line."},
                        "requiresExternalAction": {"type": "boolean", "description":
                            "True if answering needs the user to check or look something up."},
                    },
                    "required": ["title", "description", "requiresExternalAction"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["taskTitle", "taskDescription", "questions"],
        "additionalProperties": False,
    }
