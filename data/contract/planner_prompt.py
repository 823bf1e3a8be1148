"""The planner's prompt, used identically by distillation, SFT, ORPO and generation, and its
hash, recorded wherever the prompt is used."""
from __future__ import annotations

from data.contract.result import N_QUESTIONS
from data.contract.text import normalize_space, sha256_text

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
