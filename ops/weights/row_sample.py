"""Sampled weights: one contiguous block of rows per tensor, at the same rows in every model.

Safetensors stores a tensor row-major, so rows ``[begin, end)`` of its first axis are one
byte range, ``[entry.begin + begin * row_bytes, entry.begin + end * row_bytes)``: one
request, however the file is served. The block's place depends only on (seed, tensor name,
shape) and its size on the budget, so every model of an architecture block is read at the
same rows. The budget is bytes per model (``plan_samples``): each tensor gets an equal share,
as many whole rows as fit in it (at least one), so a small model is read whole and a
Llama-2-7B's 128 attention matrices get 8 rows each. Fine-tuning keeps neuron order, which is why a fixed sample estimates what the
tree stage needs: for two models A and B with the same rows R sampled,

    ||A_R - B_R||_F^2 * rows / |R|  ~=  ||A - B||_F^2,

and moments (kurtosis) and norms of A_R are averages over its entries, unbiased for those
of A when rows are exchangeable. Distances and witnesses are then compared between models
at equal rows, so the sampling error is mostly shared and cancels in the comparisons.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hubtree.ops.weights.safetensors_reader import ByteSource, TensorEntry, decode, read_ranges

DEFAULT_BUDGET = 8 << 20  # bytes per model: a Llama-2-7B's 128 attention matrices at 8 rows each, 0.062% of its bytes


@dataclass(frozen=True)
class RowSample:
    """Rows ``[begin, end)`` of a tensor's first axis; the whole tensor when it has no more."""

    begin: int
    end: int

    @property
    def rows(self) -> int:
        return self.end - self.begin


def sample_rows(name: str, shape: tuple[int, ...] | list[int], rows: int, seed: int = 0) -> RowSample:
    """Where ``rows`` consecutive rows of tensor ``name`` are read: fixed by (seed, name, shape).

    A tensor with at most ``rows`` rows (or a 1-D one) is read whole. The start is a hash, not
    Python's salted ``hash``, so every process and machine picks the same rows.
    """
    if rows < 1:
        raise ValueError(f"rows per tensor must be at least 1, got {rows}")
    n = int(shape[0]) if len(shape) > 1 else 1
    if n <= rows:
        return RowSample(0, n)
    key = f"{seed}/{name}/{'x'.join(map(str, shape))}".encode()
    start = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % (n - rows + 1)
    return RowSample(start, start + rows)


def plan_samples(tensors: Sequence[tuple[str, Sequence[int], int]], budget: int, seed: int = 0) -> dict[str, RowSample]:
    """The rows read of each (name, shape, nbytes) of one model, within ``budget`` bytes in all.

    Each tensor gets ``budget / len(tensors)`` bytes: as many whole rows as fit (at least
    one), or all of it where it is smaller. Models of one architecture get the same plan.
    """
    share = budget // max(1, len(tensors))
    out = {}
    for name, shape, nbytes in tensors:
        n = int(shape[0]) if len(shape) > 1 else 1
        out[name] = sample_rows(name, tuple(shape), max(1, share // max(1, nbytes // max(1, n))), seed)
    return out


def row_bytes(entry: TensorEntry) -> int:
    """Bytes of one row of the first axis (a 1-D tensor is one row)."""
    return entry.nbytes // entry.shape[0] if len(entry.shape) > 1 and entry.shape[0] else entry.nbytes


def tensor_range(entry: TensorEntry, sample: RowSample | None) -> tuple[int, int]:
    """The byte range ``[start, end)`` of the sampled rows in the tensor's file, or of the whole tensor."""
    if sample is None:
        return entry.begin, entry.end
    if sample.end > (entry.shape[0] if len(entry.shape) > 1 else 1) or sample.begin < 0:
        raise ValueError(f"rows {sample.begin}-{sample.end} are outside tensor {entry.name!r} {entry.shape}")
    step = row_bytes(entry)
    return entry.begin + sample.begin * step, entry.begin + sample.end * step


def read_blocks(source: ByteSource, entries: Sequence[TensorEntry], samples: Mapping[str, RowSample]) -> dict[str, np.ndarray]:
    """Each tensor's sampled rows (``samples[name]``) or, where it has none, all of it, in its own dtype.

    One range per tensor, and tensors whose ranges touch (whole tensors, packed back to back)
    share one read. ``entries`` must come from the file's own validated header
    (``entries_for``), so every range lies inside its tensor's bytes.
    """
    ranges = [tensor_range(e, samples.get(e.name)) for e in entries]
    out = {}
    for entry, raw in zip(entries, read_ranges(source, ranges)):
        sample = samples.get(entry.name)
        shape = entry.shape if sample is None or len(entry.shape) < 2 else (sample.rows, *entry.shape[1:])
        out[entry.name] = decode(raw, entry.dtype, shape)
    return out
