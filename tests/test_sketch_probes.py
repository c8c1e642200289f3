"""Sketches keep Frobenius distances; probe features are fixed-length deterministic fingerprints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hubtree.ops.weights.probes import probe_features
from hubtree.ops.weights.sketch import random_words, sketch, sketch_distance

# Width 512: the relative distance error has sd ~3.2 %; 15 % is > 4.5 sd.
TOLERANCE = 0.15


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pairs whose difference has the structures that break naive bucketing: dense, sparse,
    one column, low rank, a tiny fine-tune-like delta on a large base, and a short vector."""
    g = _generator(0)
    base = torch.randn(384, 1536, generator=g)
    column = base.clone()
    column[:, 7] += 1.0
    sparse = base.clone()
    sparse.view(-1)[torch.randperm(base.numel(), generator=g)[:50]] += 3.0
    low_rank = base + torch.randn(384, 2, generator=g) @ torch.randn(2, 1536, generator=g) * 0.1
    vector = torch.randn(384, generator=g)
    return {
        "independent": (torch.randn(300, 500, generator=g), torch.randn(300, 500, generator=g) * 0.5),
        "one_column": (base, column),
        "sparse": (base, sparse),
        "low_rank": (base, low_rank),
        "tiny_delta": (base, base + 1e-4 * torch.randn(384, 1536, generator=g)),
        "conv_kernel": (torch.randn(64, 32, 3, 3, generator=g), torch.randn(64, 32, 3, 3, generator=g)),
        "vector": (vector, vector + torch.randn(384, generator=g)),
    }


@pytest.mark.parametrize("case", sorted(_pairs()))
def test_sketch_distance_approximates_frobenius_distance(case: str):
    a, b = _pairs()[case]
    exact = float((a.double() - b.double()).norm())
    estimate = sketch_distance(sketch(a), sketch(b))
    assert abs(estimate / exact - 1) < TOLERANCE, (estimate, exact)


def test_sketch_error_has_the_stated_spread():
    g = _generator(1)
    ratios = []
    for _ in range(40):
        a, b = torch.randn(40, 50, generator=g), torch.randn(40, 50, generator=g)
        ratios.append(sketch_distance(sketch(a), sketch(b)) / float((a - b).norm()))
    assert abs(np.mean(ratios) - 1) < 0.02 and np.std(ratios) < 0.05
    assert max(abs(r - 1) for r in ratios) < TOLERANCE


def test_sketch_is_bit_reproducible_float32_and_seeded():
    w = torch.randn(200, 300, generator=_generator(2))
    first, second = sketch(w), sketch(w.clone())
    assert first.dtype == torch.float32 and first.shape == (512,)
    assert torch.equal(first, second)
    assert not torch.equal(first, sketch(w, seed=1))
    assert sketch(w, width=256).shape == (256,)


def test_projection_bits_are_pinned_across_machines_and_versions():
    # The first outputs of the reference splitmix64 seeded with 0. Exact integer arithmetic:
    # if they ever change, stored sketches stop being comparable with new ones.
    assert random_words((0,), 3).tolist() == [
        16294208416658607535, 7960286522194355700, 487617019471545679,
    ]


def test_sketch_is_linear_so_differences_are_sketches_of_differences():
    g = _generator(3)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    torch.testing.assert_close(sketch(a) - sketch(b), sketch(a - b), rtol=1e-5, atol=1e-5)


def test_sketches_of_different_widths_are_refused():
    with pytest.raises(ValueError):
        sketch_distance(torch.zeros(512), torch.zeros(256))


def test_probe_features_have_a_fixed_length_for_any_shape():
    g = _generator(4)
    for shape in [(384, 1536), (1536, 384), (384,), (64, 32, 3, 3)]:
        f = probe_features(torch.randn(*shape, generator=g))
        assert f.shape == (32 * 32,) and f.dtype == torch.float32 and (f >= 0).all()
    assert probe_features(torch.randn(50, 60, generator=g), n_probes=8, out_dim=4).shape == (32,)


def test_probe_features_are_deterministic_and_tell_matrices_apart():
    g = _generator(5)
    a, b = torch.randn(256, 128, generator=g), torch.randn(256, 128, generator=g)
    fa = probe_features(a)
    assert torch.equal(fa, probe_features(a.clone()))
    assert (fa - probe_features(b)).norm() > 0.5 * fa.norm()
    assert (fa - probe_features(a + 1e-3 * b)).norm() < 1e-2 * fa.norm()  # close layers, close prints
    assert not torch.equal(fa, probe_features(a, seed=1))
