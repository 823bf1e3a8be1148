"""The discovery-planner contract: the one module every stage imports.

Everything task-specific lives here: the typed result, its two JSON spellings (the project's
snake_case and the camelCase of existing Swift harnesses), the assistant text the model is trained
to emit and its parsers, the spec gate, the planner's system prompt and the judge's prompt and
rubric. Each prompt has a content hash that is recorded wherever the prompt is used, so a number
can always be traced to the exact words that produced it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

N_QUESTIONS = 7

# Compared case-insensitively after trimming (see shared/reference/ruler-and-metric.md).
GENERIC_TITLES = frozenset({
    "clarifying questions", "task discovery", "questions", "understanding your task",
    "discovery", "discovery questions",
})

# Pictographs, dingbats, flags, keycaps, variation selector 16 and the zero-width joiner that
# glues emoji sequences; deliberately excludes ordinary punctuation such as em dashes.
EMOJI_RE = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF"
    "\U00002B00-\U00002BFF\U0000FE0F\U0000200D\U000020E3\U00003030\U0000303D"
    "\U00002190-\U000021FF\U00002300-\U000023FF\U000025A0-\U000025FF]"
)


class ContractError(ValueError):
    """A record does not follow the contract. The message names where (file:line, key)."""


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
    def from_dict(cls, obj: Any, *, where: str = "record", exact_questions: int | None = N_QUESTIONS
                  ) -> "DiscoveryResult":
        """Build from either key style. `exact_questions=None` accepts any count (model output)."""
        if not isinstance(obj, Mapping):
            raise ContractError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        title = _pick(obj, where, "taskTitle", "task_title")
        desc = _pick(obj, where, "taskDescription", "task_description")
        qs = obj.get("questions")
        if not isinstance(qs, list):
            raise ContractError(f"{where}: key 'questions' must be a list, got "
                                f"{'nothing' if qs is None else type(qs).__name__}")
        if exact_questions is not None and len(qs) != exact_questions:
            raise ContractError(f"{where}: 'questions' has {len(qs)} items, expected exactly "
                                f"{exact_questions}")
        questions = []
        for i, q in enumerate(qs):
            qwhere = f"{where}: questions[{i}]"
            if not isinstance(q, Mapping):
                raise ContractError(f"{qwhere}: expected an object, got {type(q).__name__}")
            qt = _pick(q, qwhere, "title")
            qd = q.get("description", "")
            if not isinstance(qd, str):
                raise ContractError(f"{qwhere}.description: expected a string")
            ext = q.get("requiresExternalAction", q.get("requires_external_action", False))
            if not isinstance(ext, bool):
                raise ContractError(f"{qwhere}.requiresExternalAction: expected true/false, "
                                    f"got {ext!r}")
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


def _pick(obj: Mapping, where: str, *keys: str) -> str:
    for k in keys:
        if k in obj:
            v = obj[k]
            if not isinstance(v, str):
                raise ContractError(f"{where}.{k}: expected a string, got {type(v).__name__}")
            return v
    raise ContractError(f"{where}: missing key {' / '.join(repr(k) for k in keys)}")


@dataclass(frozen=True)
class Case:
    """One task with its gold answer: `{"id","input","gold":{…}}` or a bare result + input."""
    id: str
    input: str
    gold: DiscoveryResult
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, style: str = "camel") -> dict:
        out = {"id": self.id, "input": self.input, "gold": self.gold.to_dict(style)}
        if self.source:
            out["source"] = self.source
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def case_from_dict(obj: Any, *, where: str = "record", default_id: str | None = None) -> Case:
    """Accept the case wrapper or a bare result carrying its own `input`."""
    if not isinstance(obj, Mapping):
        raise ContractError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    inp = obj.get("input")
    if not isinstance(inp, str) or not inp.strip():
        raise ContractError(f"{where}: missing or empty key 'input'")
    body = obj["gold"] if "gold" in obj else obj
    gold = DiscoveryResult.from_dict(body, where=f"{where}: gold" if "gold" in obj else where)
    cid = obj.get("id", default_id)
    if cid is None:
        cid = "task-" + sha256_text(normalize_space(inp))[:10]
    known = {"id", "input", "gold", "source", "taskTitle", "task_title", "taskDescription",
             "task_description", "questions"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return Case(str(cid), inp.strip(), gold, str(obj.get("source", "")), extra)


def read_jsonl(path, *, what: str = "record") -> list[tuple[str, Any]]:
    """Parse a JSONL file; returns (where, object) pairs; errors name file and line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                out.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ContractError(f"{where}: invalid JSON in {what} ({e.msg}, column "
                                    f"{e.colno})") from None
    return out


