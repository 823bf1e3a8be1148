"""The key names the planner JSON is read under: the project's camelCase and snake_case, the
names other planners use for the same contract, and a user's own field map.

Reading is by meaning, not by spelling: `title` and `taskTitle` both mean the task's title at the
top level (inside a question `title` and `question` both mean the question). Writing is always
the project's canonical form (`DiscoveryResult.to_dict`). When two names for one meaning are both
present and disagree, the record is ambiguous and refused; silently preferring one would train on
whichever spelling happened to win.
"""
from __future__ import annotations

from typing import Any, Mapping

from data.contract.errors import ContractError

# Canonical (camelCase) name -> every accepted spelling, canonical first. The top level and the
# question level are separate namespaces: `title` means a different thing in each.
TOP_LEVEL_ALIASES: dict[str, tuple[str, ...]] = {
    "taskTitle": ("taskTitle", "task_title", "title"),
    "taskDescription": ("taskDescription", "task_description", "summary"),
    "questions": ("questions",),
}
QUESTION_ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("title", "question"),
    "description": ("description", "detail"),
    "requiresExternalAction": ("requiresExternalAction", "requires_external_action"),
}
FIELD_MAP_KEYS = (*TOP_LEVEL_ALIASES, *(f"questions[].{k}" for k in QUESTION_ALIASES))

# Every spelling of a result key at the top level, so a bare case's extras leave them out.
RESULT_KEYS = frozenset(n for names in TOP_LEVEL_ALIASES.values() for n in names)


class FieldMapError(ContractError):
    """A --field-map / field_map value that cannot be used; the message names the entry."""


def parse_field_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """`taskTitle=heading,questions[].title=ask` (or a mapping) -> {canonical: their key}.

    Canonical names are the camelCase ones; question keys are written `questions[].title` (a bare
    `title`, `description` or `requiresExternalAction` is taken as the question's, since the top
    level has its own names).
    """
    if spec is None or spec == "" or spec == {}:
        return {}
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise FieldMapError(f"field map entry {part.strip()!r}: expected CANONICAL=THEIRS")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    elif isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        raise FieldMapError(f"field map: expected 'a=b,c=d' or a mapping, got "
                            f"{type(spec).__name__}")
    out: dict[str, str] = {}
    for k, v in items:
        key = f"questions[].{k}" if k in QUESTION_ALIASES else k
        if key not in FIELD_MAP_KEYS:
            raise FieldMapError(f"field map entry {k!r}: unknown contract key; use one of "
                                f"{', '.join(FIELD_MAP_KEYS)}")
        if not isinstance(v, str) or not v.strip():
            raise FieldMapError(f"field map entry {k!r}: their key name must be a non-empty string")
        out[key] = v.strip()
    return out


def spellings(canonical: str, field_map: Mapping[str, str] | None, *, question: bool) -> tuple:
    """The accepted names of one canonical key. A field-map entry replaces the aliases for its
    field (so it also settles which of two disagreeing keys is meant)."""
    table = QUESTION_ALIASES if question else TOP_LEVEL_ALIASES
    names = table[canonical]
    mapped = (field_map or {}).get(f"questions[].{canonical}" if question else canonical)
    return (mapped,) if mapped else names


def pick(obj: Mapping, where: str, names: tuple[str, ...]) -> tuple[str | None, Any]:
    """(the key found, its value) among `names`; (None, None) when none is present.

    Two present spellings with different values are ambiguous: an error naming both keys.
    """
    found = [(n, obj[n]) for n in names if n in obj]
    if not found:
        return None, None
    first_key, first = found[0]
    for key, value in found[1:]:
        if value != first:
            raise ContractError(f"{where}: ambiguous: keys {first_key!r} and {key!r} mean the "
                                f"same field but disagree ({_short(first)} vs {_short(value)}); "
                                "keep one, or name the one to read with a field map")
    return first_key, first


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
