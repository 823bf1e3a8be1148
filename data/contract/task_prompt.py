"""Where the user's task sits in a prompt someone else wrote, and that prompt as a template.

Other planners' training data does not use the contract's prompt: the instructions may be a
system turn, or one user turn with the task embedded ("...Task the user entered: X"). Two things
need the task itself: the leak guard and dedup (which compare tasks, not instruction blocks), and
evaluation (which must ask a ruler task with the same words the adapter was trained on). Both are
served by one rule that finds the task's span; the prompt with that span replaced by
TASK_PLACEHOLDER is the template eval renders for each ruler input.

The rules, tried in this order (the first that matches names the result):
- `input-pattern`: the user's regex (exactly one group: the task), searched in the last user
  turn, then in the system turn;
- `task-prefix`: the last line of the last user turn that reads `<label with the word
  "task">: <text>` ("Task: X", "Task the user entered: X", "User task: X");
- `whole-turn`: the last user turn is one line: all of it;
- `task-prefix` in the system turn, for a multi-line user turn without such a line;
- `last-line`: otherwise the last non-empty line of the last user turn.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from data.contract.text import normalize_space, sha256_text

TASK_PLACEHOLDER = "{input}"
RULES = ("input-pattern", "task-prefix", "whole-turn", "last-line")
# A label of at most ~60 characters containing the word "task" ("taskTitle" does not count),
# a colon, then the task on the rest of the line.
TASK_PREFIX_RE = re.compile(r"^[ \t]*[^\n:]{0,60}?\btask\b[^\n:]{0,60}:[ \t]*(\S[^\n]*?)[ \t]*$",
                            re.I | re.M)


class TaskNotFound(ValueError):
    """No rule found a task in a prompt (an empty user turn, or a pattern that never matches)."""


@dataclass(frozen=True)
class TaskSpan:
    text: str          # the task as written (stripped)
    rule: str          # which rule found it (RULES)
    message: int       # index of the prompt message it sits in
    start: int         # its span in that message's content
    end: int


def compile_input_pattern(pattern: str | None) -> re.Pattern | None:
    """The --input-pattern regex, refused unless it has exactly one group."""
    if not pattern:
        return None
    try:
        rx = re.compile(pattern, re.M)
    except re.error as e:
        raise ValueError(f"input pattern {pattern!r}: not a regular expression ({e})") from None
    if rx.groups != 1:
        raise ValueError(f"input pattern {pattern!r}: needs exactly one group (the task), has "
                         f"{rx.groups}")
    return rx


def find_task(prompt: list[dict], pattern: re.Pattern | None = None) -> TaskSpan:
    """The task's span in prompt messages ({role, content}, the assistant answer excluded)."""
    users = [i for i, m in enumerate(prompt) if m["role"] == "user"]
    if not users:
        raise TaskNotFound("the prompt has no user turn")
    last_user = users[-1]
    places = [last_user] + [i for i, m in enumerate(prompt) if m["role"] == "system"]
    if pattern is not None:
        for i in places:
            m = None
            for m in pattern.finditer(prompt[i]["content"]):
                pass
            if m is not None and m.group(1) and m.group(1).strip():
                return _span(prompt, i, m.start(1), m.end(1), "input-pattern")
        raise TaskNotFound(f"input pattern {pattern.pattern!r} matches neither the last user turn "
                           "nor the system turn")
    content = prompt[last_user]["content"]
    hits = list(TASK_PREFIX_RE.finditer(content))
    if hits:
        return _span(prompt, last_user, hits[-1].start(1), hits[-1].end(1), "task-prefix")
    lines = [(m.start(), m.end()) for m in re.finditer(r"[^\n]*\S[^\n]*", content)]
    if not lines:
        raise TaskNotFound("the last user turn is empty")
    if len(lines) == 1:
        return _span(prompt, last_user, *lines[0], "whole-turn")
    # Only now the system turn: a system prompt often says "Your task: ..." about the job
    # itself, which must not win over a user turn that is just the task.
    for i in places[1:]:
        hits = list(TASK_PREFIX_RE.finditer(prompt[i]["content"]))
        if hits:
            return _span(prompt, i, hits[-1].start(1), hits[-1].end(1), "task-prefix")
    return _span(prompt, last_user, *lines[-1], "last-line")


def _span(prompt, i, start, end, rule) -> TaskSpan:
    content = prompt[i]["content"]
    # Trim white space inside the span so the template keeps the prompt's own spacing.
    while start < end and content[start].isspace():
        start += 1
    while end > start and content[end - 1].isspace():
        end -= 1
    return TaskSpan(content[start:end], rule, i, start, end)


@dataclass(frozen=True)
class PromptTemplate:
    """Prompt messages with TASK_PLACEHOLDER where the task sat."""
    messages: tuple[tuple[str, str], ...]        # (role, content)

    @classmethod
    def from_prompt(cls, prompt: list[dict], span: TaskSpan) -> "PromptTemplate":
        msgs = []
        for i, m in enumerate(prompt):
            content = m["content"]
            if TASK_PLACEHOLDER in content:
                raise ValueError(f"the prompt already contains {TASK_PLACEHOLDER!r}; it cannot be "
                                 "made a template")
            if i == span.message:
                content = content[:span.start] + TASK_PLACEHOLDER + content[span.end:]
            msgs.append((m["role"], content))
        return cls(tuple(msgs))

    @classmethod
    def from_json(cls, messages: list[dict]) -> "PromptTemplate":
        tpl = cls(tuple((m["role"], m["content"]) for m in messages))
        if sum(c.count(TASK_PLACEHOLDER) for _, c in tpl.messages) != 1:
            raise ValueError(f"a prompt template needs exactly one {TASK_PLACEHOLDER}")
        return tpl

    def to_json(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def render(self, task_input: str) -> list[dict]:
        """The prompt for one task, white space normalised as the contract's user turn is."""
        task = normalize_space(task_input)
        return [{"role": r, "content": c.replace(TASK_PLACEHOLDER, task)}
                for r, c in self.messages]

    @property
    def sha256(self) -> str:
        """For the contract's shape (system, user) the same hash as data.contract.PROMPT_HASH,
        so the contract's own prompt read back as a template keeps its hash."""
        roles = tuple(r for r, _ in self.messages)
        if roles == ("system", "user"):
            return sha256_text("\n--\n".join(c for _, c in self.messages))
        return sha256_text(json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True))