def load_cases(path) -> list[Case]:
    """Cases from a .jsonl file (one per line) or a .json file (one case or a list)."""
    path = str(path)
    if path.endswith(".jsonl"):
        return [case_from_dict(o, where=w) for w, o in read_jsonl(path, what="case")]
    with open(path, encoding="utf-8") as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as e:
            raise ContractError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    items = obj if isinstance(obj, list) else [obj]
    return [case_from_dict(o, where=f"{path}[{i}]" if isinstance(obj, list) else path)
            for i, o in enumerate(items)]


# ---- spec gate ------------------------------------------------------------------------
def spec_violations(result: DiscoveryResult, n_questions: int = N_QUESTIONS) -> list[str]:
    """The deterministic gate of the reference; an empty list means the result passes."""
    v = []
    if len(result.questions) != n_questions:
        v.append(f"has {len(result.questions)} questions, expected exactly {n_questions}")
    title = result.task_title.strip()
    if not title:
        v.append("task title is empty")
    elif title.lower() in GENERIC_TITLES:
        v.append(f"task title {title!r} is a generic label")
    fields = [("task title", result.task_title), ("task description", result.task_description)]
    for i, q in enumerate(result.questions, 1):
        if not q.title.strip():
            v.append(f"question {i} has an empty title")
        fields += [(f"question {i} title", q.title), (f"question {i} description", q.description)]
    for name, text in fields:
        if EMOJI_RE.search(text):
            v.append(f"{name} contains an emoji")
    return v


# ---- the assistant text ----------------------------------------------------------------
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


def parse_assistant(text: str, *, strict: bool = False, n_questions: int = N_QUESTIONS
                    ) -> ParsedAnswer:
    """Parse the assistant's text.

    strict=True (data we write): the text must be exactly one JSON object with exactly
    `n_questions` questions, else ContractError. strict=False (model output): code fences and
    surrounding prose are tolerated, and a wrong question count is *reported* in `problems`
    with the result kept as generated — never padded or trimmed.
    """
    if strict:
        try:
            obj = json.loads(text.strip())
        except json.JSONDecodeError as e:
            raise ContractError(f"assistant text: invalid JSON ({e.msg} at line {e.lineno} "
                                f"column {e.colno})") from None
        res = DiscoveryResult.from_dict(obj, where="assistant text", exact_questions=n_questions)
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
        res = DiscoveryResult.from_dict(obj, where="output", exact_questions=None)
    except ContractError as e:
        return ParsedAnswer(None, [str(e)])
    n = len(res.questions)
    if n != n_questions:
        problems.append(f"output has {n} questions, expected {n_questions}")
    # Prose or fences around the JSON are tolerated but noted for the record (not a failure).
    if body.strip() != raw.strip():
        notes.append("extra text around the JSON")
    return ParsedAnswer(res, problems, n, notes)


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


# ---- prompts ---------------------------------------------------------------------------
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_space(text: str) -> str:
    return " ".join(text.split())


PLANNER_SYSTEM_PROMPT = """\
You are a discovery planner. The user gives a one-line task. Restate it and ask the clarifying \
questions whose answers matter most for planning it.
Reply with JSON only: {"taskTitle", "taskDescription", "questions": [{"title", "description", \
"requiresExternalAction"}]}.
- taskTitle: a short, specific title naming the user's goal, never a generic label.
- taskDescription: one sentence.
- questions: exactly {n_questions} questions, most decision-critical first. Each title asks ONE thing \
(never two joined by "and" or "or"), is specific to this task, addressed to the user, 5-10 words, \
no emoji. description says why it matters. requiresExternalAction is true only if answering \
needs the user to check or look something up."""


