"""Fixed random probes of a weight matrix: ProbeX's untrained fingerprint of a layer.

methods.md §7. ProbeX reads a layer X (d_H x d_W) through probes U (d_W x n_probes):
responses Z = X U, each response z_k (a d_H vector) mapped by one shared projection
V (out_dim x d_H) and a ReLU, and the results concatenated:

    features = vec( ReLU(V X U) )      (n_probes * out_dim numbers, probe-major)

ProbeX learns U and V; before any training, fixed seeded ones already give a cheap,
deterministic fingerprint that is comparable across all layers of one shape.

U and V have +-1 entries scaled by 1/sqrt(d_W) and 1/sqrt(d_H), so each feature is on
the scale of X's entries times sqrt(d_W) rather than growing with the layer's size. Both
are drawn from hubtree's counter-based generator (``sketch.random_signs``) keyed by
(seed, d_H, d_W): the same on every machine, different for every shape.
"""
from __future__ import annotations

import math

import torch

from hubtree.ops.weights.sketch import random_signs

# Named streams of the shared generator, distinct from the sketch's.
_PROBES, _PROJECTION = 11, 12


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """The (d_H x d_W) reading of a tensor: a matrix as is, a vector as one column, a conv
    kernel (out, in, k...) as out x (in * k...), i.e. its output units by their receptive fields."""
    return w.reshape(-1, 1) if w.ndim < 2 else w.reshape(w.shape[0], -1)


def probe_features(w: torch.Tensor, n_probes: int = 32, out_dim: int = 32, seed: int = 0) -> torch.Tensor:
    """A float32 vector of length ``n_probes * out_dim``: ReLU(V W U) flattened probe by probe.

    Args:
        w: any floating tensor, read as a matrix by ``as_matrix``.
        n_probes: number of fixed random probes (columns of U).
        out_dim: size of the shared projection of each response.
        seed: names U and V; features compare only under the same seed and shape.

    Returns:
        features[k * out_dim + o] = max(0, (V W U)[o, k]), computed in float64 on ``w``'s device.

    Example:
        >>> probe_features(torch.randn(768, 3072)).shape
        torch.Size([1024])
    """
    if not w.is_floating_point():
        raise TypeError(f"probe features need a floating tensor, got {w.dtype}")
    x = as_matrix(w).to(torch.float64)
    d_h, d_w = x.shape
    probes = random_signs((seed, d_h, d_w, _PROBES), (d_w, n_probes)).to(x.device) / math.sqrt(d_w)
    projection = random_signs((seed, d_h, d_w, _PROJECTION), (out_dim, d_h)).to(x.device) / math.sqrt(d_h)
    responses = projection @ (x @ probes)  # (out_dim, n_probes)
    return responses.relu().T.reshape(-1).to(torch.float32)
