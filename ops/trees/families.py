"""Which models can be compared, and which of those share a pretraining run (methods.md §3, steps 1-2).

Step 1 blocks models by architecture: only models whose chosen layers have the same names
and shapes have a distance at all. Step 2 splits a block into families. Two models
pretrained from different random inits are about sqrt(2) times their own norm apart in
every layer, while relatives (fine-tunes, LoRA merges, quantized copies) stay well inside
that in at least one layer; so the per-layer "kinship" distances of a block fall into two
groups with a wide gap between them, and we cut single linkage at that gap. Small blocks
see every pair; large ones only each layer's k nearest neighbours, so no block ever needs
an n x n matrix.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_OUTPUT = re.compile(r"o_proj|out_proj|attention\.output|to_out", re.IGNORECASE)

# Scratch bound of the blocked searches: at most this many float32 distances at once (64 MiB).
_SCRATCH = 1 << 24
_TORCH_FROM = 4096  # columns from which kNN's top-k is torch's (see _smallest)


def square_attention_layers(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """MoTHer's distance layers: the square 2-D attention weights (q, k, v, o projections), by name.

    LoRA factors are never square layers of the model itself, so adapter tensors drop out.
    """
    return sorted(
        name
        for name, shape in shapes.items()
        if len(shape) == 2 and shape[0] == shape[1] and _ATTENTION.search(name) and "lora" not in name.lower()
    )


def output_projections(layers: Sequence[str]) -> list[str]:
    """The attention output projections among ``layers``: MoTHer's kurtosis layers for full fine-tunes."""
    return [name for name in layers if _OUTPUT.search(name)]


def architecture_signature(shapes: Mapping[str, Sequence[int]], layers: Sequence[str]) -> str:
    """A short hash of the chosen layers' names and shapes: equal signatures can be compared."""
    spec = json.dumps([[name, list(shapes[name])] for name in layers])
    return hashlib.sha1(spec.encode()).hexdigest()[:16]


def distance_vector(parts: Sequence[np.ndarray], numels: Sequence[int]) -> np.ndarray:
    """One model's point in distance space: ``||v_i - v_j|| = sqrt(mean_l RMS(W_il - W_jl)^2)``.

    A part is a layer's flattened entries (exact) or its sketch (``hubtree.ops.weights.sketch``,
    which keeps ``||A - B||_F``): either way scaling by ``1 / sqrt(numel_l * L)`` turns the
    concatenation's Euclidean distance into the root-mean-square over layers of MoTHer's
    per-layer RMS distance, so layers of every size weigh the same.
    """
    scale = [1.0 / math.sqrt(n * len(parts)) for n in numels]
    return np.concatenate([np.asarray(p, dtype=np.float32).ravel() * s for p, s in zip(parts, scale)])


def shared_layer_groups(x: np.ndarray, sizes: Sequence[int] | None) -> np.ndarray:
    """Per member, its group of members that share some layer bit-for-bit (linked through any
    such pair), or -1 where it shares none.

    An adapter leaves the layers it does not target untouched (LoRA on query and value: key
    and output), and so does a fine-tune with frozen layers: every model made that way from
    F carries F's bytes there, and so do its own adapters. Equal layers give equal parts of
    the distance vectors (``sizes`` their lengths), exact or sketched alike; members equal in
    every layer are duplicates, merged before this.
    """
    n = len(x)
    groups = np.full(n, -1)
    if sizes is None or len(sizes) < 2 or n < 2:
        return groups
    a, b = _equal_layer_pairs(x, layer_slices(x.shape[1], sizes))
    if len(a) == 0:
        return groups
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    shares = np.bincount(np.r_[a, b], minlength=n) > 0
    groups[shares] = label[shares]
    return groups


