"""Core ML "MIL blob storage" version 2: a streaming writer and a validating reader.

Standard library + numpy only. Layout (all little-endian):
  file header, 64 bytes:  u32 blob count, u32 version (2), 56 zero bytes
  per blob: pad to a multiple of 64 with zeros, then 64 bytes of metadata
            (u32 sentinel 0xDEADBEEF, u32 dtype code, u64 data size, u64 absolute data offset,
             u64 padding in bits, 32 zero bytes), then the data itself.
  nothing after the last blob.
Blobs carry no names or shapes; a blob is known by its position only.

fp16 data is handled as its uint16 bit pattern everywhere, the way coremltools' own
`_BlobStorageWriter.write_fp16_data` / `_BlobStorageReader.read_fp16_data` take and return it.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

SENTINEL = 0xDEADBEEF
VERSION = 2
ALIGN = 64
HEADER_SIZE = 64
METADATA_SIZE = 64
DTYPE_FP16 = 1
DTYPE_NAMES = {1: "fp16", 2: "fp32", 3: "uint8", 4: "int8", 5: "bf16", 6: "int16", 7: "uint16",
               8: "int4", 14: "int32", 15: "uint32"}

# Types whose values fill whole bytes; only sub-byte types (int4, uint1..uint6) may pad bits.
BYTE_SIZED = frozenset({1, 2, 3, 4, 5, 6, 7, 14, 15})

_HEADER = struct.Struct("<II56x")
_METADATA = struct.Struct("<IIQQQ32x")


class BlobFormatError(ValueError):
    """The file is not valid blob storage; the message names the blob and the field."""


def align_up(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def fp16_bits(values: np.ndarray) -> np.ndarray:
    """The uint16 bit pattern of `values` cast once to fp16 (round to nearest even)."""
    if values.dtype == np.uint16:
        return values
    return np.ascontiguousarray(values, dtype=np.float16).view(np.uint16)


class BlobWriter:
    """Writes blobs one at a time to an open file; the count is declared up front.

        with BlobWriter(path, count) as w:
            for t in tensors: w.write_fp16(t)
    Closing checks that exactly `count` blobs were written, so a short file is never left
    looking complete.
    """

    def __init__(self, path: str | os.PathLike, count: int):
        self.path = os.fspath(path)
        self.count = count
        self.written = 0
        self._fh = open(self.path, "wb", buffering=0)  # one writev per blob, no extra copy
        self._write_all([_HEADER.pack(count, VERSION)])
        self._pos = HEADER_SIZE

    def write_fp16(self, values: np.ndarray) -> int:
        """Write one fp16 blob (float array or uint16 bit pattern); returns its metadata offset."""
        if self.written >= self.count:
            raise BlobFormatError(f"{self.path}: more than the declared {self.count} blobs")
        data = np.ascontiguousarray(fp16_bits(values)).astype("<u2", copy=False)
        meta_offset = align_up(self._pos)
        size = data.nbytes
        self._write_all([b"\0" * (meta_offset - self._pos),
                         _METADATA.pack(SENTINEL, DTYPE_FP16, size, meta_offset + METADATA_SIZE, 0),
                         memoryview(data).cast("B")])
        self._pos = meta_offset + METADATA_SIZE + size
        self.written += 1
        return meta_offset

    def _write_all(self, parts: list) -> None:
        parts = [memoryview(p).cast("B") for p in parts if len(p)]
        if not hasattr(os, "writev"):  # Windows
            for part in parts:
                while part:  # unbuffered writes may be short too
                    part = part[self._fh.write(part):]
            return
        while parts:
            done = os.writev(self._fh.fileno(), parts)
            while parts and done >= len(parts[0]):  # a short write resumes where it stopped
                done -= len(parts[0])
                parts.pop(0)
            if parts and done:
                parts[0] = parts[0][done:]

    def close(self) -> None:
        if self._fh.closed:
            return
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.written != self.count:
            raise BlobFormatError(f"{self.path}: wrote {self.written} blobs, declared {self.count}")

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


@dataclass(frozen=True)
class BlobInfo:
    index: int
    metadata_offset: int
    data_offset: int
    size: int
    dtype: int
    padding_bits: int

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"code {self.dtype}")


def read_index(path: str | os.PathLike) -> tuple[list[BlobInfo], list[str]]:
    """Parse and check the header and every blob's metadata without reading the data.

    Returns (blobs, problems). Every structural rule is checked: header version and reserved
    bytes, 64-byte alignment, zero gap bytes, sentinel, data offset = metadata offset + 64,
    zero padding bits for byte-sized data, data inside the file, nothing after the last blob.
    Parsing stops at the first blob whose metadata cannot be trusted.
    """
    path = os.fspath(path)
    problems: list[str] = []
    blobs: list[BlobInfo] = []
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            return [], [f"header: file is {file_size} bytes, shorter than the 64-byte header"]
        count, version = struct.unpack_from("<II", head)
        if version != VERSION:
            problems.append(f"header: version {version}, expected {VERSION}")
        if any(head[8:]):
            problems.append("header: reserved bytes 8..63 are not zero")
        pos = HEADER_SIZE
        for i in range(count):
            meta_offset = align_up(pos)
            where = f"blob {i} (metadata at {meta_offset})"
            if meta_offset + METADATA_SIZE > file_size:
                problems.append(f"{where}: file ends at {file_size}; header declares {count} blobs")
                return blobs, problems
            fh.seek(pos)
            gap = fh.read(meta_offset - pos)
            if any(gap):
                problems.append(f"{where}: alignment gap bytes {pos}..{meta_offset} are not zero")
            raw = fh.read(METADATA_SIZE)
            sentinel, dtype, size, data_offset, pad_bits = _METADATA.unpack(raw)
            if sentinel != SENTINEL:
                problems.append(f"{where}: sentinel 0x{sentinel:08X}, expected 0xDEADBEEF")
                return blobs, problems
            if any(raw[32:]):
                problems.append(f"{where}: reserved metadata bytes are not zero")
            if data_offset != meta_offset + METADATA_SIZE:
                problems.append(f"{where}: data offset {data_offset}, expected "
                                f"{meta_offset + METADATA_SIZE}")
                return blobs, problems
            if pad_bits and dtype in BYTE_SIZED:
                problems.append(f"{where}: padding of {pad_bits} bits on a byte-sized type")
            if data_offset + size > file_size:
                problems.append(f"{where}: data of {size} bytes runs past the end of the file "
                                f"({file_size} bytes)")
                return blobs, problems
            blobs.append(BlobInfo(i, meta_offset, data_offset, size, dtype, pad_bits))
            pos = data_offset + size
    if len(blobs) == count and pos != file_size:
        problems.append(f"file: {file_size - pos} bytes after the last blob (ends at {pos}, "
                        f"file is {file_size} bytes)")
    return blobs, problems


def read_fp16_bits(fh, blob: BlobInfo) -> np.ndarray:
    """One fp16 blob's uint16 bit pattern, from an open binary file."""
    if blob.dtype != DTYPE_FP16:
        raise BlobFormatError(f"blob {blob.index}: dtype {blob.dtype_name}, expected fp16")
    if blob.size % 2:
        raise BlobFormatError(f"blob {blob.index}: {blob.size} bytes is not whole fp16 values")
    fh.seek(blob.data_offset)
    data = np.fromfile(fh, dtype="<u2", count=blob.size // 2)
    if data.size * 2 != blob.size:
        raise BlobFormatError(f"blob {blob.index}: file ended inside the data")
    return data.astype(np.uint16, copy=False)
