"""Seeded random projections of a layer's entries, so distances survive without the weights.

methods.md §2: each layer gets a fixed-seed Johnson-Lindenstrauss sketch of its flattened
entries such that, for two layers A and B of the same shape,

    ||sketch(A) - sketch(B)||_2  ~=  ||A - B||_F .

The sketch is a fixed linear map S = G C (so sketch(A) - sketch(B) = S(A - B)):

1. C, a CountSketch-style bucketing into m = BUCKETS numbers. The flattened entries are laid
   out as rows of m; entry (r, c) gets the sign row_sign[r] * col_sign[c] and lands in bucket
   (c + shift[r]) mod m. Entries of one row never collide; two entries of different rows
   collide with probability 1/m over the random shifts, and the signs of any two entries
   are independent, so for any x

       E ||Cx||^2 = ||x||^2,    Var ||Cx||^2 <~ 2 ||x||^4 / m   (as for CountSketch).

   This costs O(numel) work and O(numel / m) random numbers (one sign and shift per row,
   m column signs), never a dense numel x width matrix.
2. G, a dense width x m matrix of +-1 / sqrt(width) (Achlioptas' database-friendly JL): for any
   z, ||Gz||^2 / ||z||^2 has mean 1 and variance <= 2 / width, with sub-Gaussian tails.

Error bound: the ratio r = ||sketch(A) - sketch(B)|| / ||A - B||_F has mean ~1 and standard
deviation about sqrt(1 / (2 width) + 1 / (2 m)): 3.2 % for width 512, m 8192. Tails:
P(|r^2 - 1| > eps) <= 2 exp(-width (eps^2/2 - eps^3/3) / 2) (Achlioptas 2003, Thm 1.1); with
eps = 0.2775 (r off by 15 %) that is < 1e-3 for width 512, and the chi-square approximation
puts it near 1e-6. This holds whatever the structure of A - B (one changed column, a sparse
or low-rank delta): the random shifts and signs break any alignment between the
difference and the buckets.

Reproducibility: every random number is a hash (splitmix64's finaliser) of
(seed, width, stream, index) computed with exact 64-bit integer arithmetic, so the
projection is the same on every machine, process and crawl, and depends only on
(seed, width, numel). The float sums themselves are computed in float64 and rounded to
float32; the same call gives bit-identical output on the same machine.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

# Width of the bucketing stage: large enough that its error (1 / sqrt(2 m) = 0.8 %) is small
# next to the dense stage's, small enough that the dense +-1 matrix (width x m) stays cheap.
BUCKETS = 8192

# Named streams of random numbers, so no two uses of one seed ever share bits.
_ROW_SIGNS, _ROW_SHIFTS, _COL_SIGNS, _DENSE = 1, 2, 3, 4

# Rows of the bucketing stage processed at once; bounds its scratch memory to ~2 x 8 MiB.
_ROWS_PER_BLOCK = 128

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of 64-bit words in which every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_words(key: tuple[int, ...], count: int) -> np.ndarray:
    """``count`` pseudo-random 64-bit words of the stream named by ``key`` (a tuple of ints).

    Word i is mix64(k + (i + 1) * golden), k the key folded through mix64: a counter-based
    generator (splitmix64), so any slice of a stream can be computed without the rest and
    the result is the same on every platform.
    """
    state = np.zeros(1, dtype=np.uint64)
    for part in key:
        state = _mix64(state ^ np.uint64(part % (1 << 64)))
    with np.errstate(over="ignore"):
        counters = state + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    return _mix64(counters)


def random_signs(key: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """A float64 tensor of +-1 (the top bit of each word), reproducible from ``key`` alone."""
    words = random_words(key, math.prod(shape))
    return torch.from_numpy(1.0 - 2.0 * (words >> np.uint64(63)).astype(np.float64)).reshape(shape)


@functools.lru_cache(maxsize=2)
def _dense_stage(seed: int, width: int) -> torch.Tensor:
    """G: width x BUCKETS entries of +-1 / sqrt(width), shared by every layer sketched with (seed, width)."""
    return random_signs((seed, width, _DENSE), (width, BUCKETS)) / math.sqrt(width)


def _bucket(flat: torch.Tensor, seed: int, width: int) -> torch.Tensor:
    """C x: signed, shifted rows of ``flat`` summed into BUCKETS float64 numbers."""
    rows = -(-flat.numel() // BUCKETS)
    row_signs = random_signs((seed, width, _ROW_SIGNS), (rows,)).to(flat.device)
    shifts = torch.from_numpy(
        (random_words((seed, width, _ROW_SHIFTS), rows) % np.uint64(BUCKETS)).astype(np.int64)
    ).to(flat.device)
    col_signs = random_signs((seed, width, _COL_SIGNS), (BUCKETS,)).to(flat.device)
    # windows[k] = (k, k+1, ..., k+m-1) mod m; row r reads window m - shift[r], i.e. its
    # bucket j holds the row's column (j - shift[r]) mod m: no per-entry modulo needed.
    windows = (torch.arange(2 * BUCKETS, device=flat.device) % BUCKETS).unfold(0, BUCKETS, 1)
    buckets = torch.zeros(BUCKETS, dtype=torch.float64, device=flat.device)
    block = torch.empty(min(rows, _ROWS_PER_BLOCK), BUCKETS, dtype=torch.float64, device=flat.device)
    rolled = torch.empty_like(block)
    for r0 in range(0, rows, _ROWS_PER_BLOCK):
        r1 = min(rows, r0 + _ROWS_PER_BLOCK)
        part = flat[r0 * BUCKETS : r1 * BUCKETS]
        rows_here = block[: r1 - r0]
        rows_here.view(-1)[: part.numel()].copy_(part)
        rows_here.view(-1)[part.numel() :].zero_()  # the last row is padded with zeros
        rows_here.mul_(col_signs)
        torch.gather(rows_here, 1, windows[BUCKETS - shifts[r0:r1]], out=rolled[: r1 - r0])
        buckets += row_signs[r0:r1] @ rolled[: r1 - r0]
    return buckets


def sketch(w: torch.Tensor, width: int = 512, seed: int = 0) -> torch.Tensor:
    """A (width,) float32 sketch of ``w``'s entries: ||sketch(A) - sketch(B)|| ~= ||A - B||_F.

    Args:
        w: any floating tensor; its entries are read flattened in C order.
        width: sketch length; the relative distance error is about 1 / sqrt(2 width).
        seed: names the projection; sketches compare only under the same (seed, width),
            which is why both are stored beside the sketch.

    Returns:
        ``S vec(w)`` with S = G C as in the module docstring, on ``w``'s device.

    Example:
        >>> a, b = torch.randn(64, 64), torch.randn(64, 64)
        >>> sketch_distance(sketch(a), sketch(b)) / float((a - b).norm())  # ~1.0 +- 0.03
    """
    if not w.is_floating_point():
        raise TypeError(f"sketch needs a floating tensor, got {w.dtype}")
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    buckets = _bucket(w.reshape(-1), seed, width)
    dense = _dense_stage(seed, width).to(buckets.device)
    return (dense @ buckets).to(torch.float32)


def sketch_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_2 of two sketches, the estimate of ||A - B||_F (float64 subtraction)."""
    if a.shape != b.shape:
        raise ValueError(f"sketches of different widths cannot be compared: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(torch.linalg.vector_norm(a.double() - b.double()))
