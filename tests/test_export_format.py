"""A synthetic full-size afm-text-v7 adapter, exported and checked byte by byte.

The expected bytes are computed here independently of export/ (struct parsing, a hand-written
row permutation), and coremltools' own blob reader is the second opinion on the values.
"""
from __future__ import annotations

import json
import shutil
import struct
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

from export.fmadapter import main
from export.reader import inspect_package, to_peft
from export.synthetic import synthetic_run

EXPECTED_SIZE = 133_312_320
SIGNATURE = "9799725ff8e851184037110b422d891ad3b92ec1"
ALPHA = 32  # scale alpha/r = 1.0, so the export must fold B x 2 (1.0 / the device's 0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("afm")
    run = synthetic_run(root / "run", seed=7, alpha=ALPHA, rope_layout="interleaved")
    assert main(["--adapter", str(run), "--name", "planner_v1", "--out", str(root / "out"),
                 "--quiet"]) == 0
    yield run, root / "out" / "planner_v1.fmadapter"
    shutil.rmtree(root, ignore_errors=True)  # pytest keeps recent temp folders; 266 MB here


@pytest.fixture()
def tmp_path(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def expected_order() -> list[tuple[str, str]]:
    """(PEFT key, matrix) in blob order, written out from the format facts, not from layouts.py."""
    seg0 = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    seg1 = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
            "mlp.down_proj"]
    out = []
    for layer in range(56):
        for mod in (seg0 if layer < 35 else seg1):
            for ab in "AB":
                out.append((f"base_model.model.model.layers.{layer}.{mod}.lora_{ab}.weight", ab))
    return out


def device_bits(key: str, src: np.ndarray) -> np.ndarray:
    """What the device should receive for one source tensor: fold, permutation, fp16 bits."""
    v = src.astype(np.float32)
    if key.endswith("lora_B.weight"):
        v = v * np.float32((ALPHA / 32) / 0.5)
        if ".q_proj." in key or ".k_proj." in key:
            rows = []
            for head in range(v.shape[0] // 128):
                block = v[head * 128:(head + 1) * 128]
                rows += [block[i] for i in range(0, 128, 2)] + [block[i] for i in range(1, 128, 2)]
            v = np.stack(rows)
    return v.astype(np.float16).view(np.uint16)


def parse_blobs(data: bytes) -> list[tuple[int, int, int, int, int]]:
    count, version = struct.unpack_from("<II", data, 0)
    assert version == 2 and data[8:64] == bytes(56)
    out, pos = [], 64
    for _ in range(count):
        pos = -(-pos // 64) * 64
        sentinel, dtype, size, offset, pad = struct.unpack_from("<IIQQQ", data, pos)
        assert data[pos + 32:pos + 64] == bytes(32)
        out.append((pos, sentinel, dtype, size, offset))
        pos = offset + size
    assert pos == len(data)
    return out


def test_file_size_offsets_sentinels_and_dtypes(exported):
    _, pkg = exported
    assert sorted(p.name for p in pkg.iterdir()) == ["adapter_weights.bin", "metadata.json"]
    data = (pkg / "adapter_weights.bin").read_bytes()
    assert len(data) == EXPECTED_SIZE
    blobs = parse_blobs(data)
    assert len(blobs) == 700
    assert blobs[0][0] == 64 and blobs[0][4] == 128
    assert blobs[1][0] == 131_200
    assert data[64:68] == bytes.fromhex("efbeadde")
    for meta_off, sentinel, dtype, size, offset in blobs:
        assert (sentinel, dtype, offset) == (0xDEADBEEF, 1, meta_off + 64)
    src = load_file(str(exported[0] / "adapter_model.safetensors"))
    sizes = [src[k].size * 2 for k, _ in expected_order()]
    assert [b[3] for b in blobs] == sizes


def test_metadata_exactly_as_the_toolkit_writes_it(exported):
    _, pkg = exported
    raw = (pkg / "metadata.json").read_bytes()
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, indent=4, ensure_ascii=False).encode()
    assert not raw.endswith(b"\n")
    assert meta["adapterIdentifier"] == "fmadapter-planner_v1-9799725"
    assert meta["baseModelSignature"] == SIGNATURE
    assert (meta["loraRank"], meta["speculativeDecodingDraftTokenCount"]) == (32, 5)
    assert (meta["author"], meta["description"], meta["license"]) == ("3P developer", "", "")
    cd = meta["creatorDefined"]
    assert cd["standIn"] is False and cd["layout"] == "afm-text-v7"
    assert cd["runId"] == "sft-synthetic-7" and cd["trainSha256"] == "cd" * 32
    assert cd["ruler"] == {"n": 30, "score": 0.5}
    assert str(exported[0]) not in raw.decode()  # train_file and name_or_path are local paths


def test_coremltools_reader_returns_the_written_values(exported):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from coremltools.libmilstoragepython import _BlobStorageReader
    run, pkg = exported
    src = load_file(str(run / "adapter_model.safetensors"))
    data = (pkg / "adapter_weights.bin").read_bytes()
    blobs = parse_blobs(data)
    order = expected_order()
    reader = _BlobStorageReader(str(pkg / "adapter_weights.bin"))
    # q A/B, k B (rotary), v B (not rotary), down B, last segment-0 blob, segment 1 q A/B, last
    for i in (0, 1, 3, 5, 13, 489, 490, 491, 493, 699):
        key, _ = order[i]
        got = reader.read_fp16_data(blobs[i][0])  # takes the metadata offset, returns uint16
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, device_bits(key, src[key]).ravel(), err_msg=key)
    # the fold really happened and the permutation really moved rows (the test can fail)
    qb = src[order[1][0]].astype(np.float32)
    moved = reader.read_fp16_data(blobs[1][0]).view(np.float16).reshape(qb.shape)
    assert not np.array_equal(moved.astype(np.float32), qb * 2)
    np.testing.assert_array_equal(moved[1].astype(np.float32), qb[2] * 2)
    vb = src[order[5][0]].astype(np.float32)
    got_v = reader.read_fp16_data(blobs[5][0]).view(np.float16).reshape(vb.shape)
    np.testing.assert_array_equal(got_v.astype(np.float32), vb * 2)


