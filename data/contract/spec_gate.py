"""The spec gate: the deterministic checks an answer must pass before anything judges it
(see shared/reference/ruler-and-metric.md)."""
from __future__ import annotations

import re

from data.contract.result import N_QUESTIONS, DiscoveryResult

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
