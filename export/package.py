"""Write a `.fmadapter` package from a training run folder, tensor by tensor, atomically.

Everything that can be checked before a byte is written is checked first (name, target, run
record, layout, every tensor's presence and shape); values (NaN, fp16 range) are checked as each
tensor streams through. The package is written into a temporary folder beside the target and
renamed into place only when complete, so a refusal or a crash never leaves a partial package.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export import metadata as md
from export.blob import HEADER_SIZE, METADATA_SIZE, BlobWriter, align_up, read_index
from export.layouts import (AFM_SIGNATURE_26_0, AFM_TEXT_V7, LORA_KEY_RE, MODULE_ORDER,
                            RUNTIME_SCALE, Layout, afm_text_v7, layout_for_architecture,
                            module_layer, permute_rows, stand_in_from_adapter,
                            stand_in_signature)

FP16_MAX = 65504.0
WEIGHTS_FILE = "adapter_weights.bin"
METADATA_FILE = "metadata.json"
ADAPTER_FILE = "adapter_model.safetensors"


class ExportError(ValueError):
    """An export was refused; the message says which file, key or tensor and why."""


STAND_IN_REFUSAL = (
    "{run}: the adapter was trained on {arch!r}, a stand-in base, not Apple's on-device model "
    "(AFMTextV7ForCausalLM). A .fmadapter is a set of low-rank deltas for the exact weights of "
    "the system model: on a different network they have other shapes, other layers and other "
    "meanings, and the device refuses or misuses them (no matching base signature). To ship, "
    "train on Apple's base checkpoint (the toolkit's assets/base-model.pt) with "
    "configs/afm-sft.yaml and export that run. To test the export pipeline with this adapter "
    "anyway, pass --allow-stand-in: it writes a format-conformance package marked "
    "creatorDefined.standIn = true that must never be shipped.")


@dataclass
class ExportResult:
    path: Path
    layout: str
    blobs: int
    bytes: int
    metadata: dict
    warnings: list[str] = field(default_factory=list)


# ---- reading the run folder ----------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise ExportError(f"{path}: missing ({what})")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return obj


def lora_scale(cfg: dict, where: Path) -> tuple[int, float, float]:
    """(rank, alpha, effective scale) from adapter_config.json; per-module patterns refused."""
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise ExportError(f"{where}: key {key!r} missing or not a number")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ExportError(f"{where}: {key} gives modules their own rank/alpha; the package "
                              "has one rank and one scale, so export supports only uniform LoRA")
    if cfg.get("use_dora"):
        raise ExportError(f"{where}: use_dora is set; DoRA magnitude vectors have no place in "
                          "a .fmadapter (plain LoRA only)")
    r, alpha = int(cfg["r"]), cfg["lora_alpha"]
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, alpha, scale


def _targeted(module: str, cfg: dict) -> bool:
    """Would PEFT have put a LoRA on this module, given adapter_config.json? (PEFT's rules.)"""
    targets = cfg.get("target_modules")
    short = module.rsplit(".", 1)[1]
    if targets == "all-linear":
        hit = short in MODULE_ORDER
    elif isinstance(targets, str):
        hit = re.fullmatch(targets, module) is not None
    elif isinstance(targets, (list, tuple)):
        hit = any(module == t or module.endswith("." + t) for t in targets)
    else:
        hit = True
    layers = cfg.get("layers_to_transform")
    if hit and layers is not None:
        layers = [layers] if isinstance(layers, int) else list(layers)
        hit = module_layer(module) in layers
    return hit


def _open_adapter(path: Path):
    """A lazy safetensors handle; numpy where possible, torch for bf16 (numpy has no bf16)."""
    from safetensors import safe_open
    if not path.exists():
        legacy = path.with_name("adapter_model.bin")
        hint = (" (found adapter_model.bin: re-save the adapter with safe_serialization=True)"
                if legacy.exists() else "")
        raise ExportError(f"{path}: missing{hint}")
    handle = safe_open(str(path), framework="numpy")
    dtypes = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
    if "BF16" in dtypes.values():
        handle = safe_open(str(path), framework="pt")
    return handle, dtypes


def _as_numpy(handle, key: str) -> np.ndarray:
    t = handle.get_tensor(key)
    if not isinstance(t, np.ndarray):  # torch tensor (bf16 file)
        t = t.float().numpy()
    return t


def plan(run_dir: Path, *, allow_stand_in: bool) -> dict:
    """Everything needed to write, checked: layout, signature, per-slot source key or zeros."""
    run = _read_json(run_dir / "run.json", "the run record written by training")
    cfg_path = run_dir / "adapter_config.json"
    cfg = _read_json(cfg_path, "the PEFT adapter config")
    base = run.get("base_model")
    if not isinstance(base, dict):
        raise ExportError(f"{run_dir / 'run.json'}: key 'base_model' missing or not an object")
    rank, alpha, scale = lora_scale(cfg, cfg_path)
    handle, dtypes = _open_adapter(run_dir / ADAPTER_FILE)
    shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    for k, dt in dtypes.items():
        if dt not in ("F16", "BF16", "F32", "F64"):
            raise ExportError(f"{run_dir / ADAPTER_FILE}: tensor {k!r} has dtype {dt}; "
                              "LoRA weights must be floating point")

    arch = base.get("architecture")
    layout_name = layout_for_architecture(arch)
    permute = False
    if layout_name == AFM_TEXT_V7:
        layout: Layout = afm_text_v7()
        if rank != layout.rank:
            raise ExportError(f"{cfg_path}: r = {rank}; the afm-text-v7 layout (and the device) "
                              f"uses rank {layout.rank}. Retrain with lora_r: {layout.rank}")
        signature = base.get("base_signature")
        if signature != AFM_SIGNATURE_26_0:
            raise ExportError(
                f"{run_dir / 'run.json'}: base_model.base_signature is {signature!r}; the "
                f"afm-text-v7 layout is the 26.0 system model, signature {AFM_SIGNATURE_26_0}. "
                "Training records it from the toolkit's base checkpoint")
        rope = base.get("rope_layout")
        if rope not in ("interleaved", "half-split"):
            raise ExportError(
                f"{run_dir / 'run.json'}: base_model.rope_layout is {rope!r}; export needs the "
                "rotary layout the training model used, 'interleaved' or 'half-split', recorded "
                "by training (it is never guessed: a wrong guess silently scrambles Q and K)")
        permute = rope == "interleaved"
    else:
        if not allow_stand_in:
            raise ExportError(STAND_IN_REFUSAL.format(run=run_dir / "run.json", arch=arch))
        identity = base.get("identity")
        if not isinstance(identity, str) or not identity:
            raise ExportError(f"{run_dir / 'run.json'}: base_model.identity is missing; the "
                              "stand-in signature is derived from it")
        layout = stand_in_from_adapter(shapes, rank)
        signature = stand_in_signature(identity)

    if not layout.slots:
        raise ExportError(f"{run_dir / ADAPTER_FILE}: no LoRA tensors named like "
                          "base_model.model.model.layers.N.(self_attn|mlp).NAME.lora_A.weight")
    sources: list[str | None] = []
    problems: list[str] = []
    slot_keys = {s.key for s in layout.slots}
    for s in layout.slots:
        if s.key in shapes:
            if shapes[s.key] != s.shape:
                problems.append(f"tensor {s.key!r} has shape {list(shapes[s.key])}, the "
                                f"{layout.name} layout needs {list(s.shape)} (rank {layout.rank})")
            sources.append(s.key)
            continue
        partner = s.key.replace(f"lora_{s.matrix}.", "lora_B." if s.matrix == "A" else "lora_A.")
        if partner in shapes or (layout.name != AFM_TEXT_V7) or _targeted(s.module, cfg):
            problems.append(f"missing LoRA tensor {s.key!r}")
        sources.append(None)  # an untrained module: zeros, which change nothing
    for key in sorted(set(shapes) - slot_keys):
        m = LORA_KEY_RE.match(key)
        why = "not a LoRA module of this layout" if m else "not a LoRA A/B weight"
        problems.append(f"extra tensor {key!r}: {why} ({layout.name})")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExportError(f"{run_dir / ADAPTER_FILE}: does not fit the {layout.name} layout:"
                          f"\n  {shown}{more}")
    return {"run": run, "cfg": cfg, "layout": layout, "signature": signature, "rank": rank,
            "alpha": alpha, "scale": scale, "permute": permute, "sources": sources,
            "handle": handle, "stand_in": layout.name != AFM_TEXT_V7}


# ---- writing -------------------------------------------------------------------------------
def prepare(values: np.ndarray, *, key: str, is_b: bool, factor: float,
            rotary: bool, head_dim: int | None) -> np.ndarray:
    """One tensor as the device wants it: scale folded into B, rotary rows permuted, fp16 bits.

    An fp16 tensor that needs no fold never leaves the bit domain (no float conversion at all);
    anything else is cast to fp16 once, after the fold, so the checks see the value that will
    be written. Checks are reductions that allocate nothing (NaN propagates through max/min).
    """
    fold = is_b and factor != 1.0
    if values.dtype == np.float16 and not fold:
        bits = np.ascontiguousarray(values).view(np.uint16)
        _check_fp16_bits(bits, key)
    else:
        work = np.promote_types(values.dtype, np.float32)  # folding in fp16 would round twice
        if fold:
            values = values.astype(work)
            values *= work.type(factor)
        hi, lo = values.max(), values.min()
        if math.isnan(hi) or math.isnan(lo):
            idx = int(np.flatnonzero(np.isnan(values))[0])
            raise ExportError(f"tensor {key!r}: NaN at flat index {idx}")
        if hi > FP16_MAX or lo < -FP16_MAX:
            idx = int(np.argmax(np.abs(values.astype(np.float64))))
            raise ExportError(
                f"tensor {key!r}: value {float(values.flat[idx])!r} at flat index {idx} is beyond "
                f"fp16 range (+-{FP16_MAX:g})"
                + (f" after folding the LoRA scale (x{factor:g})" if fold else ""))
        bits = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16)
    if rotary:
        bits = permute_rows(bits, head_dim)
    return bits


