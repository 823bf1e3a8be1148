"""Responder helpers and scripted faults for the fake Anthropic server (fake_anthropic.py).

A responder is `(request body) -> tool input dict | full message dict | Fault | None`; these
helpers read what a request asks (task input, judge sets, forced tool) so writing one is short:

    def prefers_candidate(body):
        sets = judge_sets(body)
        return {"better": "A" if sets["candidate_first"] else "B", ..., "notes": "..."}
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable


def message_text(body: dict) -> str:
    """All text of the request's messages (strings, text blocks, tool results), newline-joined."""
    out: list[str] = []

    def walk(content):
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    if block.get("type") == "text":
                        out.append(str(block.get("text", "")))
                    elif block.get("type") == "tool_result":
                        walk(block.get("content", ""))
    for m in body.get("messages", []):
        walk(m.get("content"))
    return "\n".join(out)


def task_input(body: dict) -> str:
    """The planner's task input ("Task: ..." in the first user turn), or '' if absent."""
    m = re.search(r"^Task: (.*)$", message_text(body), re.M)
    return m.group(1).strip() if m else ""


def forced_tool(body: dict) -> str:
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return choice.get("name", "")
    tools = body.get("tools") or []
    return tools[0].get("name", "") if tools else ""


def default_discovery(task: str) -> dict:
    """A valid camelCase answer, the same for the same task input."""
    topic = " ".join(task.strip().rstrip(".!?").split()) or "your task"
    short = " ".join(topic.lower().split()[:4])
    title = topic[:1].upper() + topic[1:60]
    questions = [
        (f"What total budget do you have for {short}?", True),
        (f"By what date must {short} be done?", False),
        (f"Who else takes part in {short}?", False),
        ("What would make the result a success for you?", False),
        ("Which constraint is hardest to work around?", False),
        ("How many hours per week can you spend?", False),
        ("What have you already tried so far?", False),
    ]
    return {
        "taskTitle": title,
        "taskDescription": f"Help the user {topic[:1].lower() + topic[1:]}.",
        "questions": [{"title": t, "description": f"Shapes the plan for {short}.",
                       "requiresExternalAction": ext} for t, ext in questions],
    }


def judge_sets(body: dict) -> dict:
    """Parse a judge request: input, SET A / SET B (label, title, question titles), the order."""
    text = message_text(body)
    m = re.search(r"^User's task: (.*)$", text, re.M)
    out: dict[str, Any] = {"input": m.group(1).strip() if m else ""}
    for letter in ("A", "B"):
        block = re.search(rf"^SET {letter} \((\w+)\)\nTitle: (.*)\n((?:\d+\. .*\n?)*)", text, re.M)
        if not block:
            raise ValueError(f"judge request has no SET {letter}")
        qs = [re.sub(r"^\d+\. ", "", q) for q in block.group(3).splitlines() if q.strip()]
        out[letter] = {"role": block.group(1), "title": block.group(2), "questions": qs}
    out["candidate_first"] = out["A"]["role"] == "candidate"
    out["candidate"] = out["A"] if out["candidate_first"] else out["B"]
    out["gold"] = out["B"] if out["candidate_first"] else out["A"]
    return out


def default_verdict(body: dict) -> dict:
    return {"better": "tie", "atomicity": 3, "specificity": 3, "coverage": 3, "naturalness": 3,
            "nonRedundancy": 3, "notes": "Fake judge: no real opinion."}


DEFAULT_RESPONDERS: dict[str, Callable[[dict], Any]] = {
    "record_discovery": lambda body: default_discovery(task_input(body)),
    "record_verdict": default_verdict,
}


# ---- faults ---------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str                      # http | slow | mutate | message
    times: int | None = 1          # how many matching requests it applies to; None = forever
    status: int = 0
    error_type: str = ""
    message: str = ""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    mutate: Callable[[dict], dict] | None = None
    stop_reason: str = "tool_use"
    content: str = "tool"          # for kind=message: tool | text | none

    @classmethod
    def http(cls, status: int, error_type: str, message: str, headers: dict | None = None,
             times: int | None = 1) -> "Fault":
        return cls("http", times, status, error_type, message, dict(headers or {}))

    @classmethod
    def rate_limit(cls, retry_after: str | None = "0", times: int | None = 1) -> "Fault":
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        return cls.http(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
                        headers, times)

    @classmethod
    def overloaded(cls, times: int | None = 1) -> "Fault":
        return cls.http(529, "overloaded_error", "Overloaded", None, times)

    @classmethod
    def server_error(cls, status: int = 500, times: int | None = 1) -> "Fault":
        return cls.http(status, "api_error", "Internal server error", None, times)

    @classmethod
    def echo_key(cls, times: int | None = 1) -> "Fault":
        """A badly behaved gateway that echoes the credential it got in a 400 error body."""
        return cls("http", times, 400, "invalid_request_error", "{credential}")

    @classmethod
    def slow(cls, seconds: float, times: int | None = 1) -> "Fault":
        return cls("slow", times, delay=seconds)

    @classmethod
    def tool_input(cls, obj: dict, times: int | None = 1) -> "Fault":
        return cls("mutate", times, mutate=lambda _ans: json.loads(json.dumps(obj)))

    @classmethod
    def six_questions(cls, times: int | None = 1) -> "Fault":
        return cls("mutate", times, mutate=lambda a: {**a, "questions": a["questions"][:6]})

    @classmethod
    def emoji_title(cls, times: int | None = 1) -> "Fault":
        return cls("mutate", times, mutate=lambda a: {**a, "taskTitle": a["taskTitle"] + " \U0001F680"})

    @classmethod
    def max_tokens(cls, times: int | None = 1) -> "Fault":
        """Cut off mid tool call: the tool input is incomplete and stop_reason is max_tokens."""
        return cls("message", times, stop_reason="max_tokens",
                   mutate=lambda a: {k: v for k, v in a.items() if k != "questions"})

    @classmethod
    def refusal(cls, times: int | None = 1) -> "Fault":
        return cls("message", times, stop_reason="refusal", content="none")

    @classmethod
    def no_tool_call(cls, times: int | None = 1) -> "Fault":
        return cls("message", times, stop_reason="end_turn", content="text")
