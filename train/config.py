"""Airtight run configs: a dataclass per stage, loaded from YAML, overridable on the command line.

An unknown or mistyped key is an error that names the key, the file and the valid choices, so a
typo can never silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


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
        if f != int(f):
            raise ConfigError(f"{where}: key {key!r} expects an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key {key!r} expects a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: key {key!r} expects a string, got {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults <- YAML file <- overrides, with every key and value checked."""
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    for k, v in (overrides or {}).items():
        if k not in types_:
            raise ConfigError(_unknown_key_message(k, list(types_), "command line"))
        values[k] = _coerce(v, types_[k], k, "command line")
    return cls(**values)


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
