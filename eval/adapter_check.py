"""What an adapter was trained on, and whether that makes its experiment invalid.

An adapter's run.json lists every training input (data.inputs). If one equals or nearly equals
a ruler task, or run.json cannot show the training data, the experiment is still scored but
logged `invalid` with the reason, so it can never become the running best.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.leak import LeakGuard


def _sha256_files(paths) -> str | None:
    h = hashlib.sha256()
    found = False
    for p in paths:
        if p.is_file():
            found = True
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest() if found else None


def adapter_hash(adapter_dir) -> str | None:
    d = Path(adapter_dir)
    return _sha256_files([d / "adapter_config.json", d / "adapter_model.safetensors",
                          d / "adapter_model.bin"])


def training_inputs_of(run: dict, adapter_dir) -> tuple[list[str] | None, str | None]:
    """(training inputs, None) from run.json, or (None, why they cannot be known)."""
    data = run.get("data") or {}
    if isinstance(data.get("inputs"), list):
        return [str(x) for x in data["inputs"]], None
    # Older runs: re-read the training file, but only if it is byte-identical to what was trained.
    train_file, recorded = data.get("train_file"), data.get("train_sha256")
    if train_file and recorded and Path(train_file).is_file():
        from train.common import file_sha256, training_inputs
        if file_sha256(train_file) == recorded:
            return training_inputs(train_file), None
        return None, (f"{adapter_dir}/run.json has no data.inputs and {train_file} changed since "
                      "training (sha256 differs)")
    return None, (f"{adapter_dir}/run.json has no data.inputs and its training file is not "
                  "available, so its training data cannot be checked for ruler tasks")


def leak_reason(adapter_dir, cases) -> tuple[dict | None, str | None]:
    """(run.json or None, why the experiment is invalid or None) for an adapter folder."""
    run_path = Path(adapter_dir) / "run.json"
    if not run_path.is_file():
        return None, (f"{adapter_dir} has no run.json, so its training data cannot be checked for "
                      "ruler tasks")
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return None, f"{run_path}:{e.lineno}: invalid JSON ({e.msg}); training data unknown"
    inputs, why = training_inputs_of(run, adapter_dir)
    if inputs is None:
        return run, why
    guard = LeakGuard([(c.id, c.input) for c in cases])
    leaks = guard.find_leaks((f"training input #{i + 1}", t) for i, t in enumerate(inputs))
    if leaks:
        shown = "; ".join(f"{lk.protected_id} {lk.protected_input!r} ~ {lk.where} {lk.input!r}"
                          for lk in leaks[:5])
        more = f" (+{len(leaks) - 5} more)" if len(leaks) > 5 else ""
        return run, (f"leak: the adapter's training data contains {len(leaks)} ruler task(s): "
                     f"{shown}{more}")
    return run, None
