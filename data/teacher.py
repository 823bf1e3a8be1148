"""One task's conversation with the teacher: the forced-tool request, the spec gate on the
answer, and the retry turn that feeds the specific validation error back.

`conversation()` is a generator (yield request parameters, receive the reply, return the
outcome) so the synchronous and the batch paths of data.distill drive the very same steps, and
a restarted run replays every finished step from the response cache without a request.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable

from data.anthropic_client import ToolReply, forced_tool_request
from data.response_cache import cache_key
from data.contract import (
    PROMPT_HASH, ContractError, DiscoveryResult, json_schema, planner_system_prompt,
    planner_user_message, spec_violations,
)

DISCOVERY_TOOL = {
    "name": "record_discovery",
    "description": "Record the restated task and its clarifying questions.",
    "input_schema": json_schema(),
}
DEFAULT_MAX_TOKENS = 2048
MAX_TOKENS_CEILING = 8192
KIND = "distill"          # the response cache's kind for teacher answers


@dataclass(frozen=True)
class TaskSpec:
    id: str
    input: str


@dataclass
class TaskResult:
    """What one task's distillation ended in (shared by the sync and the batch path)."""
    task: TaskSpec
    status: str                 # ok | invalid | refused | failed
    detail: Any                 # DiscoveryResult when ok, else the reason
    replies: list[ToolReply] = field(default_factory=list)
    attempts: int = 0

    @property
    def from_cache(self) -> bool:
        return bool(self.replies) and all(r.cached for r in self.replies)


def as_tasks(tasks: Iterable[Any]) -> list[TaskSpec]:
    """Accept data.corpus.Task objects, {"id","input"} dicts, (id, input) pairs or strings."""
    out: list[TaskSpec] = []
    for i, t in enumerate(tasks):
        if isinstance(t, str):
            tid, inp = "task-" + hashlib.sha256(" ".join(t.split()).encode()).hexdigest()[:10], t
        elif isinstance(t, dict):
            tid, inp = t.get("id"), t.get("input")
        elif isinstance(t, tuple):
            tid, inp = t
        else:
            tid, inp = getattr(t, "id", None), getattr(t, "input", None)
        if not isinstance(inp, str) or not inp.strip():
            raise ContractError(f"task #{i + 1}: needs a non-empty string input")
        out.append(TaskSpec(str(tid or f"task-{i + 1:04d}"), inp.strip()))
    return out


def answer_problems(reply: ToolReply) -> tuple[list[str], DiscoveryResult | None]:
    """Why this reply cannot be gold (empty list: it can), and the parsed result."""
    if reply.tool_input is None:
        cut = " (the answer was cut off at max_tokens)" if reply.stop_reason == "max_tokens" else ""
        return [f"no {DISCOVERY_TOOL['name']} tool call in the answer{cut}"], None
    try:
        result = DiscoveryResult.from_dict(reply.tool_input, where="answer", exact_questions=None)
    except ContractError as e:
        problems = [str(e)]
        if reply.stop_reason == "max_tokens":
            problems.append("the answer was cut off at max_tokens")
        return problems, None
    problems = spec_violations(result)
    if reply.stop_reason == "max_tokens":
        problems.append("the answer was cut off at max_tokens")
    return problems, result


def feedback_text(problems: list[str], next_attempt: int) -> str:
    # The attempt number keeps every retry request distinct (and so separately cached).
    return ("Your answer failed validation: " + "; ".join(problems) + f". Attempt "
            f"{next_attempt}: call {DISCOVERY_TOOL['name']} again with a complete, corrected "
            "answer: exactly 7 questions, a specific task title, no emoji anywhere.")


Outcome = tuple  # (status, detail, last reply or None, attempts); status: ok | invalid | refused


def conversation(task: TaskSpec, *, model: str, max_attempts: int, max_tokens: int
                 ) -> Generator[dict, ToolReply, Outcome]:
    """Yield request parameters, receive the reply, return the outcome. Deterministic given the
    replies, so a restarted run replays finished steps from the cache without any request."""
    first = planner_user_message(task.input)
    messages: list[dict] = [{"role": "user", "content": first}]
    tokens = max_tokens
    for attempt in range(1, max_attempts + 1):
        reply = yield forced_tool_request(model=model, system=planner_system_prompt(),
                                          tool=DISCOVERY_TOOL, messages=messages,
                                          max_tokens=tokens)
        if reply.stop_reason == "refusal":
            return "refused", f"the teacher refused: {reply.refusal}", reply, attempt
        problems, result = answer_problems(reply)
        if not problems:
            return "ok", result, reply, attempt
        if attempt == max_attempts:
            return ("invalid", f"failed the spec gate after {attempt} attempts: "
                    + "; ".join(problems), reply, attempt)
        feedback = feedback_text(problems, attempt + 1)
        uses = [b for b in reply.content if b.get("type") == "tool_use"]
        if reply.stop_reason == "max_tokens" or not reply.content:
            # A cut-off turn cannot be sent back (its tool input is incomplete): ask afresh,
            # with more room and the reason in the same user turn.
            if reply.stop_reason == "max_tokens":
                tokens = min(tokens * 2, MAX_TOKENS_CEILING)
            messages = [{"role": "user", "content": [{"type": "text", "text": first},
                                                     {"type": "text", "text": feedback}]}]
        elif uses:
            messages = messages + [
                {"role": "assistant", "content": reply.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"],
                                              "is_error": True, "content": feedback}
                                             for b in uses]}]
        else:
            messages = messages + [{"role": "assistant", "content": reply.content},
                                   {"role": "user", "content": feedback}]
    raise AssertionError("unreachable")


def request_key(params: dict) -> str:
    parts = {k: params[k] for k in ("system", "tools", "tool_choice", "messages", "max_tokens")}
    return cache_key(params["model"], PROMPT_HASH, parts)