def planner_system_prompt(n_questions: int = N_QUESTIONS) -> str:
    return PLANNER_SYSTEM_PROMPT.replace("{n_questions}", str(n_questions))


def planner_user_message(task_input: str) -> str:
    return f"Task: {normalize_space(task_input)}"


def planner_messages(task_input: str, n_questions: int = N_QUESTIONS) -> list[dict]:
    """The prompt messages used identically by SFT, ORPO, generation and distillation."""
    return [{"role": "system", "content": planner_system_prompt(n_questions)},
            {"role": "user", "content": planner_user_message(task_input)}]


PROMPT_HASH = sha256_text(planner_system_prompt() + "\n--\n" + planner_user_message("{input}"))

# ---- the judge -------------------------------------------------------------------------
RUBRIC_DIMENSIONS = ("atomicity", "specificity", "coverage", "naturalness", "nonRedundancy")

RUBRIC = {
    "atomicity": 'each question asks exactly one thing, never two joined by "and"/"or"',
    "specificity": 'concrete to this task, not generic filler ("any other preferences?")',
    "coverage": "together the 7 cover the most decision-critical unknowns",
    "naturalness": "reads like a thoughtful human coach: concise, clear, not robotic",
    "nonRedundancy": "the questions do not overlap or repeat",
}

JUDGE_SYSTEM_PROMPT = """\
You are a strict, impartial evaluator of clarifying questions for a task planner. A user typed a \
one-line task; two sets of seven clarifying questions were written for it. Judge only what is \
shown, do not reward length, and be willing to prefer either set, including the candidate.
Score the CANDIDATE set on five dimensions, each an integer from 1 (poor) to 5 (excellent):
""" + "\n".join(f"- {k}: {v};" for k, v in RUBRIC.items()) + """
Then say which set is better overall for planning this task (A, B, or tie), and write one or two \
sentences naming the candidate's main weakness. Answer by calling the record_verdict tool."""


def _format_set(label: str, result: DiscoveryResult) -> str:
    lines = [f"{label}", f"Title: {result.task_title}"]
    lines += [f"{i}. {q.title}" for i, q in enumerate(result.questions, 1)]
    return "\n".join(lines)


def judge_user_message(task_input: str, gold: DiscoveryResult, candidate: DiscoveryResult,
                       candidate_first: bool = False) -> str:
    """The judge sees titles and numbered question titles only (no descriptions).

    Normal order: SET A = gold (reference), SET B = candidate. With `candidate_first` (the
    position-swap pass) SET A is the candidate and SET B the reference.
    """
    if candidate_first:
        a = _format_set("SET A (candidate)", candidate)
        b = _format_set("SET B (reference)", gold)
        which = "SET A"
    else:
        a = _format_set("SET A (reference)", gold)
        b = _format_set("SET B (candidate)", candidate)
        which = "SET B"
    return (f"User's task: {normalize_space(task_input)}\n\n{a}\n\n{b}\n\n"
            f"Score {which} (the candidate) on the five dimensions, then say which set is "
            f"better overall: A, B, or tie.")


JUDGE_TOOL = {
    "name": "record_verdict",
    "description": "Record the verdict on the candidate set.",
    "input_schema": {
        "type": "object",
        "properties": {
            "better": {"type": "string", "enum": ["A", "B", "tie"]},
            **{k: {"type": "integer", "minimum": 1, "maximum": 5} for k in RUBRIC_DIMENSIONS},
            "notes": {"type": "string"},
        },
        "required": ["better", *RUBRIC_DIMENSIONS, "notes"],
    },
}

JUDGE_PROMPT_HASH = sha256_text(JUDGE_SYSTEM_PROMPT + "\n--\n"
                                + json.dumps(JUDGE_TOOL, sort_keys=True)
                                + "\n--\n" + judge_user_message(
                                    "{input}", DiscoveryResult("{gold}", ""),
                                    DiscoveryResult("{candidate}", "")))