def _equal_layer_pairs(x: np.ndarray, slices: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b), a < b, of rows whose part ``sl`` is equal bit for bit, for each layer's slice:
    each row with the first row equal to it there. Hashing costs O(n L) where a
    nearest-neighbour search per layer would cost O(n^2 L)."""
    a, b = [], []
    for sl in slices:
        part = np.ascontiguousarray(x[:, sl])
        rows = part.view(np.dtype((np.void, part.dtype.itemsize * part.shape[1])))[:, 0]
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        same = first[inverse] != np.arange(len(x))  # equal to an earlier row in this layer
        a.append(first[inverse][same])
        b.append(np.nonzero(same)[0])
    return np.concatenate(a), np.concatenate(b)


def knn(
    base: np.ndarray, k: int, queries: np.ndarray | None = None, allowed: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every row i, the k rows j != i of ``base`` nearest to ``queries[i]`` (default: base[i]).

    Exact blocked search: candidates by the Gram trick in float32,
    ``d2[i, j] = ||q_i||^2 + ||b_j||^2 - 2 q_i . b_j`` (``_smallest``), their distances then
    recomputed in float64. ``allowed(rows)`` gives a (len(rows), n) mask of admissible
    neighbours (upload order, quantized leaves). Memory kept is O(n k); the scratch per
    block is bounded by ``_SCRATCH``. Missing neighbours are index -1, distance inf.

    Returns:
        (idx, dist), both (n, k), each row sorted by distance, equal distances by index.
    """
    n = len(base)
    k = max(0, min(k, n - 1))
    queries = base if queries is None else queries
    b, q = (np.ascontiguousarray(a, dtype=np.float32) for a in (base, queries))
    b_sq, q_sq = np.einsum("ij,ij->i", b, b), np.einsum("ij,ij->i", q, q)
    minus_2bt = -2.0 * b.T
    idx = np.full((n, k), -1, dtype=np.int64)
    step = max(1, _SCRATCH // max(n, 1))
    for r0 in range(0, n if k else 0, step):
        rows = np.arange(r0, min(n, r0 + step))
        d2 = q[r0 : r0 + len(rows)] @ minus_2bt
        d2 += b_sq[None, :]
        d2 += q_sq[r0 : r0 + len(rows), None]
        d2[np.arange(len(rows)), rows] = np.inf
        if allowed is not None:
            d2[~allowed(rows)] = np.inf
        part = _smallest(d2, k)
        idx[rows] = np.where(np.isfinite(np.take_along_axis(d2, part, axis=1)), part, -1)
    dist = np.full((n, k), np.inf)
    has = idx >= 0
    dist[has] = pair_distances(queries, base, np.repeat(np.arange(n), k).reshape(n, k)[has], idx[has])
    order = np.lexsort((np.where(has, idx, n), dist), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)


def _smallest(d2: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k smallest entries, in any order.

    torch's top-k is ~15x faster than numpy's argpartition on rows of 20k, but importing
    torch costs 1-2 s, more than argpartition loses below ``_TORCH_FROM`` columns: so
    ``hubtree trees`` on a lake of a few thousand models starts without it.
    """
    if d2.shape[1] < _TORCH_FROM:
        return np.argpartition(d2, k - 1, axis=1)[:, :k]
    import torch

    return torch.topk(torch.from_numpy(d2), k, dim=1, largest=False).indices.numpy()


def pair_distances(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||u[a] - v[b]||`` in float64 for index arrays a, b, in chunks of bounded scratch."""
    out = np.empty(len(a))
    step = max(1, _SCRATCH // max(u.shape[1], 1) // 2)
    for s in range(0, len(a), step):
        diff = u[a[s : s + step]].astype(np.float64) - v[b[s : s + step]]
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def layer_slices(dim: int, sizes: Sequence[int] | None) -> list[slice]:
    """The slice of each layer's part in a distance vector (one part when sizes are unknown)."""
    if not sizes:
        return [slice(0, dim)]
    if sum(sizes) != dim:
        raise ValueError(f"layer sizes sum to {sum(sizes)}, the vectors have {dim} entries")
    ends = np.cumsum(sizes).tolist()
    return [slice(e - s, e) for s, e in zip(sizes, ends)]


def family_distance(x: np.ndarray, a: np.ndarray, b: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """``min_l ||A_l - B_l|| / rms(||A_l||, ||B_l||)`` for the pairs (a, b): kinship, not distance.

    Models from independent random inits are ~sqrt(2) apart in *every* layer; relatives
    stay close in at least one. The minimum over layers keeps LoRA merges of one base
    together (their untouched layers are identical) even when their adapted layers moved
    farther than an unrelated model is.
    """
    out = np.full(len(a), np.inf)
    for sl in slices:
        part = x[:, sl]
        norm2 = np.einsum("ij,ij->i", part, part, dtype=np.float64)
        scale = np.sqrt(np.maximum((norm2[a] + norm2[b]) / 2.0, 1e-300))
        out = np.minimum(out, pair_distances(part, part, a, b) / scale)
    return out


@dataclass(frozen=True)
class Clustering:
    """Family labels of one block and the kinship cut that made them."""

    labels: np.ndarray  # (n,) family ids 0..F-1, in order of first appearance
    threshold: float  # single-linkage merges above this kinship distance separate families
    pairs: str  # "all" (exact single linkage) | "knn" (nearest neighbours and shared layers)


def cut_height(heights: np.ndarray, floor: float = 0.5, min_ratio: float = 2.0) -> float:
    """The merge height that separates families: the widest gap in the sorted heights.

    Only gaps whose upper side reaches ``floor`` count: below it two models are too close
    to come from separate random inits, and near-duplicates would otherwise make the
    widest gap of a single family. A gap must also span a factor ``min_ratio``; without
    one, ``floor`` itself is the cut.
    """
    h = np.sort(heights[np.isfinite(heights)])
    if len(h) < 2:
        return floor
    lo, hi = np.maximum(h[:-1], 1e-12), h[1:]
    ratio = np.where(hi >= floor, hi / lo, 0.0)
    best = int(np.argmax(ratio))
    return float(math.sqrt(lo[best] * hi[best])) if ratio[best] >= min_ratio else floor


def cluster_block(
    x: np.ndarray, sizes: Sequence[int] | None = None, k: int = 10, all_pairs_max: int = 2000, floor: float = 0.5, min_ratio: float = 2.0
) -> Clustering:
    """Families of one architecture block: single linkage on ``family_distance``, cut at its gap.

    MoTHer uses Ward on the mean distance; we do not, because a LoRA merge's adapted layers
    can move farther than an unrelated model is: on the tuning zoo of seed 0, Ward with
    this same cut left six LoRA merges of one base as six families and split a fine-tune
    family in three. Kinship is not Euclidean, so the linkage is single: the families
    are the components of the minimum spanning tree less its edges above the cut. Up to
    ``all_pairs_max`` rows it sees every pair; beyond, each row's ``k`` nearest neighbours
    and the rows that share a layer exactly, so memory stays O(n k).
    """
    n = len(x)
    slices = layer_slices(x.shape[1], sizes)
    if n < 2:
        return Clustering(np.zeros(n, dtype=np.int64), math.inf, "all")
    if n <= all_pairs_max:
        graph, pairs = csr_matrix(_all_pairs_kinship(x, slices)), "all"  # csgraph reads dense entries below 1e-8 as no edge
    else:
        a, b = _candidate_pairs(x, slices, k)
        graph, pairs = coo_matrix((_nonzero(family_distance(x, a, b, slices)), (a, b)), shape=(n, n)).tocsr(), "knn"
    mst = minimum_spanning_tree(graph).tocoo()
    t = cut_height(mst.data, floor, min_ratio)
    keep = mst.data <= t
    joined = coo_matrix((mst.data[keep], (mst.row[keep], mst.col[keep])), shape=(n, n))
    return Clustering(_first_seen(connected_components(joined, directed=False)[1]), t, pairs)


def _nonzero(kin: np.ndarray) -> np.ndarray:
    """Kinship as an edge weight: csgraph reads a 0 weight (exact copies) as no edge."""
    return np.maximum(kin, 1e-12)


def _all_pairs_kinship(x: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """``family_distance`` of every pair as an (n, n) matrix, per layer by the float64 Gram trick."""
    kin = np.full((len(x), len(x)), np.inf)
    for sl in slices:
        part = x[:, sl].astype(np.float64)
        sq = np.einsum("ij,ij->i", part, part)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * part @ part.T, 0.0)
        kin = np.minimum(kin, np.sqrt(d2 / np.maximum((sq[:, None] + sq[None, :]) / 2.0, 1e-300)))
    kin = _nonzero(kin)
    np.fill_diagonal(kin, 0.0)
    return kin


def _candidate_pairs(x: np.ndarray, slices: Sequence[slice], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (a < b): each row's k nearest neighbours, and rows sharing a layer bit for bit.

    The second kind finds LoRA merges of one base, whose untouched layers are the base's
    own bytes even when their adapted layers put them far apart (``_equal_layer_pairs``).
    """
    idx, _ = knn(x, k)
    rows = np.repeat(np.arange(len(x)), idx.shape[1]).reshape(idx.shape)
    has = idx >= 0
    found = [np.stack([rows[has], idx[has]], axis=1), np.stack(_equal_layer_pairs(x, slices), axis=1)]
    pairs = np.sort(np.concatenate(found), axis=1)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    return pairs[:, 0], pairs[:, 1]


def _first_seen(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..F-1 in order of first appearance, so labels are stable across runs."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)
