"""Write a `.fmadapter` package from a training run folder, tensor by tensor, atomically.

Everything that can be checked before a byte is written is checked first (name, target, run
record, layout, every tensor's presence and shape); values (NaN, fp16 range) are checked as each
tensor streams through. The package is written into a temporary folder beside the target and
renamed into place only when complete, so a refusal or a crash never leaves a partial package;
a temporary folder a killed export left behind is removed by a later export into the same folder
(see sweep_stale_temps for the rule).
The checks live in export.plan, the tensor conversion in export.tensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.contract import TASK_PLACEHOLDER
from export import metadata as md
from export.blob import HEADER_SIZE, METADATA_SIZE, align_up, read_index
from export.layouts import Layout
from export.plan import METADATA_FILE, WEIGHTS_FILE, ExportError, plan
from export.tensors import write_weights


@dataclass
class ExportResult:
    path: Path
    layout: str
    blobs: int
    bytes: int
    metadata: dict
    warnings: list[str] = field(default_factory=list)
    prompt_file: Path | None = None   # the adapter's own prompt, when it was not the contract's


def export_adapter(run_dir, name: str, out_dir, *, author: str = md.DEFAULT_AUTHOR,
                   description: str = "", license: str = "", creator_defined: dict | None = None,
                   allow_stand_in: bool = False, force: bool = False,
                   progress: bool = True) -> ExportResult:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not md.NAME_RE.match(name or ""):
        raise ExportError(f"--name {name!r}: an adapter name may hold only letters, digits and "
                          "underscores (^\\w+$); the device rejects anything else "
                          "(AssetError.invalidAdapterName)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a folder")
    target = out_dir / f"{name}.fmadapter"
    if (target.exists() or target.is_symlink()) and not force:
        raise ExportError(f"{target}: already exists; pass --force to replace it")
    secrets = md.secret_values()
    for flag, text in (("--author", author), ("--description", description),
                       ("--license", license)):
        why = md.user_text_problem(text, secrets)
        if why:
            raise ExportError(f"{flag}: {why}; refusing to write it into a package")
    bad = md.user_creator_problems(creator_defined or {}, "", secrets)
    if bad:
        raise ExportError("--creator-defined: " + "; ".join(bad) + "; refusing to write it "
                          "into a package")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a folder (expected a training run folder)")
    p = plan(run_dir, allow_stand_in=allow_stand_in)
    layout: Layout = p["layout"]
    try:
        creator, dropped = md.creator_defined(
            p["run"], creator_defined, layout_description=layout.describe(),
            stand_in=p["stand_in"], lora_alpha=p["alpha"], lora_scale=p["scale"])
    except ValueError as e:
        raise ExportError(str(e)) from None
    warnings = [f"creatorDefined: dropped {k} (looks like a local path or holds a secret)"
                for k in dropped]
    if p["stand_in"]:
        warnings.append("stand-in package: format conformance only; it cannot load on a device "
                        "and must never be shipped")
    meta = md.build(name, p["signature"], p["rank"], author=author, description=description,
                    license=license, creator_defined=creator)

    created_out = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings += [f"removed stale temporary folder {p.name} ({why})"
                 for p, why in sweep_stale_temps(out_dir)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.fmadapter.{_writer_tag()}.", suffix=".tmp",
                                dir=out_dir))
    try:
        (tmp / METADATA_FILE).write_bytes(md.serialize(meta))
        size = write_weights(tmp / WEIGHTS_FILE, p, progress=progress)
        blobs, problems = read_index(tmp / WEIGHTS_FILE)
        if problems or len(blobs) != len(layout.slots) or size != expected_size(layout):
            raise ExportError(f"internal check of the written file failed ({size} bytes, "
                              f"expected {expected_size(layout)}): {problems[:3]}")
        _replace(tmp, target)
        prompt_file = _write_prompt(p["run"], out_dir / f"{name}.prompt.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_out:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return ExportResult(target, layout.name, len(layout.slots), size, meta, warnings, prompt_file)


def _write_prompt(run: dict, path: Path) -> Path | None:
    """An adapter trained on its own instructions needs them at inference: the package holds
    only Apple's two files, so the prompt template (eval's, from run.json) goes beside it."""
    rec = (run.get("data") or {}).get("prompt") or {}
    if rec.get("source") != "training data":
        return None
    body = {"sha256": rec["sha256"], "placeholder": TASK_PLACEHOLDER,
            "template": rec["template"]}
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---- stale temporary folders ----------------------------------------------------------------
# A killed export leaves its temporary folder (`.NAME.fmadapter.w<pid>-<host>.XXXXXXXX.tmp`, as
# large as the package) behind. Every export sweeps the folders of that pattern in its --out
# folder when no writer can still be using them: the writer tag names this host and a pid that is
# no longer running, or (another host, or an untagged folder from an older version) nothing in it
# changed for STALE_AFTER_S. Nothing else is touched: no other name, no symlink, no file.
STALE_AFTER_S = 6 * 3600
_TEMP_RE = re.compile(r"^\.\w+\.fmadapter\.(?:w(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\.)?"
                      r"[A-Za-z0-9_]+\.tmp$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _writer_tag() -> str:
    return f"w{os.getpid()}-{_host_tag()}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # someone else's process: running
        return True
    return True


def _newest_mtime(folder: Path) -> float:
    newest = os.lstat(folder).st_mtime
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
    return newest


def sweep_stale_temps(out_dir: Path, now: float | None = None) -> list[tuple[Path, str]]:
    """Remove abandoned export temp folders in out_dir; returns (folder, why) per removal."""
    now = time.time() if now is None else now
    removed = []
    for p in sorted(out_dir.iterdir()):
        m = _TEMP_RE.match(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        try:
            if m["pid"] and m["host"] == _host_tag():
                if _pid_running(int(m["pid"])):
                    continue
                why = f"its writer, pid {m['pid']}, is no longer running"
            else:
                age = now - _newest_mtime(p)
                if age < STALE_AFTER_S:
                    continue
                why = f"untouched for {age / 3600:.1f} hours"
            shutil.rmtree(p)
        except OSError:
            continue                      # in use or vanished meanwhile: leave it
        removed.append((p, why))
    return removed


def expected_size(layout: Layout) -> int:
    pos = HEADER_SIZE
    for s in layout.slots:
        pos = align_up(pos) + METADATA_SIZE + s.nbytes
    return pos


def _replace(tmp: Path, target: Path) -> None:
    """Rename the finished folder into place; an old package (with --force) goes only after."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def describe_result(r: ExportResult) -> str:
    s = (f"wrote {r.path}  ({r.layout}, {r.blobs} blobs, {r.bytes:,} bytes, "
         f"{r.metadata['adapterIdentifier']})")
    if r.prompt_file:
        s += (f"\ntrained on its own prompt: use the instructions in {r.prompt_file} "
              "(the task goes where the placeholder is)")
    return s


if __name__ == "__main__":  # pragma: no cover - the CLI lives in export.fmadapter
    sys.exit("use: python -m export.fmadapter --help")