def _check_fp16_bits(bits: np.ndarray, key: str) -> None:
    """Refuse NaN/inf stored as fp16 (exponent all ones) without allocating in the common case.

    As int16, positive non-finite patterns are 0x7C00..0x7FFF, the largest of all; as uint16,
    negative non-finite patterns are 0xFC00..0xFFFF, also the largest of all.
    """
    if bits.size == 0 or (bits.view(np.int16).max() < 0x7C00 and bits.max() < 0xFC00):
        return
    mag = bits & 0x7FFF
    nan = np.flatnonzero(mag > 0x7C00)
    if nan.size:
        raise ExportError(f"tensor {key!r}: NaN at flat index {int(nan[0])}")
    idx = int(np.flatnonzero(mag == 0x7C00)[0])
    raise ExportError(f"tensor {key!r}: value {float(bits.view(np.float16).flat[idx])!r} at flat "
                      f"index {idx} is beyond fp16 range (+-{FP16_MAX:g})")


def _progress(total: int, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                    disable=not enabled)


def write_weights(path: Path, p: dict, progress: bool = True) -> int:
    layout: Layout = p["layout"]
    factor = p["scale"] / RUNTIME_SCALE
    with BlobWriter(path, len(layout.slots)) as w, _progress(len(layout.slots), progress) as bar:
        task = bar.add_task("writing adapter_weights.bin", total=len(layout.slots))
        for i, (slot, src) in enumerate(zip(layout.slots, p["sources"])):
            if src is None:
                bits = np.zeros(slot.shape, dtype=np.uint16)  # +0.0 in fp16
            else:
                try:
                    bits = prepare(_as_numpy(p["handle"], src), key=src, is_b=slot.matrix == "B",
                                   factor=factor, rotary=slot.rotary and p["permute"],
                                   head_dim=layout.head_dim)
                except ExportError as e:
                    raise ExportError(f"blob {i}: {e}") from None
            w.write_fp16(bits)
            bar.advance(task)
    return path.stat().st_size


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
        if md.contains_secret(text, secrets):
            raise ExportError(f"{flag}: contains a secret from the environment; refusing to "
                              "write it into a package")
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.fmadapter.", suffix=".tmp", dir=out_dir))
    try:
        (tmp / METADATA_FILE).write_bytes(md.serialize(meta))
        size = write_weights(tmp / WEIGHTS_FILE, p, progress=progress)
        blobs, problems = read_index(tmp / WEIGHTS_FILE)
        if problems or len(blobs) != len(layout.slots) or size != expected_size(layout):
            raise ExportError(f"internal check of the written file failed ({size} bytes, "
                              f"expected {expected_size(layout)}): {problems[:3]}")
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_out:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return ExportResult(target, layout.name, len(layout.slots), size, meta, warnings)


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
    return (f"wrote {r.path}  ({r.layout}, {r.blobs} blobs, {r.bytes:,} bytes, "
            f"{r.metadata['adapterIdentifier']})")


if __name__ == "__main__":  # pragma: no cover - the CLI lives in export.fmadapter
    sys.exit("use: python -m export.fmadapter --help")
