"""Adapters saved in fp32, bf16 or fp64 export to the same fp16 values (cast once)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export.blob import read_fp16_bits, read_index
from export.fmadapter import main
from export.synthetic import synthetic_standin_run

torch = pytest.importorskip("torch")


def exported_bits(run, tmp_path, name):
    assert main(["--adapter", str(run), "--name", name, "--out", str(tmp_path / "out"),
                 "--quiet", "--allow-stand-in"]) == 0
    weights = tmp_path / "out" / f"{name}.fmadapter" / "adapter_weights.bin"
    blobs, problems = read_index(weights)
    assert problems == []
    with open(weights, "rb") as fh:
        return [read_fp16_bits(fh, b) for b in blobs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_source_dtypes_round_once_to_the_same_fp16(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    run = synthetic_standin_run(tmp_path / "run", alpha=16, rank=8)  # fold x4 on every B
    state = load_file(str(run / "adapter_model.safetensors"))
    state = {k: v.to(dtype) for k, v in state.items()}
    save_file(state, str(run / "adapter_model.safetensors"))
    got = exported_bits(run, tmp_path, "dt")
    from export.layouts import stand_in_from_adapter
    layout = stand_in_from_adapter({k: tuple(v.shape) for k, v in state.items()}, 8)
    for bits, slot in zip(got, layout.slots):
        v = state[slot.key].double() * (4.0 if slot.matrix == "B" else 1.0)  # exact: power of 2
        want = v.to(torch.float16).numpy().view(np.uint16).ravel()
        np.testing.assert_array_equal(bits, want, err_msg=slot.key)
    cd = json.loads((tmp_path / "out" / "dt.fmadapter" / "metadata.json").read_text())
    assert cd["creatorDefined"]["trainingLoraScale"] == 2.0
