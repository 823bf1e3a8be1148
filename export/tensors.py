"""Each LoRA tensor as the device wants it, streamed into adapter_weights.bin.

The LoRA scale is folded into B (the runtime applies its own fixed scale), rotary rows are
permuted where training used the interleaved layout, and values are written as fp16 bit
patterns; NaN and out-of-range values are refused with the tensor's name and flat index.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from export.blob import BlobWriter
from export.layouts import RUNTIME_SCALE, Layout, permute_rows
from export.plan import ExportError, as_numpy

FP16_MAX = 65504.0


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
                    bits = prepare(as_numpy(p["handle"], src), key=src, is_b=slot.matrix == "B",
                                   factor=factor, rotary=slot.rotary and p["permute"],
                                   head_dim=layout.head_dim)
                except ExportError as e:
                    raise ExportError(f"blob {i}: {e}") from None
            w.write_fp16(bits)
            bar.advance(task)
    return path.stat().st_size
