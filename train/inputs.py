"""What a training run reads and records about its data, shared by both backends: SFT rows in
any supported format as prompt/completion datasets, and the run.json data record (file hashes,
every training input for eval's leak check, ruler leaks, system-prompt mismatches)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from data.contract import FieldMapError, parse_field_map
from data.formats import (FormatError, answer_of, load_rows, prompt_mismatches, prompt_record,
                          row_tasks)
from data.leak import ruler_guard
from train.common import file_sha256, training_inputs
from train.config import ConfigError


def load_sft_datasets(cfg):
    """(train, val, train rows): any supported format converted to prompt/completion rows."""
    from datasets import Dataset

    for name in ("train_file", "val_file"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{name} {p} does not exist; build it with "
                                    "`python -m data.sft` (or point the config at your data)")
    try:
        rows, _ = load_rows(cfg.train_file, cfg.data_format)
        val_rows = load_rows(cfg.val_file, cfg.data_format)[0] if cfg.val_file else None
    except FormatError as e:
        raise ConfigError(str(e)) from None
    strip = lambda rs: [{"prompt": r["prompt"], "completion": r["completion"]} for r in rs]
    train = Dataset.from_list(strip(rows))
    val = Dataset.from_list(strip(val_rows)) if val_rows else None
    return train, val, rows


def chosen_answers(path) -> list:
    """The answer trained towards in each row with a prompt (the completion, or a preference
    pair's chosen side), one per user turn as training_inputs counts them; None where none
    parses."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                answer = answer_of(row.get("completion", row.get("chosen")))
                out += [answer for m in row.get("prompt", []) if m.get("role") == "user"]
    return out


def data_record(train_file: str, val_file: str | None, n_train: int, n_val: int) -> dict:
    """What run.json says about a prompt/completion or preference file (ORPO and train.prefs),
    including every training input for eval's leak check."""
    inputs = training_inputs(train_file)
    answers = chosen_answers(train_file)
    leaks = ruler_guard().find_leaks((f"{train_file}#{i + 1}", t, a)
                                     for i, (t, a) in enumerate(zip(inputs, answers)))
    return {"train_file": str(train_file), "train_sha256": file_sha256(train_file),
            "val_file": str(val_file) if val_file else None, "val_sha256": file_sha256(val_file),
            "n_train": n_train, "n_val": n_val, "inputs": inputs,
            "ruler_leaks": [lk.describe() for lk in leaks]}


def sft_data_record(train_file: str, val_file: str | None, rows: list[dict], n_val: int,
                    input_pattern: str | None = None) -> dict:
    """data_record for SFT rows of any format (data.formats): the same leak guard over each
    row's task (found by data.contract.find_task: a documented rule or `input_pattern`) and its
    answer (gold side), with file:line locations and the rule that found the task, the system prompt check, and the prompt
    training used as a template (`prompt`), which eval and export reuse."""
    try:
        prompt = prompt_record(rows, input_pattern)
        tasks = row_tasks(rows, input_pattern)
    except (FormatError, ValueError) as e:
        raise ConfigError(str(e)) from None
    inputs = [t.text for t in tasks]
    leaks = ruler_guard().find_leaks((r["where"], t.text, answer_of(r["completion"]))
                                     for r, t in zip(rows, tasks))
    rule = {r["where"]: t.rule for r, t in zip(rows, tasks)}
    return {"train_file": str(train_file), "train_sha256": file_sha256(train_file),
            "val_file": str(val_file) if val_file else None, "val_sha256": file_sha256(val_file),
            "n_train": len(rows), "n_val": n_val, "inputs": inputs,
            "ruler_leaks": [f"{lk.describe()} (task by {rule[lk.where]})" for lk in leaks],
            "prompt_mismatches": prompt_mismatches(rows), "prompt": prompt}


def field_map_of(cfg) -> dict:
    """The config's `field_map` (CANONICAL=THEIRS,...) as a mapping, or a ConfigError."""
    try:
        return parse_field_map(getattr(cfg, "field_map", "") or None)
    except FieldMapError as e:
        raise ConfigError(f"key 'field_map': {e}") from None


def warn_prompt_mismatches(data: dict) -> None:
    prompt = data.get("prompt") or {}
    if prompt.get("source") == "training data":
        # Not a mistake: the data brings its own instructions; eval and export will use them.
        rules = ", ".join(f"{k} {v}" for k, v in prompt["input_rules"].items())
        print(f"note: the training data uses its own prompt (sha256 {prompt['sha256'][:12]}, "
              f"{prompt['rows']} of {data['n_train']} rows), recorded in run.json for eval and "
              f"export; tasks found by rule: {rules}", file=sys.stderr)
        if prompt["other_templates"]:
            print(f"WARNING: {len(prompt['other_templates'])} other prompt template(s) in the "
                  "training data; eval uses the most common one", file=sys.stderr)
        return
    if data["prompt_mismatches"]:
        shown = data["prompt_mismatches"][:5]
        print(f"WARNING: {len(data['prompt_mismatches'])} training row(s) do not use the "
              "contract's planner system prompt, which export and eval use:\n  "
              + "\n  ".join(shown), file=sys.stderr)