def test_inspect_validates_and_to_peft_undoes_fold_and_permutation(exported, tmp_path, capsys):
    run, pkg = exported
    rep = inspect_package(pkg)
    assert rep.ok, rep.problems
    assert rep.layout.name == "afm-text-v7" and len(rep.blobs) == 700
    assert main(["inspect", str(pkg)]) == 0
    shown = capsys.readouterr().out
    assert "valid" in shown and "66,633,728" in shown and "afm-text-v7" in shown
    out = to_peft(pkg, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (32, ALPHA)
    back = load_file(str(out / "adapter_model.safetensors"))
    src = load_file(str(run / "adapter_model.safetensors"))
    assert set(back) == set(src)
    for key in (k for k, _ in expected_order()[::37]):
        np.testing.assert_array_equal(back[key], src[key].astype(np.float32), err_msg=key)
    runj = json.loads((out / "run.json").read_text())
    assert runj["base_model"]["architecture"] == "AFMTextV7ForCausalLM"
    assert runj["base_model"]["rope_layout"] == "interleaved"
    assert runj["base_model"]["base_signature"] == SIGNATURE


def test_untrained_modules_are_written_as_zeros(tmp_path):
    # Only q and v trained: every other LoRA is absent and must come out as zeros.
    drop = {k: None for k, _ in expected_order()
            if not (".q_proj." in k or ".v_proj." in k)}
    run = synthetic_run(tmp_path / "run", seed=1, tensors=drop,
                        target_modules=["q_proj", "v_proj"])
    assert main(["--adapter", str(run), "--name", "qv_only", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    data = (tmp_path / "out" / "qv_only.fmadapter" / "adapter_weights.bin").read_bytes()
    assert len(data) == EXPECTED_SIZE
    blobs = parse_blobs(data)
    for (meta_off, _, _, size, off), (key, _) in zip(blobs, expected_order()):
        payload = np.frombuffer(data, dtype="<u2", count=size // 2, offset=off)
        trained = ".q_proj." in key or ".v_proj." in key
        assert payload.any() == trained, key
