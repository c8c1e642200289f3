"""The one safetensors reader: header parsing, validation and single-tensor reads.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``)
and then raw tensor buffers, offsets relative to the end of the header.

We parse the header ourselves instead of calling ``safetensors.safe_open`` because
remote files are read by byte range: only the header and the exact bytes of the
tensors a stage uses ever cross the network. Every offset is checked against the
file size *before* a byte of data is read, so a lying header costs one small read.
Nothing here executes code from a file.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Protocol

import ml_dtypes
import numpy as np
import torch

from hubtree.errors import (
    FileUnreadableError,
    HeaderTooLargeError,
    InvalidHeaderError,
    OverlappingTensorsError,
    TensorOutOfRangeError,
    TruncatedFileError,
)

# The safetensors library refuses headers over 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000
# A header is 3 levels deep ({name: {"shape": [...]}}); deeper JSON is refused before parsing.
MAX_DEPTH = 16
MAX_DIMS = 64  # numpy's limit on an array's dimensions
INT64_MAX = 2**63 - 1  # shapes and offsets land in int64 columns
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_BRACKETS = re.compile(rb"[\[\]{}]")

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
# The floating dtypes, as torch stores them: what statistics and attacks read, and what recovered weights are written back as.
FLOAT_STORAGE: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
FLOAT_DTYPES = tuple(FLOAT_STORAGE)


class ByteSource(Protocol):
    """Random access to one file's bytes: a local file or an HTTP resource read by range."""

    bytes_read: int  # what this source has fetched so far: crawls report it per repo and run

    def size(self) -> int:
        """Total length of the file in bytes."""

    def read(self, start: int, end: int) -> bytes:
        """Exactly the bytes ``[start, end)``; raises TruncatedFileError if fewer arrive."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry, with offsets made absolute within its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int  # absolute byte offset of the first byte
    end: int  # absolute byte offset one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: its tensors sorted by offset and the free-form metadata."""

    file: str
    file_size: int
    header_size: int  # 8 + N
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]


