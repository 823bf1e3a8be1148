"""The discovery-planner contract: the one place every stage takes its task knowledge from.

Each part has its own module (one reason to change each); import from `data.contract` itself:
- result: the typed answer, its two JSON key styles and its JSON schema;
- cases: a task with its gold answer and the JSONL/JSON readers;
- inputs: the one reader of user files (UTF-8, size, depth and line-length limits);
- spec_gate: the deterministic checks an answer must pass;
- answer: the assistant text the model emits and its parsers;
- keys: the key spellings the result is read under (other planners' names, a field map);
- task_prompt: where the task sits in someone else's prompt, and that prompt as a template;
- planner_prompt / judge_prompt: the prompts, the rubric and their content hashes, recorded
  wherever they are used so a number can be traced to the exact words that produced it.
"""
from data.contract.answer import ParsedAnswer, parse_assistant, render_assistant
from data.contract.cases import Case, case_from_dict, load_cases, read_jsonl
from data.contract.inputs import InputError
from data.contract.keys import FieldMapError, parse_field_map
from data.contract.judge_prompt import (JUDGE_PROMPT_HASH, JUDGE_SYSTEM_PROMPT, JUDGE_TOOL, RUBRIC,
                                        RUBRIC_DIMENSIONS, judge_user_message)
from data.contract.planner_prompt import (PLANNER_SYSTEM_PROMPT, PROMPT_HASH, planner_messages,
                                          planner_system_prompt, planner_user_message)
from data.contract.result import N_QUESTIONS, ContractError, DiscoveryResult, Question, json_schema
from data.contract.spec_gate import EMOJI_RE, GENERIC_TITLES, spec_violations
from data.contract.task_prompt import (TASK_PLACEHOLDER, PromptTemplate, TaskNotFound,
                                      compile_input_pattern, find_task)
from data.contract.text import normalize_space, sha256_text

__all__ = [
    "Case", "ContractError", "FieldMapError", "InputError", "PromptTemplate", "TASK_PLACEHOLDER",
    "TaskNotFound", "compile_input_pattern", "find_task", "parse_field_map", "DiscoveryResult",
    "EMOJI_RE", "GENERIC_TITLES", "JUDGE_PROMPT_HASH",
    "JUDGE_SYSTEM_PROMPT", "JUDGE_TOOL", "N_QUESTIONS", "PLANNER_SYSTEM_PROMPT", "PROMPT_HASH",
    "ParsedAnswer", "Question", "RUBRIC", "RUBRIC_DIMENSIONS", "case_from_dict", "json_schema",
    "judge_user_message", "load_cases", "normalize_space", "parse_assistant", "planner_messages",
    "planner_system_prompt", "planner_user_message", "read_jsonl", "render_assistant",
    "sha256_text", "spec_violations",
]
