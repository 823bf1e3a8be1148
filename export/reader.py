"""Read, validate and summarise a `.fmadapter` package; convert it back to a PEFT adapter.

Validation covers the inventory (regular files only: a symlink, FIFO or device in a package, or
a package folder that is a symlink, is a problem and is never opened; metadata.json at most
MAX_METADATA_BYTES and MAX_METADATA_DEPTH deep), metadata keys and types, the identifier rule,
the blob file's header and every blob's sentinel, dtype, size, offset and alignment, and the
blob count and sizes the package's layout requires. The layout comes from creatorDefined.layout (written by
export.fmadapter); a package without it (e.g. one from Apple's toolkit) is read as afm-text-v7
when it holds 700 blobs.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.contract.inputs import depth
from export import metadata as md
from export.blob import BlobInfo, read_fp16_bits, read_index
from export.layouts import (AFM_SIGNATURE_26_0, AFM_TEXT_V7, RUNTIME_SCALE, STAND_IN, Layout,
                            afm_text_v7, permute_rows, stand_in_from_description)
from export.plan import ADAPTER_FILE, METADATA_FILE, WEIGHTS_FILE, ExportError

DRAFT_FILES = ("draft.mil", "draft_weights.bin")
PACKAGE_SUFFIX = ".fmadapter"
MAX_METADATA_BYTES, MAX_METADATA_DEPTH = md.MAX_METADATA_BYTES, md.MAX_METADATA_DEPTH


@dataclass
class Report:
    path: Path
    name: str
    metadata: dict = field(default_factory=dict)
    layout: Layout | None = None
    blobs: list[BlobInfo] = field(default_factory=list)
    file_size: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _layout_of(meta: dict, n_blobs: int, notes: list[str]) -> Layout | str:
    """The package's layout, or a string saying why it cannot be known."""
    cd = meta.get("creatorDefined") if isinstance(meta.get("creatorDefined"), dict) else {}
    desc = cd.get("layout")
    rank = meta.get("loraRank") if isinstance(meta.get("loraRank"), int) else 32
    if desc == AFM_TEXT_V7:
        return afm_text_v7()
    if isinstance(desc, dict) and desc.get("name") == STAND_IN:
        try:
            return stand_in_from_description(desc, rank)
        except (KeyError, TypeError, ValueError) as e:
            return f"creatorDefined.layout is not a valid stand-in layout ({e!r})"
    if desc is None and n_blobs == len(afm_text_v7().slots):
        notes.append("no creatorDefined.layout: read as afm-text-v7 (700 blobs)")
        return afm_text_v7()
    return f"unknown layout {desc!r} with {n_blobs} blobs; blobs cannot be named"


