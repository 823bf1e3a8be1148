"""The prompt an adapter was trained with, so it is scored with the same instructions.

train.sft records in run.json (`data.prompt`) the prompt its data used, as a template with the
task replaced by a placeholder (data.formats.prompt_record), and its `field_map` for answers
that use other key names. An adapter trained on the contract's prompt needs nothing from here;
one trained on its own instructions is evaluated (and exported) with them: eval.run picks them
up from the adapter's run.json, or from any run folder with --prompt-from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.contract import (PROMPT_HASH, FieldMapError, PromptTemplate, parse_field_map)
from data.contract.inputs import read_json


@dataclass(frozen=True)
class RunPrompt:
    template: PromptTemplate | None = None     # None: the contract's prompt
    sha256: str = PROMPT_HASH
    source: str = "contract"                   # contract | training data
    origin: str = ""                           # the run folder it came from
    field_map: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "from": self.origin or None,
                **({"field_map": self.field_map} if self.field_map else {})}


def run_prompt(run_dir) -> RunPrompt:
    """The prompt and field map recorded in RUN_DIR/run.json; ValueError naming the file when
    run.json is missing or unreadable, or its prompt record is malformed."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"{path}: no run.json, so the prompt it was trained with is unknown")
    return prompt_of_run(read_json(path, what="run.json"), run_dir)   # InputError: a ValueError


def prompt_of_run(run: dict, run_dir) -> RunPrompt:
    """RunPrompt from an already-read run.json of RUN_DIR."""
    path = Path(run_dir) / "run.json"
    try:
        fmap = parse_field_map((run.get("config") or {}).get("field_map") or None)
    except FieldMapError as e:
        raise ValueError(f"{path}: key 'config.field_map': {e}") from None
    rec = (run.get("data") or {}).get("prompt")
    if not rec or rec.get("source") != "training data":
        return RunPrompt(origin=str(run_dir), field_map=fmap)
    try:
        tpl = PromptTemplate.from_json(rec["template"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: key 'data.prompt.template': {e}") from None
    if tpl.sha256 != rec.get("sha256"):
        raise ValueError(f"{path}: key 'data.prompt': the template does not match its sha256 "
                         f"({tpl.sha256[:12]} vs {str(rec.get('sha256'))[:12]}); edited?")
    return RunPrompt(tpl, tpl.sha256, "training data", str(run_dir), fmap)
