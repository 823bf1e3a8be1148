"""`inspect` finds what is wrong with a package, naming the file, blob or key.

Each case corrupts a copy of a small valid stand-in package in one way.
"""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from export.blob import BlobWriter, read_index
from export.fmadapter import main
from export.plan import ExportError
from export.reader import inspect_package, to_peft


@pytest.fixture()
def copy(package, tmp_path):
    dst = tmp_path / "tiny.fmadapter"
    shutil.copytree(package, dst)
    return dst


def problems_of(pkg) -> str:
    rep = inspect_package(pkg)
    assert not rep.ok
    return "\n".join(rep.problems)


def test_valid_package_passes_and_prints_a_table(package, capsys):
    rep = inspect_package(package)
    assert rep.ok, rep.problems
    assert rep.layout.name == "stand-in" and len(rep.blobs) == 2 * 7 * 2
    assert any("STAND-IN" in n for n in rep.notes)
    assert main(["inspect", str(package)]) == 0
    out = capsys.readouterr().out
    assert "blobs by module" in out and "gate_proj" in out and "valid" in out


def test_bad_sentinel_is_named(copy, capsys):
    blobs, _ = read_index(copy / "adapter_weights.bin")
    with open(copy / "adapter_weights.bin", "r+b") as fh:
        fh.seek(blobs[5].metadata_offset)
        fh.write(struct.pack("<I", 0x12345678))
    assert "blob 5" in problems_of(copy) and "sentinel 0x12345678" in problems_of(copy)
    assert main(["inspect", str(copy)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_wrong_dtype_and_offset_are_named(copy):
    blobs, _ = read_index(copy / "adapter_weights.bin")
    with open(copy / "adapter_weights.bin", "r+b") as fh:
        fh.seek(blobs[2].metadata_offset + 4)
        fh.write(struct.pack("<I", 2))
    assert "dtype fp32, expected fp16" in problems_of(copy)
    with open(copy / "adapter_weights.bin", "r+b") as fh:
        fh.seek(blobs[3].metadata_offset + 16)
        fh.write(struct.pack("<Q", blobs[3].data_offset + 64))
    assert "blob 3" in problems_of(copy) and "data offset" in problems_of(copy)


def test_header_trailing_bytes_and_truncation(copy):
    weights = copy / "adapter_weights.bin"
    original = weights.read_bytes()
    weights.write_bytes(original + b"\0" * 64)
    assert "64 bytes after the last blob" in problems_of(copy)
    weights.write_bytes(original[:-10])
    assert "runs past the end of the file" in problems_of(copy)
    weights.write_bytes(original[:4] + struct.pack("<I", 3) + original[8:])
    assert "version 3, expected 2" in problems_of(copy)


def test_wrong_blob_count_and_size_for_the_layout(copy):
    with BlobWriter(copy / "adapter_weights.bin", 3) as w:
        for _ in range(3):
            w.write_fp16(np.zeros((8, 64), np.float16))
    text = problems_of(copy)
    assert "3 blobs, the stand-in layout has 28" in text


def test_metadata_rules(copy):
    meta = json.loads((copy / "metadata.json").read_text())
    meta["adapterIdentifier"] = "fmadapter-other-1234567"
    meta["loraRank"] = 16
    del meta["license"]
    (copy / "metadata.json").write_text(json.dumps(meta))
    text = problems_of(copy)
    assert "the rule gives 'fmadapter-tiny-" in text
    assert "missing key 'license'" in text
    # the stand-in layout takes its rank from loraRank, so every blob's size now disagrees
    assert "blob 0 (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight): 1024 bytes, " \
        "shape [16, 64] needs 2048" in text
    rep = inspect_package(copy)
    assert any("not serialised as the toolkit does" in n for n in rep.notes)


def test_inventory_rules(copy, tmp_path):
    (copy / "draft.mil").write_text("x")
    (copy / "notes.txt").write_text("x")
    text = problems_of(copy)
    assert "draft.mil without its partner" in text and "unexpected files ['notes.txt']" in text
    bad = tmp_path / "bad-name.fmadapter"
    shutil.copytree(copy, bad)
    assert "does not match ^\\w+$" in problems_of(bad)


def test_to_peft_refuses_an_invalid_package(copy, tmp_path):
    (copy / "metadata.json").unlink()
    with pytest.raises(ExportError, match="metadata.json is missing"):
        to_peft(copy, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
