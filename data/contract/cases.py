"""A task with its gold answer, and the JSONL/JSON readers whose errors name file and line."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from data.contract.inputs import read_json as _read_json
from data.contract.inputs import read_jsonl as _read_jsonl
from data.contract.keys import RESULT_KEYS
from data.contract.result import ContractError, DiscoveryResult
from data.contract.text import normalize_space, sha256_text


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


def case_from_dict(obj: Any, *, where: str = "record", default_id: str | None = None,
                   field_map: Mapping[str, str] | None = None) -> Case:
    """Accept the case wrapper or a bare result carrying its own `input`; the result's keys may
    be any known spelling or the user's `field_map` (data.contract.keys)."""
    if not isinstance(obj, Mapping):
        raise ContractError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    inp = obj.get("input")
    if not isinstance(inp, str) or not inp.strip():
        raise ContractError(f"{where}: missing or empty key 'input'")
    body = obj["gold"] if "gold" in obj else obj
    gold = DiscoveryResult.from_dict(body, where=f"{where}: gold" if "gold" in obj else where,
                                     field_map=field_map)
    cid = obj.get("id", default_id)
    if cid is None:
        cid = "task-" + sha256_text(normalize_space(inp))[:10]
    known = {"id", "input", "gold", "source", "taskTitle", "task_title", "taskDescription",
             "task_description", "questions"}
    if "gold" not in obj:    # a bare result: its other planners' keys are the answer too
        known |= {*RESULT_KEYS, *(field_map or {}).values()}
    extra = {k: v for k, v in obj.items() if k not in known}
    return Case(str(cid), inp.strip(), gold, str(obj.get("source", "")), extra)


def read_jsonl(path, *, what: str = "record", objects: bool = True) -> list[tuple[str, Any]]:
    """Parse a JSONL file; returns (where, object) pairs; errors name file and line (see
    data.contract.inputs for the rules: UTF-8, no BOM, objects, line length)."""
    return _read_jsonl(path, what=what, objects=objects)


def load_cases(path, field_map: Mapping[str, str] | None = None) -> list[Case]:
    """Cases from a .jsonl file (one per line) or a .json file (one case or a list)."""
    path = str(path)
    if path.endswith(".jsonl"):
        return [case_from_dict(o, where=w, field_map=field_map)
                for w, o in read_jsonl(path, what="case")]
    obj = _read_json(path, what="case file")
    items = obj if isinstance(obj, list) else [obj]
    return [case_from_dict(o, where=f"{path}[{i}]" if isinstance(obj, list) else path,
                           field_map=field_map) for i, o in enumerate(items)]