def inspect_package(pkg) -> Report:
    pkg = Path(pkg)
    name = pkg.name[:-len(PACKAGE_SUFFIX)] if pkg.name.endswith(PACKAGE_SUFFIX) else pkg.name
    rep = Report(pkg, name)
    # lstat, never stat: a package, or a file in it, that is a symlink could point anywhere (and
    # a FIFO would block the read), so neither is followed or opened.
    try:
        st = os.lstat(pkg)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        rep.problems.append(f"{pkg}: a symlink; inspect reads only a real package folder")
        return rep
    if st is None or not stat.S_ISDIR(st.st_mode):
        rep.problems.append(f"{pkg}: not a folder")
        return rep
    if not pkg.name.endswith(PACKAGE_SUFFIX):
        rep.problems.append(f"{pkg.name}: a package folder is named <adapter_name>.fmadapter")
    if not md.NAME_RE.match(name):
        rep.problems.append(f"adapter name {name!r} does not match ^\\w+$ "
                            "(the device reports invalidAdapterName)")
    present = sorted(p.name for p in pkg.iterdir())
    for f in (METADATA_FILE, WEIGHTS_FILE):
        if f not in present:
            rep.problems.append(f"inventory: {f} is missing")
    drafts = [f for f in DRAFT_FILES if f in present]
    if len(drafts) == 1:
        rep.problems.append(f"inventory: {drafts[0]} without its partner (a draft needs both "
                            f"{' and '.join(DRAFT_FILES)})")
    extra = [f for f in present if f not in (METADATA_FILE, WEIGHTS_FILE, *DRAFT_FILES)]
    if extra:
        rep.problems.append(f"inventory: unexpected files {extra}")
    unsafe = _unsafe_entries(pkg, present)
    rep.problems += list(unsafe.values())

    if METADATA_FILE in present and METADATA_FILE not in unsafe:
        raw, problem = _read_metadata_bytes(pkg / METADATA_FILE)
        if problem:
            rep.problems.append(problem)
            raw = b""
        try:
            rep.metadata = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            rep.problems.append(f"{METADATA_FILE}: not UTF-8 JSON ({e})")
        except RecursionError:
            rep.problems.append(f"{METADATA_FILE}: nested too deeply (limit "
                                f"{MAX_METADATA_DEPTH})")
            rep.metadata = {}
        if depth(rep.metadata) > MAX_METADATA_DEPTH:
            rep.problems.append(f"{METADATA_FILE}: nested more than {MAX_METADATA_DEPTH} levels "
                                "deep")
            rep.metadata = {}
        if not isinstance(rep.metadata, dict):
            rep.problems.append(f"{METADATA_FILE}: not a JSON object")
            rep.metadata = {}
        elif rep.metadata:
            rep.problems += md.check(rep.metadata)
            if raw != md.serialize(rep.metadata):
                rep.notes.append(f"{METADATA_FILE}: not serialised as the toolkit does "
                                 "(sorted keys, 4-space indent, no final newline)")
    meta = rep.metadata
    sig = meta.get("baseModelSignature")
    if isinstance(sig, str) and isinstance(meta.get("adapterIdentifier"), str):
        want = md.adapter_identifier(name, sig)
        if meta["adapterIdentifier"] != want:
            rep.problems.append(f"metadata.json: adapterIdentifier {meta['adapterIdentifier']!r}, "
                                f"the rule gives {want!r}")
    cd = meta.get("creatorDefined") if isinstance(meta.get("creatorDefined"), dict) else {}
    if cd.get("standIn"):
        rep.notes.append("STAND-IN package (creatorDefined.standIn): format conformance only, "
                         "it cannot load on a device and must never be shipped")
    elif isinstance(sig, str) and sig != AFM_SIGNATURE_26_0:
        rep.notes.append(f"baseModelSignature {sig} is not the 26.0 system model's "
                         f"({AFM_SIGNATURE_26_0}); it loads only on the OS it was made for")

    if WEIGHTS_FILE not in present or WEIGHTS_FILE in unsafe:
        return rep
    weights = pkg / WEIGHTS_FILE
    rep.file_size = weights.stat().st_size
    rep.blobs, problems = read_index(weights)
    rep.problems += [f"{WEIGHTS_FILE}: {p}" for p in problems]
    layout = _layout_of(meta, len(rep.blobs), rep.notes)
    if isinstance(layout, str):
        rep.problems.append(layout)
        return rep
    rep.layout = layout
    if isinstance(meta.get("loraRank"), int) and meta["loraRank"] != layout.rank:
        rep.problems.append(f"metadata.json: loraRank {meta['loraRank']}, the {layout.name} "
                            f"layout has rank {layout.rank}")
    if len(rep.blobs) != len(layout.slots):
        rep.problems.append(f"{WEIGHTS_FILE}: {len(rep.blobs)} blobs, the {layout.name} layout "
                            f"has {len(layout.slots)}")
    for b, s in zip(rep.blobs, layout.slots):
        if b.dtype != 1:
            rep.problems.append(f"blob {b.index} ({s.key}): dtype {b.dtype_name}, expected fp16")
        if b.size != s.nbytes:
            rep.problems.append(f"blob {b.index} ({s.key}): {b.size} bytes, shape "
                                f"{list(s.shape)} needs {s.nbytes}")
        if b.metadata_offset % 64:
            rep.problems.append(f"blob {b.index}: metadata offset {b.metadata_offset} not "
                                "64-aligned")
    return rep


def _unsafe_entries(pkg: Path, names: list[str]) -> dict[str, str]:
    """Entries that are not regular files (symlinks, FIFOs, devices, folders): name -> problem.
    A package holds regular files only; none of these is opened."""
    out = {}
    for n in names:
        st = os.lstat(pkg / n)
        if stat.S_ISLNK(st.st_mode):
            out[n] = f"{n}: a symlink; a package holds regular files only (not followed)"
        elif not stat.S_ISREG(st.st_mode):
            out[n] = f"{n}: not a regular file (a FIFO, device, socket or folder); not opened"
    return out


