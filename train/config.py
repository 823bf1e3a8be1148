"""Airtight run configs: a dataclass per stage, loaded from YAML, overridable on the command line.

An unknown or mistyped key is an error that names the key, the file and the valid choices, so a
typo can never silently fall back to a default. Every value is then checked against RANGES (one
table for every stage's keys; a field may carry its own `metadata={"range": (check, text)}`):
numbers must be finite and within range, the device known, and a run must train at least one
step, all before any model loads. Errors name the file (or "command line"), the key, the value
and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _at_least(n):
    return (lambda v: v >= n), f">= {n}"


_POSITIVE = ((lambda v: v > 0), "> 0")
_FRACTION = ((lambda v: 0 <= v <= 1), "0 <= value <= 1")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# key -> (check, allowed range as text). Applies to any stage config that has the key; None (an
# optional key left unset) is never checked. The numbers are what the trainers can run at all
# (TRL/PEFT/torch fail late, or train nothing, outside them), not tuning advice.
RANGES: dict[str, tuple] = {
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "sample_batch_size": _at_least(1),
    "learning_rate": _POSITIVE,
    "discriminator_lr": _POSITIVE,
    "lora_r": _at_least(1),
    "lora_alpha": _POSITIVE,
    "lora_dropout": ((lambda v: 0 <= v < 1), "0 <= value < 1"),
    "num_train_epochs": _at_least(0),
    "max_steps": ((lambda v: v == -1 or v >= 1), "-1 (use num_train_epochs) or >= 1"),
    "warmup_ratio": _FRACTION,
    "weight_decay": _at_least(0),
    "max_length": _at_least(1),
    "max_completion_length": _at_least(1),
    "max_new_tokens": _at_least(1),
    "logging_steps": _at_least(1),
    "save_steps": _at_least(1),
    "save_total_limit": _at_least(1),
    "discriminator_steps": _at_least(1),
    "temperature": _POSITIVE,
    "top_p": ((lambda v: 0 < v <= 1), "0 < value <= 1"),
    "rounds": _at_least(1),
    "samples_per_task": _at_least(1),
    "judge_concurrency": _at_least(1),
    "device": ((lambda v: bool(_DEVICE_RE.match(v))), "auto | cuda | cuda:N | mps | cpu"),
    "precision": ((lambda v: v in ("auto", "bf16", "fp16", "fp32")), "auto | bf16 | fp16 | fp32"),
}


def validate_config(cfg, origins: dict[str, str] | None = None) -> None:
    """Check every value against RANGES (or its field's own "range"), and that the run trains.
    `origins` maps a key to where its value came from (a file or "command line")."""
    origins = origins or {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = origins.get(f.name, "default")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: key {f.name!r} must be a finite number, got {value!r}")
        rule = f.metadata.get("range") or RANGES.get(f.name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        check, allowed = rule
        if not check(value):
            raise ConfigError(f"{where}: key {f.name!r} = {value!r} is out of range; allowed: "
                              f"{allowed}")
    names = {f.name for f in dataclasses.fields(cfg)}
    if {"num_train_epochs", "max_steps"} <= names and cfg.max_steps == -1 \
            and not cfg.num_train_epochs > 0:
        where = origins.get("num_train_epochs", "default")
        raise ConfigError(f"{where}: key 'num_train_epochs' = {cfg.num_train_epochs!r} with "
                          "max_steps -1 trains nothing (the adapter would be the untrained "
                          "initialisation); set num_train_epochs > 0 or max_steps >= 1")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{where}: unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")


def _coerce(value: Any, typ: Any, key: str, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or explain why not."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value for {key!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key {key!r} expects a list, got {value!r}")
        return [_coerce(v, args[0] if args else str, key, where) for v in value]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: key {key!r} expects true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: key {key!r} expects an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key {key!r} expects an integer, got {value!r}") from None
        if not math.isfinite(f):      # int(inf) raises OverflowError; nan != nan
            raise ConfigError(f"{where}: key {key!r} expects a finite integer, got {value!r}")
        if f != int(f):
            raise ConfigError(f"{where}: key {key!r} expects an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key {key!r} expects a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(f):
            raise ConfigError(f"{where}: key {key!r} expects a finite number, got {value!r}")
        return f
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: key {key!r} expects a string, got {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults <- YAML file <- overrides, with every key and value checked."""
    from data.contract.inputs import InputError, read_text

    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = read_text(path, what="config file", limit=1 << 20)
        except InputError as e:          # not UTF-8, a BOM, a folder or FIFO: file and line
            raise ConfigError(str(e)) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        for k, v in raw.items():
            if k not in types_:
                raise ConfigError(_unknown_key_message(str(k), list(types_), str(path)))
            values[k] = _coerce(v, types_[k], k, str(path))
            origins[k] = str(path)
    for k, v in (overrides or {}).items():
        if k not in types_:
            raise ConfigError(_unknown_key_message(k, list(types_), "command line"))
        values[k] = _coerce(v, types_[k], k, "command line")
        origins[k] = "command line"
    cfg = cls(**values)
    validate_config(cfg, origins)
    return cfg


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--key value` or `--key=value` pairs (a bare `--flag` means true)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {tok!r}")
        key = tok[2:].replace("-", "_")
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            val = tokens[i + 1]
            i += 2
        else:
            val, i = "true", i + 1
        out[key] = val
    return out


def load_cli_config(cls: type[T], argv: list[str]) -> T:
    """`--config PATH` (optional) plus `--key value` overrides, as every training stage takes."""
    argv = list(argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    return load_config(cls, config_path, parse_overrides(argv))


def config_help(cls) -> str:
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        doc = f.metadata.get("help", "")
        lines.append(f"  --{f.name} (default: {default!r}) {doc}")
    return "\n".join(lines)


def config_hash(cfg) -> str:
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
