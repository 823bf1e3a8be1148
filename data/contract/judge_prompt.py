"""The judge's rubric, prompt and tool, and the hash recorded with every verdict."""
from __future__ import annotations

import json

from data.contract.result import DiscoveryResult
from data.contract.text import normalize_space, sha256_text

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