def _read_metadata_bytes(path: Path) -> tuple[bytes, str]:
    """(bytes, problem). O_NOFOLLOW | O_NONBLOCK and an fstat check, so a file swapped for a
    symlink or FIFO after the lstat is still never followed nor waited on."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return b"", f"{METADATA_FILE}: cannot be opened safely ({e.strerror})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return b"", f"{METADATA_FILE}: not a regular file; not read"
        if st.st_size > MAX_METADATA_BYTES:
            return b"", (f"{METADATA_FILE}: {st.st_size:,} bytes, more than the "
                         f"{MAX_METADATA_BYTES:,}-byte limit for package metadata")
        return fh.read(MAX_METADATA_BYTES + 1), ""


def print_report(rep: Report, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not rep.metadata and not rep.blobs:
        for p in rep.problems:
            console.print(f"[red]problem:[/red] {p}")
        console.print(f"[red]INVALID[/red] ({len(rep.problems)} problem(s))")
        return
    head = Table(title=f"{rep.path}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    for k in sorted(rep.metadata):
        v = rep.metadata[k]
        if isinstance(v, dict):  # one row per creatorDefined entry reads better than one blob
            for ck in sorted(v):
                cv = v[ck]
                head.add_row(f"{k}.{ck}", cv if isinstance(cv, str)
                             else json.dumps(cv, ensure_ascii=False))
        else:
            head.add_row(k, str(v))
    head.add_row("layout", rep.layout.name if rep.layout else "unknown")
    head.add_row("blobs", f"{len(rep.blobs)}")
    head.add_row("parameters", f"{sum(b.size for b in rep.blobs) // 2:,}")
    head.add_row("weights file", f"{rep.file_size:,} bytes")
    console.print(head)
    if rep.layout and rep.blobs:
        groups: dict[tuple, list] = {}
        for b, s in zip(rep.blobs, rep.layout.slots):
            key = (s.module.rsplit(".", 1)[1], s.matrix, s.shape, b.dtype_name)
            groups.setdefault(key, []).append(b)
        t = Table(title="blobs by module", title_justify="left")
        for col in ("module", "matrix", "shape", "dtype", "count", "bytes", "first offset"):
            t.add_column(col, justify="right" if col in ("count", "bytes", "first offset")
                         else "left")
        for (mod, mat, shape, dt), bs in groups.items():
            t.add_row(mod, mat, "x".join(map(str, shape)), dt, str(len(bs)),
                      f"{sum(b.size for b in bs):,}", f"{bs[0].metadata_offset:,}")
        console.print(t)
    for n in rep.notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    for p in rep.problems:
        console.print(f"[red]problem:[/red] {p}")
    console.print("[green]valid[/green]" if rep.ok else f"[red]INVALID[/red] "
                  f"({len(rep.problems)} problem(s))")


# ---- back to PEFT --------------------------------------------------------------------------
def to_peft(pkg, out, *, force: bool = False) -> Path:
    """Write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors, run.json).

    Undoes what export did: the rotary row permutation (when training used interleaved rotary)
    and the scale fold (B is divided back and lora_alpha restored, so alpha/r is the training
    scale). Weights come back as fp32 holding the package's fp16 values.
    """
    from safetensors.numpy import save_file

    rep = inspect_package(pkg)
    if not rep.ok:
        raise ExportError(f"{pkg}: not a valid package:\n  " + "\n  ".join(rep.problems))
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")
    layout, meta = rep.layout, rep.metadata
    cd = meta["creatorDefined"]
    rank = layout.rank
    scale = cd.get("trainingLoraScale", RUNTIME_SCALE)  # absent: Apple's own 16/32
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ExportError(f"{pkg}: creatorDefined.trainingLoraScale {scale!r} is not a positive "
                          "number; cannot undo the scale fold")
    unfold = RUNTIME_SCALE / scale
    rope = cd.get("trainingRopeLayout", "interleaved" if layout.name == AFM_TEXT_V7 else None)
    unpermute = layout.name == AFM_TEXT_V7 and rope == "interleaved"
    tensors: dict[str, np.ndarray] = {}
    with open(rep.path / WEIGHTS_FILE, "rb") as fh:
        for b, s in zip(rep.blobs, layout.slots):
            bits = read_fp16_bits(fh, b).reshape(s.shape)
            if s.rotary and unpermute:
                bits = permute_rows(bits, layout.head_dim, inverse=True)
            values = bits.view(np.float16).astype(np.float32)
            if s.matrix == "B" and unfold != 1.0:
                values *= np.float32(unfold)
            tensors[s.key] = np.ascontiguousarray(values)
    alpha = scale * rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    targets = [m for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj") if any(k.endswith(f".{m}") for k in layout.modules)]
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "target_modules": targets, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "layers_to_transform": None, "base_model_name_or_path": None,
    }
    run = {
        "run_id": cd.get("runId"), "stage": cd.get("stage"),
        "base_model": {
            "name_or_path": None, "revision": None, "identity": cd.get("baseIdentity"),
            "architecture": cd.get("baseArchitecture"), "rope_layout": rope,
            "base_signature": None if cd.get("standIn") else meta["baseModelSignature"],
            "stand_in": bool(cd.get("standIn")),
        },
        "lora": {"r": rank, "alpha": alpha, "dropout": 0.0, "target_modules": targets},
        "data": {"train_sha256": cd.get("trainSha256"), "val_sha256": cd.get("valSha256")},
        "prompt_hash": cd.get("promptHash"),
        "metrics": {"ruler": cd["ruler"]} if "ruler" in cd else {},
        "converted_from": {"adapterIdentifier": meta["adapterIdentifier"],
                           "baseModelSignature": meta["baseModelSignature"]},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
        (tmp / "run.json").write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
        if out.exists() or out.is_symlink():
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            else:
                out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