class LocalFile:
    """A ByteSource over a local path, read with ``os.pread`` (no whole-file reads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._size = self.path.stat().st_size
        except OSError as err:
            raise FileUnreadableError(f"cannot stat {self.path}: {err.strerror}") from err
        self.bytes_read = 0

    def size(self) -> int:
        return self._size

    def read(self, start: int, end: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                data = os.pread(fd, end - start, start)
            finally:
                os.close(fd)
        except OSError as err:
            raise FileUnreadableError(f"cannot read {self.path}: {err.strerror}") from err
        self.bytes_read += len(data)
        if len(data) != end - start:
            raise TruncatedFileError(
                f"{self.path}: wanted bytes {start}-{end - 1}, the file has {self._size}"
            )
        return data


def parse_header(prefix: bytes, file_size: int, file: str = "") -> SafetensorsHeader:
    """Validate a header given the file's first ``8 + N`` bytes and its total size.

    Raises one of the SafetensorsError subclasses naming the first problem found:
    a length prefix past the bound or the file, bad JSON or JSON nested deeper than
    the format ever needs, a name or metadata that is not valid UTF-8, an unknown
    dtype, a shape that does not fit int64 or whose byte count disagrees with its
    offsets, offsets outside the data region, or two tensors sharing bytes. Whatever
    a header holds, this raises nothing else: a hostile file costs only itself.
    """
    n = header_length(prefix[:8], file_size, file)
    if len(prefix) < 8 + n:
        raise TruncatedFileError(f"{file}: header needs {8 + n} bytes, got {len(prefix)}")
    text = prefix[8 : 8 + n]
    _check_depth(text, file)
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: bad JSON, or an int past Python's digit limit
        raise InvalidHeaderError(f"{file}: header is not valid JSON ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(raw, dict):
        raise InvalidHeaderError(f"{file}: header is a JSON {type(raw).__name__}, not an object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidHeaderError(f"{file}: __metadata__ is not an object of strings")
    for key in (*metadata, *metadata.values()):
        _check_text(key, "__metadata__", file)
    data_start = 8 + n
    entries = sorted(
        (_entry(name, spec, data_start, file) for name, spec in raw.items()),
        key=lambda e: (e.begin, e.end),
    )
    for entry in entries:
        if entry.end > file_size:
            raise TensorOutOfRangeError(
                f"{file}: tensor {entry.name!r} ends at byte {entry.end}, past the end of the "
                f"file ({file_size} bytes); the file is truncated or its header lies"
            )
    for left, right in zip(entries, entries[1:]):
        if right.begin < left.end:
            raise OverlappingTensorsError(
                f"{file}: tensors {left.name!r} and {right.name!r} overlap"
            )
    return SafetensorsHeader(file, file_size, data_start, tuple(entries), dict(metadata))


def header_length(first8: bytes, file_size: int, file: str = "") -> int:
    """The header's JSON length N from the 8-byte prefix, bounded before anything is read."""
    if len(first8) < 8 or file_size < 8:
        raise TruncatedFileError(f"{file}: {file_size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"{file}: header claims {n} bytes, over the {MAX_HEADER_BYTES} byte bound")
    if 8 + n > file_size:
        raise TruncatedFileError(f"{file}: header claims {n} bytes but the file has only {file_size}")
    return n


def _entry(name: str, spec: object, data_start: int, file: str) -> TensorEntry:
    _check_text(name, "tensor name", file)
    if not isinstance(spec, dict):
        raise InvalidHeaderError(f"{file}: entry {name!r} is not an object")
    dtype = spec.get("dtype")
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidHeaderError(f"{file}: tensor {name!r} has unknown dtype {_short(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_int64(d) for d in shape)
        or math.prod(d for d in shape if d) > INT64_MAX
    ):
        raise InvalidHeaderError(f"{file}: tensor {name!r} has invalid shape {_short(shape)} (at most {MAX_DIMS} non-negative int64 dims)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int64(o) for o in offsets) or offsets[0] > offsets[1]:
        raise TensorOutOfRangeError(f"{file}: tensor {name!r} has invalid data_offsets {_short(offsets)}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        raise TensorOutOfRangeError(
            f"{file}: tensor {name!r} ({dtype} {shape}) needs {expected} bytes, "
            f"its offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), file, data_start + offsets[0], data_start + offsets[1])


def _is_int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def _check_text(text: str, what: str, file: str) -> None:
    """Names end up in Parquet: a lone surrogate (``"\\ud800"`` in JSON) is valid JSON but not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidHeaderError(f"{file}: {what} {text!r} is not valid UTF-8 ({err.reason})") from err


def _check_depth(text: bytes, file: str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH before parsing it: the format needs 3 levels,
    and a deep one would exhaust the parser's recursion (brackets inside strings do not count)."""
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", text)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            raise InvalidHeaderError(f"{file}: header JSON is nested deeper than {MAX_DEPTH} levels")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_header(source: ByteSource, file: str = "") -> SafetensorsHeader:
    """Read and validate a header: one read of the first ``first_read_bytes``, a second only for a longer header.

    A source says how much its first read should ask (``first_read_bytes``): a remote
    file asks ~100 KB at once, as huggingface_hub's ``get_safetensors_metadata`` does,
    because a request costs more than bytes there and most headers fit; a local file
    reads the 8-byte prefix and then exactly N bytes.
    """
    size = source.size()
    first = source.read(0, min(size, getattr(source, "first_read_bytes", 8))) if size >= 8 else b""
    n = header_length(first[:8], size, file)
    rest = source.read(len(first), 8 + n) if 8 + n > len(first) else b""
    return parse_header(first + rest, size, file)


def entries_for(source: ByteSource, names: list[str], file: str = "") -> list[TensorEntry]:
    """The header entries of ``names``, re-read from the file itself before any data is.

    Later stages know tensors by name from the lake; the file's own header, checked
    again, decides the offsets, so a file that changed since the crawl is refused.
    """
    header = {e.name: e for e in read_header(source, file).tensors}
    missing = [n for n in names if n not in header]
    if missing:
        raise TensorOutOfRangeError(
            f"{file}: {len(missing)} tensors catalogued at this revision are not in the file now "
            f"(first: {missing[0]!r}); recrawl the repo"
        )
    return [header[n] for n in names]


def coalesce(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with adjacent or overlapping ones merged: ``[(0, 4), (4, 9), (20, 30)] -> [(0, 9), (20, 30)]``."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def read_ranges(source: ByteSource, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
    """The bytes of each ``(start, end)``, in order; adjacent or overlapping ranges share one read.

    Safetensors packs tensors back to back, so the tensors of a file read in full are one
    request, not one each: on a remote hub a request costs more than its bytes.
    """
    blocks = [(start, end, memoryview(source.read(start, end))) for start, end in coalesce(ranges)]
    out = []
    for start, end in ranges:
        if end <= start:
            out.append(memoryview(b""))
            continue
        block_start, _, data = next(b for b in blocks if b[0] <= start and end <= b[1])
        out.append(data[start - block_start : end - block_start])
    return out


def read_tensor(source: ByteSource, entry: TensorEntry) -> np.ndarray:
    """Exactly one tensor's bytes, decoded to a numpy array of its own dtype and shape.

    ``entry`` must come from ``read_header`` on the same source, so its offsets have
    been validated against the file. Stages that read many tensors of a file at once use
    ``row_sample.read_blocks``, which coalesces their ranges through ``read_ranges``.
    """
    return decode(source.read(entry.begin, entry.end), entry.dtype, entry.shape)


def decode(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian bytes to an array; BF16 and F8 via ml_dtypes."""
    np_dtype = DTYPES[dtype].newbyteorder("<") if DTYPES[dtype].itemsize > 1 else DTYPES[dtype]
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def as_float_tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A float torch tensor for the math (always a writable copy: torch cannot wrap read-only buffers or ml_dtypes arrays)."""
    wide = np.float64 if dtype == torch.float64 else np.float32
    return torch.from_numpy(array.astype(wide)).to(dtype)
