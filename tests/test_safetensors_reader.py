import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hubtree.errors import (
    HeaderTooLargeError,
    InvalidHeaderError,
    OverlappingTensorsError,
    TensorOutOfRangeError,
    TruncatedFileError,
)
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor


def raw_file(path, header: dict, data: bytes = b"", length: int | None = None):
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return LocalFile(path)


def test_header_and_tensors_round_trip_for_every_float_dtype(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    source = LocalFile(tmp_path / "m.safetensors")
    header = read_header(source, "m.safetensors")
    assert {e.name: e.dtype for e in header.tensors} == {"f32": "F32", "f16": "F16", "bf16": "BF16", "f8": "F8_E4M3"}
    for entry in header.tensors:
        got = as_float_tensor(read_tensor(source, entry))
        assert torch.equal(got, tensors[entry.name].float())
    bf16 = next(e for e in header.tensors if e.name == "bf16")
    assert read_tensor(source, bf16).dtype == ml_dtypes.bfloat16


def test_header_read_fetches_only_the_header(tmp_path):
    save_file({"w": torch.zeros(256, 256)}, str(tmp_path / "m.safetensors"))
    source = LocalFile(tmp_path / "m.safetensors")
    header = read_header(source)
    assert source.bytes_read == header.header_size < 200


def test_truncated_file_is_refused(tmp_path):
    save_file({"w": torch.zeros(16, 16)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(TensorOutOfRangeError, match="past the end"):
        read_header(LocalFile(tmp_path / "m.safetensors"))


def test_offsets_past_the_end_are_refused(tmp_path):
    source = raw_file(tmp_path / "m", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [100, 116]}}, b"\0" * 16)
    with pytest.raises(TensorOutOfRangeError):
        read_header(source)


def test_overlapping_tensors_are_refused(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    with pytest.raises(OverlappingTensorsError):
        read_header(raw_file(tmp_path / "m", header, b"\0" * 24))


def test_huge_header_length_is_refused_before_reading(tmp_path):
    source = raw_file(tmp_path / "m", {}, b"", length=2**60)
    with pytest.raises(HeaderTooLargeError):
        read_header(source)
    assert source.bytes_read == 8


def test_invalid_header_json_is_refused(tmp_path):
    (tmp_path / "m").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(InvalidHeaderError, match="not valid JSON"):
        read_header(LocalFile(tmp_path / "m"))


def test_shape_disagreeing_with_offsets_is_refused(tmp_path):
    source = raw_file(tmp_path / "m", {"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(TensorOutOfRangeError, match="needs 20 bytes"):
        read_header(source)


def test_file_shorter_than_its_length_prefix_is_truncated(tmp_path):
    (tmp_path / "m").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(TruncatedFileError):
        read_header(LocalFile(tmp_path / "m"))


def test_decoded_values_are_little_endian(tmp_path):
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    source = raw_file(tmp_path / "m", {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, values.tobytes())
    (entry,) = read_header(source).tensors
    np.testing.assert_array_equal(read_tensor(source, entry), values)
