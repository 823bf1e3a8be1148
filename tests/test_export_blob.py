"""The stdlib+numpy blob writer against coremltools' own writer and reader."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from export.blob import BlobFormatError, BlobWriter, read_fp16_bits, read_index


@pytest.fixture(scope="module")
def coreml():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from coremltools import libmilstoragepython
    return libmilstoragepython


def arrays():
    rng = np.random.default_rng(5)
    # sizes that are and are not multiples of 64 bytes, so alignment gaps appear
    return [(rng.standard_normal(shape) * 3).astype(np.float16)
            for shape in [(32, 64), (7,), (3, 5), (256, 32), (1,), (33, 2)]]


def test_byte_identical_to_coremltools_writer(tmp_path, coreml):
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    with BlobWriter(ours, len(arrays())) as w:
        our_offsets = [w.write_fp16(a) for a in arrays()]
    writer = coreml._BlobStorageWriter(str(theirs))
    # the pitfall: coremltools wants the uint16 bit pattern, not float16 values
    their_offsets = [writer.write_fp16_data(a.view(np.uint16).ravel()) for a in arrays()]
    del writer  # flushes and closes
    assert our_offsets == their_offsets
    assert ours.read_bytes() == theirs.read_bytes()


def test_both_readers_return_the_written_bits(tmp_path, coreml):
    path = tmp_path / "w.bin"
    with BlobWriter(path, len(arrays())) as w:
        offsets = [w.write_fp16(a) for a in arrays()]
    blobs, problems = read_index(path)
    assert problems == [] and [b.metadata_offset for b in blobs] == offsets
    reader = coreml._BlobStorageReader(str(path))
    with open(path, "rb") as fh:
        for a, b in zip(arrays(), blobs):
            want = a.view(np.uint16).ravel()
            np.testing.assert_array_equal(read_fp16_bits(fh, b), want)
            np.testing.assert_array_equal(reader.read_fp16_data(b.metadata_offset), want)


def test_float16_values_and_bits_write_the_same(tmp_path):
    a = arrays()[0]
    with BlobWriter(tmp_path / "v.bin", 1) as w:
        w.write_fp16(a)
    with BlobWriter(tmp_path / "b.bin", 1) as w:
        w.write_fp16(a.view(np.uint16))
    assert (tmp_path / "v.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_writer_refuses_a_wrong_count(tmp_path):
    with pytest.raises(BlobFormatError, match="wrote 1 blobs, declared 2"):
        with BlobWriter(tmp_path / "x.bin", 2) as w:
            w.write_fp16(np.zeros(4, np.float16))
    with pytest.raises(BlobFormatError, match="more than the declared 1"):
        with BlobWriter(tmp_path / "y.bin", 1) as w:
            w.write_fp16(np.zeros(4, np.float16))
            w.write_fp16(np.zeros(4, np.float16))
