"""DSiRe: dataset sizes read back from adapter spectra, with normalisation fitted on training adapters only."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hubtree.ops.lora.dsire import DsireModel, adapter_spectra, frobenius_nn_baseline

LAYERS, RANK, DIM = 3, 4, 32


def adapter(sigma: Tensor, seed: int) -> dict[str, Tensor]:
    """A PEFT adapter whose A and B both have singular values ``sigma`` in every layer (so BA has sigma^2)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        q_a, q_b = (torch.linalg.qr(torch.randn(DIM, RANK, generator=g)).Q for _ in range(2))
        module = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{module}.lora_A.weight"] = sigma[:, None] * q_a.T  # (r, d)
        tensors[f"{module}.lora_B.weight"] = q_b * sigma  # (d, r)
    return tensors


def by_scale(size: int, seed: int) -> dict[str, Tensor]:
    """Spectra flat, scaled with sqrt(size), 5% jitter: separable, and by norm too."""
    jitter = 1 + 0.05 * torch.randn(RANK, generator=torch.Generator().manual_seed(seed))
    return adapter(size**0.5 * jitter, seed)


def by_shape(size: int, seed: int) -> dict[str, Tensor]:
    """Spectra whose decay depends on size, at a random overall scale: separable by shape, not by norm."""
    g = torch.Generator().manual_seed(seed)
    decay = {16: 1.0, 64: 0.5, 256: 0.2}[size] ** torch.arange(RANK)
    return adapter(decay / decay.norm() * (0.5 + torch.rand(1, generator=g)), seed)


def split(make, sizes=(16, 64, 256), train_per_size=6, test_per_size=3):
    """Train and held-out adapters with disjoint seeds: (train features, train sizes, test features, test sizes)."""
    train = [(s, make(s, 1000 * s + k)) for s in sizes for k in range(train_per_size)]
    test = [(s, make(s, 1000 * s + 500 + k)) for s in sizes for k in range(test_per_size)]
    return (
        [adapter_spectra(a) for _, a in train], [s for s, _ in train],
        [adapter_spectra(a) for _, a in test], np.array([s for s, _ in test]),
    )  # fmt: skip


def test_dsire_recovers_sizes_of_held_out_adapters():
    train, sizes, test, truth = split(by_scale)
    estimate, share = DsireModel.fit(train, sizes).predict(test)
    np.testing.assert_array_equal(estimate, truth)
    assert share.min() >= 0.9


def test_spectra_separate_sizes_that_frobenius_norms_cannot():
    train, sizes, test, truth = split(by_shape)
    estimate, _ = DsireModel.fit(train, sizes).predict(test)
    baseline = frobenius_nn_baseline(train, sizes, test)
    assert np.abs(estimate - truth).mean() == 0
    assert np.abs(baseline - truth).mean() > 20


def test_normalisation_is_fitted_on_training_adapters_only():
    train, sizes, test, _ = split(by_scale)
    model = DsireModel.fit(train, sizes)
    voter = next(iter(model.lo))
    seen = torch.stack([f[voter] for f in train]).numpy()
    np.testing.assert_allclose(model.lo[voter], seen.min(0))
    np.testing.assert_allclose(model.span[voter], seen.max(0) - seen.min(0))
    outlier = adapter_spectra(by_scale(100_000, seed=7))
    alone, _ = model.predict(test[:1])
    beside_outlier, _ = model.predict([test[0], outlier])  # test adapters never move the scale
    assert alone[0] == beside_outlier[0]
    np.testing.assert_array_equal(model.lo[voter], seen.min(0))


def test_a_fit_round_trips_through_plain_arrays():
    train, sizes, test, _ = split(by_scale)
    model = DsireModel.fit(train, sizes)
    arrays = model.to_arrays()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    np.testing.assert_array_equal(DsireModel.from_arrays(arrays).predict(test)[0], model.predict(test)[0])


def test_spectra_are_the_singular_values_of_a_b_and_their_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(RANK, DIM, generator=g, dtype=torch.float64), torch.randn(DIM, RANK, generator=g, dtype=torch.float64)
    spectra = adapter_spectra({"m.lora_A.weight": a, "m.lora_B.weight": b})
    assert sorted(spectra) == ["m/A", "m/B", "m/BA"]
    torch.testing.assert_close(spectra["m/A"], torch.linalg.svdvals(a))
    torch.testing.assert_close(spectra["m/B"], torch.linalg.svdvals(b))
    torch.testing.assert_close(spectra["m/BA"], torch.linalg.svdvals(b @ a)[:RANK])
