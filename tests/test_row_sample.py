"""Sampled rows: fixed by (seed, name, shape), one byte range, and what a served big model holds."""
import numpy as np
import pytest

from hubtree.ops.weights.row_sample import DEFAULT_BUDGET, RowSample, plan_samples, read_blocks, sample_rows, tensor_range
from hubtree.ops.weights.safetensors_reader import TensorEntry, parse_header
from hubtree.ops.zoo.big_family import LLAMA2_7B, BigFamily, layout


def test_sample_position_depends_only_on_seed_name_and_shape():
    a = sample_rows("model.layers.3.self_attn.o_proj.weight", (4096, 4096), 8, seed=0)
    assert a == sample_rows("model.layers.3.self_attn.o_proj.weight", (4096, 4096), 8, seed=0)
    assert a.rows == 8 and 0 <= a.begin and a.end <= 4096
    others = {sample_rows(f"model.layers.{i}.self_attn.o_proj.weight", (4096, 4096), 8).begin for i in range(32)}
    assert len(others) > 20  # tensors are sampled at different rows
    assert sample_rows("model.layers.3.self_attn.o_proj.weight", (4096, 4096), 8, seed=1) != a
    assert sample_rows("t", (5, 7), 8) == RowSample(0, 5)  # a small tensor is read whole
    assert sample_rows("t", (7,), 8) == RowSample(0, 1)  # a 1-D tensor is one row
    with pytest.raises(ValueError):
        sample_rows("t", (5, 7), 0)


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.bytes_read, self.reads = data, 0, []

    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, end: int) -> bytes:
        self.reads.append((start, end))
        self.bytes_read += end - start
        return self.data[start:end]


def test_sampled_rows_are_one_range_of_exactly_the_budgeted_bytes():
    w = np.arange(20 * 6, dtype=np.float32).reshape(20, 6)
    entry = TensorEntry("w", "F32", (20, 6), "f", 16, 16 + w.nbytes)
    source = _Bytes(b"\0" * 16 + w.tobytes())
    s = sample_rows("w", (20, 6), 4)
    got = read_blocks(source, [entry], {"w": s})["w"]
    assert np.array_equal(got, w[s.begin : s.end])
    assert source.reads == [tensor_range(entry, s)] and source.bytes_read == 4 * 6 * 4


def test_whole_tensors_packed_back_to_back_are_one_read_and_samples_stay_apart():
    a, b, c = (np.full((8, 4), k, dtype=np.float32) for k in (1, 2, 3))
    entries = [TensorEntry(n, "F32", (8, 4), "f", 16 + i * 128, 16 + (i + 1) * 128) for i, n in enumerate("abc")]
    source = _Bytes(b"\0" * 16 + a.tobytes() + b.tobytes() + c.tobytes())
    got = read_blocks(source, entries, {"c": RowSample(2, 4)})
    assert source.reads == [(16, 272), (16 + 256 + 2 * 16, 16 + 256 + 4 * 16)]  # a and b in one read, c's rows alone
    assert np.array_equal(got["a"], a) and np.array_equal(got["b"], b) and np.array_equal(got["c"], c[2:4])


def test_default_budget_keeps_a_llama2_7b_under_a_thousandth_of_its_bytes_and_a_small_model_whole():
    square = [(name, shape, 2 * shape[0] * shape[1]) for name, shape in LLAMA2_7B.tensors() if "self_attn" in name]
    plan = plan_samples(square, DEFAULT_BUDGET)
    assert len(plan) == 128 and {s.rows for s in plan.values()} == {8}
    sampled = sum(s.rows * 2 * 4096 for s in plan.values())
    total = sum(s.size for s in layout(LLAMA2_7B))
    headers = sum(len(s.header) for s in layout(LLAMA2_7B))
    assert sampled <= DEFAULT_BUDGET and (sampled + 2 * headers) / total < 0.001
    small = plan_samples([("a", (32, 32), 4096), ("b", (64, 32), 8192)], DEFAULT_BUDGET)
    assert small == {"a": RowSample(0, 32), "b": RowSample(0, 64)}  # under the budget: read whole
    assert plan_samples([("a", (32, 32), 4096)], 1024)["a"].rows == 8  # 1 KiB of 128-byte rows


def test_big_family_header_and_ranges_are_consistent():
    family = BigFamily(4, seed=3)
    shard = layout(family.arch)[1]
    child = family.models[2].repo_id
    header = parse_header(family.read(child, shard.path, 0, len(shard.header)), shard.size, shard.path)
    assert len(header.tensors) == len(shard.tensors) and header.tensors[-1].end == shard.size
    entry = next(e for e in header.tensors if e.name.endswith("self_attn.v_proj.weight"))
    s = sample_rows(entry.name, entry.shape, 8)
    start, end = tensor_range(entry, s)
    block = family.read(child, shard.path, start, end)
    assert family.read(child, shard.path, start + 5, start + 4101) == block[5:4101]  # any range agrees
    placed = next(p for p in shard.tensors if p.name == entry.name)
    assert block == family.rows(family.index[child], placed, s.begin, s.end).tobytes()
    assert family.truth()[child] is not None and family.truth()[family.models[0].repo_id] is None
    assert max(m.depth for m in family.models) >= 2
