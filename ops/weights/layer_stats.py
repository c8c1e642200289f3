"""Per-layer statistics: moments of a tensor's entries and, for matrices, WeightWatcher's spectral metrics.

methods.md §1. For every tensor: mean, std, skewness, excess kurtosis (biased, Fisher; as
``scipy.stats.skew`` / ``scipy.stats.kurtosis`` defaults), min, max, the fraction of exact
zeros and max|x| / std. For matrices (and conv kernels) also the norms and the heavy-tail
metrics of the eigenvalues lambda_i = s_i^2 of W^T W.

Matching WeightWatcher 0.7.x (``analyze()`` defaults, checked against 0.7.7 on MiniLM):

* No normalisation of dense layers: lambda = s^2 of W itself, not of W^T W / N (the
  ``normalize`` option that divided by N was removed in WW 0.6.5). So
  ``log_norm = log10 sum lambda = 2 log10 ||W||_F`` and ``log_spectral_norm = log10 s_max^2``.
* Conv kernels (out, in, k1, k2, ...) are read as one (out x in) matrix per kernel position,
  their eigenvalues pooled into one spectrum, and scaled by 1/2 (WW's default ``conv2d_norm``
  multiplies each slice by sqrt(1/2)). ``frobenius_norm`` and ``spectral_norm`` stay the true
  norms; the scale enters ``log_norm``, ``log_spectral_norm``, ``alpha_weighted`` and ``xmin``.
* ``stable_rank = sum lambda / max lambda`` (WW's column of that name; the same as
  ||W||_F^2 / s_max^2).
* Power law: eigenvalues <= 1e-5 are dropped; each remaining eigenvalue but the largest is
  a candidate x_min; alpha = 1 + n / sum_{i: lambda_i >= x_min} log(lambda_i / x_min) (Clauset,
  Shalizi & Newman 2009, eq. 3.1) and the Kolmogorov-Smirnov distance
  D = max_{j} |(1 - (lambda_j / x_min)^(1 - alpha)) - j / n| over the tail sorted ascending, j = 0..n-1;
  the x_min with the smallest D wins (the first on ties), alpha <= 1 counts as D = 1.
  WW 0.7.7 switches to a bias-corrected, penalised fit when fewer than 20 eigenvalues
  survive the 1e-5 cut; we keep the estimator above there, so tiny matrices can differ.

Speed and precision: the eigenvalues are those of W^T W (2NM^2 + 4M^3/3 flops for an
(N x M) matrix, less than an SVD): on a GPU batched over same-shaped matrices, one launch
per batch; on a CPU one matrix per task, on one Python thread per intra-op thread (see
``_eigenvalues_by_thread``). The precision is chosen per matrix so that every statistic is
what float64 would give:

* Square-ish matrices (N < 4M) are done in float64. W^T W of stored (at most float32)
  values has exact products in float64, so each lambda is right to ~M eps64 lambda_max.
  float32 would not do: its Gram and eigvalsh move every lambda by up to ~0.5 eps32
  ||W||_F^2 (measured), 5e-6 to 4e-5 on MiniLM's 384 x 384 layers, whose smallest
  eigenvalues lie at 1e-9 to 1e-5, i.e. across the 1e-5 cut and the numerical-rank
  tolerance lambda_max (N eps32)^2 (1e-10 to 1e-7 there): their fits would still agree,
  their numerical ranks would not.
* Tall matrices (N >= 4M: embeddings, MLP weights) are tried in float32 first, at half the
  Gram's cost, which these dominate (9 GFlop for a 30522 x 384 embedding). Their spectrum
  is kept only where the smallest float32 eigenvalue exceeds 100 eps32 ||W||_F^2 and twice
  both cuts, so each lambda is within ~0.5 % relative and the largest (the fitted tail,
  lambda_max) within ~1e-6, and no lambda crosses a cut; the others are redone in float64.
  On MiniLM all 13 tall matrices keep float32; alpha and x_min move by < 4e-6 relative
  (the same eigenvalue is x_min), everything else by < 1e-6.

The power-law fit is vectorised over every candidate x_min of every matrix of a batch.
Moments take one fused float64 pass over each tensor's entries (``torch.compile`` on CPU),
tiny tensors stacked into one eager pass.

Matrices whose smaller side exceeds ``full_spectrum_max`` get only their top ``top_k``
eigenvalues (``torch.svd_lowrank``); ``spectrum`` then reads ``"truncated:<k>"``, the power
law is fitted to that top of the spectrum, ``log_norm`` and ``stable_rank`` stay exact (from
||W||_F) and the two ranks that need the whole spectrum are None.
"""
from __future__ import annotations

import functools
import itertools
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from hubtree.ops.torch_threads import intra_op_threads

# Eigenvalues at or below this are dropped before the power-law fit (WW's EVALS_THRESH).
EVAL_FLOOR = 1e-5

# WW's default conv2d_norm: each kernel slice is multiplied by sqrt(1/2), so lambda by 1/2.
CONV_EIGENVALUE_SCALE = 0.5

# Numerical rank tolerance uses float32's epsilon: the precision weights are stored and
# computed in (numpy's matrix_rank on a float32 matrix uses the same).
RANK_EPS = float(torch.finfo(torch.float32).eps)

# Entries per eager moment pass: bounds its float64 temporaries to ~100 MB. Tensors with
# fewer than _COMPILED_MIN_NUMEL entries are stacked by size and done eagerly, all at once.
_MOMENT_CHUNK = 1 << 22
_COMPILED_MIN_NUMEL = 1 << 12

# Scratch memory bounds: float64 bytes of M x M Grams per eigenvalue batch, and entries of
# the (matrices x candidates x eigenvalues) block of the KS search.
_GRAM_BATCH_BYTES = 1 << 28
_KS_BLOCK_ENTRIES = 1 << 18

# (N x M) slices with N >= this * M get float32 spectra first: Marchenko-Pastur puts the
# smallest eigenvalue of such a matrix near (1 - sqrt(M / N))^2 >= 1/4 of the typical one,
# far above float32's resolution. A float32 spectrum is kept only where its smallest
# eigenvalue exceeds this many eps32 ||W||_F^2 (see _float32_suffices).
_FLOAT32_MIN_ASPECT = 4
_FLOAT32_MARGIN = 100

# Extra random directions for the randomized SVD of truncated spectra.
_LOWRANK_OVERSAMPLE = 16


@dataclass(frozen=True)
class LayerStats:
    """One tensor's statistics. Spectral fields are None for 1-D tensors.

    Moments are of all entries (population std; skewness and kurtosis biased, kurtosis in
    excess of the normal's 3). Spectral fields follow WeightWatcher's definitions, see the
    module docstring; NaN means "defined but not computable" (no eigenvalue above 1e-5 to
    fit, or non-finite weights).
    """

    numel: int
    mean: float
    std: float
    skewness: float
    kurtosis: float
    min: float
    max: float
    zeros_fraction: float
    absmax_over_std: float
    frobenius_norm: float | None = None
    spectral_norm: float | None = None
    stable_rank: float | None = None
    entropy_effective_rank: float | None = None
    numerical_rank: int | None = None
    log_norm: float | None = None
    log_spectral_norm: float | None = None
    alpha: float | None = None
    alpha_weighted: float | None = None
    xmin: float | None = None
    ks_distance: float | None = None
    spectrum: str | None = None
    n_eigs: int | None = None


def layer_stats(w: torch.Tensor, full_spectrum_max: int = 4096, top_k: int = 256) -> LayerStats:
    """Statistics of one floating tensor, computed on its own device.

    Example:
        >>> s = layer_stats(torch.randn(512, 256))
        >>> s.spectrum, round(s.kurtosis, 2)  # ('full', ~0.0)
    """
    return batch_layer_stats({"w": w}, w.device, full_spectrum_max, top_k)["w"]


def batch_layer_stats(
    tensors: dict[str, torch.Tensor],
    device: str | torch.device | None = None,
    full_spectrum_max: int = 4096,
    top_k: int = 256,
) -> dict[str, LayerStats]:
    """Statistics of many tensors, the eigenvalue work batched over same-shaped matrices.

    Args:
        tensors: name -> floating tensor (any device, any float dtype).
        device: where the work runs (``"cuda"`` for a GPU); default CPU.
        full_spectrum_max: largest smaller-side of a matrix that gets its full spectrum.
        top_k: eigenvalues kept for larger matrices (randomized SVD).

    Returns:
        name -> LayerStats, in the order of ``tensors``.

    Raises:
        TypeError: a tensor is not floating point.
        ValueError: a tensor has no entries.
    """
    device = torch.device(device or "cpu")
    moments = _all_moments(tensors, device)
    matrices = {n: t for n, t in tensors.items() if t.ndim >= 2 and math.isfinite(moments[n].sum_squares)}
    spectra = _spectra(matrices, device, full_spectrum_max, top_k)
    fits = _fit_all(spectra, device)
    return {
        name: _assemble(moments[name], spectra.get(name), fits.get(name), is_matrix=t.ndim >= 2)
        for name, t in tensors.items()
    }


# --- moments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Moments:
    """Central moments m_k = mean((x - mean)^k) and the order statistics we keep."""

    numel: int
    mean: float
    m2: float
    m3: float
    m4: float
    min: float
    max: float
    zeros: int

    @property
    def sum_squares(self) -> float:
        """sum x^2 = n (m2 + mean^2), i.e. ||W||_F^2."""
        return self.numel * (self.m2 + self.mean * self.mean)


def _moment_pass(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per row of x (k x n): [sum d, sum d^2, sum d^3, sum d^4, #zeros, min, max], d = x - shift (k x 1).

    float64 throughout, except the zero count: int32, a third faster than int64 in the fused
    loop, so rows must stay below 2^31 entries. Plain tensor code, so that ``torch.compile``
    can fuse it into one pass over x.
    """
    d = x.to(torch.float64) - shift
    d2 = d * d
    return torch.stack(
        [
            d.sum(1),
            d2.sum(1),
            (d2 * d).sum(1),
            (d2 * d2).sum(1),
            (x == 0).sum(1, dtype=torch.int32).to(torch.float64),
            x.amin(1).to(torch.float64),
            x.amax(1).to(torch.float64),
        ],
        dim=1,
    )


def _sample_mean(rows: torch.Tensor) -> torch.Tensor:
    """(k x 1) float64 means of 2049-4096 evenly spaced entries of each row (all if fewer)."""
    return rows[:, :: rows.shape[1] // 4096 + 1].mean(1, keepdim=True, dtype=torch.float64)


def _shifted_moment_pass(rows: torch.Tensor) -> torch.Tensor:
    """[c, *_moment_pass(rows, c)] per row, c = _sample_mean(rows): the whole job as one function."""
    shift = _sample_mean(rows)
    return torch.cat([shift, _moment_pass(rows, shift)], dim=1)


@functools.cache
def _fused_kernel():
    """_shifted_moment_pass compiled once per process, for one row (seconds; cached on disk).

    Eager float64 code runs at a few percent of memory bandwidth on CPU (each op is a
    pass, with float64 temporaries); the compiled kernel reads x once, with no temporaries,
    so it also needs no chunking. One thread: a pipeline gets its parallelism from many
    workers, and an OpenMP team on a busy machine waits for its slowest thread at every call.
    """
    return torch.compile(_shifted_moment_pass, dynamic=True, fullgraph=True, options={"cpp.threads": 1})


_fused_available = True  # set to False for the process once compiling has failed


def _power_sums(rows: torch.Tensor) -> torch.Tensor:
    """_shifted_moment_pass(rows) (k x 8), by the fastest route for this input.

    One float32 row of >= _COMPILED_MIN_NUMEL (and < 2^31) entries on CPU: the compiled
    kernel (other dtypes, or several rows, would each cost another compile). Otherwise eager,
    in column chunks that bound the float64 temporaries: fast on CUDA, and on CPU for stacks of tiny
    tensors, where a few eager ops over all of them beat one compiled call (~40 us) per
    tensor. If no C++ compiler works here, the first compile fails and we stay eager,
    with a warning.
    """
    global _fused_available
    one_row = rows.shape[0] == 1 and _COMPILED_MIN_NUMEL <= rows.shape[1] < 2**31
    if _fused_available and one_row and rows.device.type == "cpu" and rows.dtype == torch.float32:
        try:
            # detach(): same memory, but not a view, so dynamo does not guard on (and
            # recompile for) the layout of whatever tensor the row was reshaped from
            return _fused_kernel()(rows.detach())
        except torch._dynamo.exc.BackendCompilerFailed as err:
            _fused_available = False
            warnings.warn(f"torch.compile unavailable, layer moments run eagerly (slower): {err}")
    shift = _sample_mean(rows)
    parts = torch.stack([_moment_pass(c, shift) for c in rows.split(max(1, _MOMENT_CHUNK // rows.shape[0]), dim=1)])
    return torch.cat([shift, parts[..., :5].sum(0), parts[..., 5:6].amin(0), parts[..., 6:].amax(0)], dim=1)


def _all_moments(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, _Moments]:
    """Moments of every tensor: tiny ones stacked by size into one pass each, the rest one by one."""
    groups: dict[tuple, list[str]] = {}
    flats = {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise TypeError(f"layer statistics need {name!r} to be floating, got {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name!r} of shape {tuple(t.shape)} has no entries")
        flat = t.to(device).reshape(-1)
        flats[name] = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # widen exactly
        key = (flat.numel(), flats[name].dtype) if flat.numel() < _COMPILED_MIN_NUMEL else (name,)
        groups.setdefault(key, []).append(name)
    out = {}
    for names in groups.values():
        rows = torch.stack([flats[n] for n in names]) if len(names) > 1 else flats[names[0]][None]
        out.update(zip(names, _moments(rows)))
    return out


def _moments(rows: torch.Tensor) -> list[_Moments]:
    """Moments of each row about a sample mean c, then shifted exactly to the true mean.

    With S_k = sum (x - c)^k and delta = S_1 / n (so mean = c + delta):
        m2 = S2/n - delta^2
        m3 = S3/n - 3 delta S2/n + 2 delta^3
        m4 = S4/n - 4 delta S3/n + 6 delta^2 S2/n - 3 delta^4
    c is the mean of 2049-4096 evenly spaced entries (all if fewer), so |delta| is a small
    fraction of the std and the corrections lose no precision even for near-constant
    tensors (a LayerNorm weight of 1 +- 1e-3), where raw moments about 0 would cancel
    catastrophically.
    """
    n = rows.shape[1]
    out = []
    for c, s1, s2, s3, s4, zeros, lo, hi in _power_sums(rows).tolist():
        delta, a2, a3, a4 = s1 / n, s2 / n, s3 / n, s4 / n
        out.append(
            _Moments(
                numel=n,
                mean=c + delta,
                m2=a2 - delta**2,
                m3=a3 - 3 * delta * a2 + 2 * delta**3,
                m4=a4 - 4 * delta * a3 + 6 * delta**2 * a2 - 3 * delta**4,
                min=lo,
                max=hi,
                zeros=int(zeros),
            )
        )
    return out


# --- spectra -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spectrum:
    """Pooled eigenvalues lambda = s^2 of a matrix or of a conv kernel's slices."""

    eigs: torch.Tensor  # float64, ascending, on CPU, unscaled
    full: bool
    scale: float  # WW's eigenvalue normalisation: 1 for matrices, 1/2 for conv kernels
    long_side: int  # N, the larger side of each slice (for the rank tolerance)


def _slices(w: torch.Tensor) -> torch.Tensor:
    """(slices, N, M) views with N >= M: the matrix itself, or a conv kernel's (out x in) slice per position."""
    mats = w.unsqueeze(0) if w.ndim == 2 else w.flatten(2).permute(2, 0, 1)
    return mats.mT if mats.shape[1] < mats.shape[2] else mats


def _spectra(
    matrices: dict[str, torch.Tensor], device: torch.device, full_spectrum_max: int, top_k: int
) -> dict[str, _Spectrum]:
    """Eigenvalues of every matrix: the whole spectrum, or the top ``top_k`` of large ones."""
    full: dict[str, torch.Tensor] = {}
    out: dict[str, _Spectrum] = {}
    for name, w in matrices.items():
        slices = _slices(w)
        if slices.shape[2] <= full_spectrum_max:
            full[name] = slices
        else:
            out[name] = _Spectrum(_top_eigenvalues(slices.to(device), top_k), False, _scale(w), slices.shape[1])
    flat = [s for slices in full.values() for s in slices]
    per_slice = _eigenvalues_by_thread(flat) if device.type == "cpu" else _eigenvalues_by_batch(flat, device)
    starts = itertools.accumulate((len(slices) for slices in full.values()), initial=0)
    for (name, slices), start in zip(full.items(), starts):
        eigs = torch.cat(per_slice[start : start + len(slices)]).sort().values
        out[name] = _Spectrum(eigs, True, _scale(matrices[name]), slices.shape[1])
    return out


def _scale(w: torch.Tensor) -> float:
    """WW's eigenvalue normalisation of this tensor: 1 for a matrix, 1/2 for a conv kernel."""
    return 1.0 if w.ndim == 2 else CONV_EIGENVALUE_SCALE


def _eigenvalues_by_batch(slices: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Eigenvalues of each slice's W^T W, same-shaped slices batched (one launch each on a GPU)."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(slices):
        by_shape.setdefault(tuple(s.shape), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(slices)
    for (_, n_cols), members in by_shape.items():
        per_batch = max(1, _GRAM_BATCH_BYTES // (8 * n_cols * n_cols))
        for b0 in range(0, len(members), per_batch):
            batch = members[b0 : b0 + per_batch]
            for i, eigs in zip(batch, _eigenvalues([slices[i] for i in batch], device)):
                out[i] = eigs
    return out


def _eigenvalues_by_thread(slices: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eigenvalues of each slice's W^T W on the CPU: one task per slice, on one Python thread per intra-op thread.

    LAPACK's eigvalsh of a few-hundred-square matrix barely gains from more threads (the
    tridiagonal reduction is memory-bound BLAS-2), and a Gram of a few hundred columns
    little more, but independent matrices on separate threads do: each worker runs with
    one intra-op thread, so workers do not oversubscribe the cores and none waits at an
    OpenMP barrier for a thread the OS has descheduled. The largest Grams go first, so no
    worker is left with one at the end. On all-MiniLM-L6-v2 (2 cores) this took 245-265 ms
    against 290-310 ms for Grams computed with both threads and eigvalsh split after them.
    (numpy's OpenBLAS eigvalsh is faster per call on that AMD CPU, 5.0 against 7.5 ms in
    float64, but holds the GIL, and OpenBLAS and torch threads in one pool slow each other.)
    """
    workers = max(1, min(torch.get_num_threads(), len(slices)))
    order = sorted(range(len(slices)), key=lambda i: -slices[i].shape[0] * slices[i].shape[1] ** 2)
    with intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
        done = dict(zip(order, pool.map(lambda i: _eigenvalues([slices[i]], torch.device("cpu"))[0], order)))
    return [done[i] for i in range(len(slices))]


def _eigenvalues(slices: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(slices x M) float64 eigenvalues of each W^T W, ascending, >= 0, on CPU.

    Tall slices (N >= _FLOAT32_MIN_ASPECT M) go through float32 first, and keep that
    spectrum where _float32_suffices says so; the rest, and square-ish slices from the
    start, are done in float64. Square trained matrices nearly always need float64 (their
    smallest eigenvalues sit below float32's resolution), so trying float32 on them would
    only add work.
    """
    n_rows, n_cols = slices[0].shape
    eigs = torch.empty((len(slices), n_cols), dtype=torch.float64, device=device)
    redo = list(range(len(slices)))
    if n_rows >= _FLOAT32_MIN_ASPECT * n_cols:
        grams = _grams(slices, torch.float32, device)
        eigs.copy_(torch.linalg.eigvalsh(grams))
        traces = grams.diagonal(dim1=1, dim2=2).sum(1, dtype=torch.float64)
        redo = (~_float32_suffices(eigs, traces, n_rows)).nonzero().flatten().tolist()
    if redo:
        eigs[redo] = torch.linalg.eigvalsh(_grams([slices[i] for i in redo], torch.float64, device))
    return eigs.clamp_min_(0).cpu()


def _grams(slices: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(slices x M x M) W^T W in ``dtype``, one matmul per slice: no stacked copy of the slices.

    In float64 the products of stored (at most float32) values are exact, so the Gram
    carries only the summation's ~N eps64 relative error. (numpy's A.T @ A, which calls
    BLAS syrk at half the flops, was no faster end to end on a busy 2-core machine: its
    OpenBLAS threads and torch's OpenMP team then compete for the cores.)
    """
    n_cols = slices[0].shape[1]
    out = torch.empty((len(slices), n_cols, n_cols), dtype=dtype, device=device)
    for dst, s in zip(out, slices):
        w = s.detach().to(device=device, dtype=dtype)
        torch.matmul(w.mT, w, out=dst)
    return out


def _float32_suffices(eigs: torch.Tensor, traces: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per slice: do float32 eigenvalues give the same statistics as float64 ones would?

    The float32 Gram and eigvalsh move each eigenvalue by about eps32 ||W||_F^2 (measured:
    at most 0.52 eps32 ||W||_F^2 on MiniLM's 39 matrices and on Student-t ones, N = 200 to
    30522), an absolute error. So the smallest eigenvalue must exceed
    _FLOAT32_MARGIN eps32 ||W||_F^2 (every eigenvalue then within ~0.5 % relative, the tail
    that the power law is fitted to far closer), and twice each cut applied to the spectrum
    (the 1e-5 floor, also under the conv scale of 1/2, and the numerical-rank tolerance
    lambda_max (N eps32)^2), so that no eigenvalue can land on the other side of a cut.
    """
    smallest = eigs[:, 0]
    rank_cut = eigs[:, -1] * (n_rows * RANK_EPS) ** 2
    cut = rank_cut.clamp_min(EVAL_FLOOR / CONV_EIGENVALUE_SCALE)
    return (smallest > _FLOAT32_MARGIN * RANK_EPS * traces) & (smallest > 2 * cut)


def _top_eigenvalues(slices: torch.Tensor, top_k: int) -> torch.Tensor:
    """The ``top_k`` largest pooled eigenvalues by randomized SVD (Halko et al. 2011), ascending.

    svd_lowrank draws its random test matrix from the global generator; we fork and seed it
    so that the result is reproducible and the caller's random state is untouched.
    """
    n_cols = slices.shape[2]
    q = min(n_cols, top_k + _LOWRANK_OVERSAMPLE)
    devices = [slices.device] if slices.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        _, s, _ = torch.svd_lowrank(slices.float(), q=q, niter=4)
    eigs = s.double().reshape(-1) ** 2
    return eigs.topk(min(top_k, eigs.numel())).values.sort().values.cpu()


# --- power-law fit -----------------------------------------------------------------------


@dataclass(frozen=True)
class _PowerLaw:
    alpha: float
    xmin: float
    ks_distance: float


def _fit_all(spectra: dict[str, _Spectrum], device: torch.device) -> dict[str, _PowerLaw]:
    """Power-law fits of all spectra, batched over spectra with the same number of eigenvalues."""
    by_length: dict[int, list[str]] = {}
    for name, spec in spectra.items():
        by_length.setdefault(spec.eigs.numel(), []).append(name)
    fits = {}
    for names in by_length.values():
        eigs = torch.stack([spectra[n].eigs * spectra[n].scale for n in names]).to(device)
        alpha, xmin, ks = (v.tolist() for v in fit_power_law(eigs))
        fits.update({n: _PowerLaw(a, x, d) for n, a, x, d in zip(names, alpha, xmin, ks)})
    return fits


def fit_power_law(eigs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clauset-style power-law fit of each row of ``eigs`` (B x n, ascending), all x_min at once.

    For candidate i (x_min = lambda_i, tail = lambda_i..lambda_{n-1}, n_i = n - i):
        alpha_i = 1 + n_i / sum_{j>=i} (log lambda_j - log lambda_i)
        D_i     = max_{j>=i} |1 - (lambda_j / lambda_i)^(1 - alpha_i) - (j - i) / n_i|
    over eigenvalues > EVAL_FLOOR (the dropped ones are the smallest, so they only remove
    candidates: a tail starting above the floor contains none of them).

    Returns:
        (alpha, x_min, D) for the argmin of D per row; NaN where fewer than two eigenvalues
        exceed the floor.
    """
    batch, n = eigs.shape
    valid = eigs > EVAL_FLOOR
    logs = torch.where(valid, eigs, torch.ones_like(eigs)).log()
    index = torch.arange(n, dtype=torch.float64, device=eigs.device)
    tail_n = n - index
    tail_log_sum = logs.flip(1).cumsum(1).flip(1)
    alpha = 1 + tail_n / (tail_log_sum - tail_n * logs)
    ks = torch.empty_like(eigs)
    block = max(1, _KS_BLOCK_ENTRIES // max(1, batch * n))
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        slope = (1 - alpha[:, i0:i1, None])
        # (1 - alpha_i) log(lambda_j / lambda_i), then expm1 of it = -(fitted CDF), all in place
        dev = torch.addcmul(-slope * logs[:, i0:i1, None], slope, logs[:, None, :]).expm1_()
        empirical = (index[None, :] - index[i0:i1, None]) / tail_n[i0:i1, None]
        dev.add_(empirical).abs_()  # |fitted - empirical|
        dev.masked_fill_(index[None, :] < index[i0:i1, None], 0)  # j < i is outside the tail
        ks[:, i0:i1] = dev.amax(-1)
    ks = torch.where((alpha > 1) & ~ks.isnan(), ks, 1.0)  # WW's D = 1 for alpha <= 1 (and ties: NaN)
    candidate = valid.clone()
    candidate[:, -1] = False  # the largest eigenvalue alone is no tail
    ks = torch.where(candidate, ks, torch.full_like(ks, math.inf))
    best = ks.argmin(1, keepdim=True)
    found = candidate.any(1)
    nan = torch.full((batch,), math.nan, dtype=torch.float64, device=eigs.device)

    def pick(values: torch.Tensor) -> torch.Tensor:
        return torch.where(found, values.gather(1, best).squeeze(1), nan)

    return pick(alpha), pick(eigs), pick(ks)


# --- assembly ----------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    """a / b with IEEE semantics (+-inf, NaN) instead of ZeroDivisionError."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def _assemble(m: _Moments, spec: _Spectrum | None, fit: _PowerLaw | None, is_matrix: bool) -> LayerStats:
    """Moments always; the spectral fields from the eigenvalues where the tensor is a matrix."""
    std = math.sqrt(max(m.m2, 0.0))
    stats = dict(
        numel=m.numel,
        mean=m.mean,
        std=std,
        skewness=_ratio(m.m3, m.m2**1.5) if m.m2 > 0 else math.nan,
        kurtosis=_ratio(m.m4, m.m2**2) - 3 if m.m2 > 0 else math.nan,
        min=m.min,
        max=m.max,
        zeros_fraction=m.zeros / m.numel,
        absmax_over_std=_ratio(max(abs(m.min), abs(m.max)), std),
    )
    if not is_matrix:
        return LayerStats(**stats)
    if spec is None:  # non-finite weights: the eigenvalues are undefined
        nan_fields = ("frobenius_norm", "spectral_norm", "stable_rank", "entropy_effective_rank",
                      "log_norm", "log_spectral_norm", "alpha", "alpha_weighted", "xmin", "ks_distance")
        return LayerStats(**stats, **dict.fromkeys(nan_fields, math.nan), spectrum="non-finite", n_eigs=0)
    lam_max = spec.eigs[-1].item()
    sum_sq = m.sum_squares
    log_spectral = math.log10(spec.scale * lam_max) if lam_max > 0 else -math.inf
    s = spec.eigs.sqrt()
    return LayerStats(
        **stats,
        frobenius_norm=math.sqrt(sum_sq),
        spectral_norm=math.sqrt(lam_max),
        stable_rank=_ratio(sum_sq, lam_max),
        entropy_effective_rank=_entropy_rank(s) if spec.full else None,
        numerical_rank=int((s > s[-1] * spec.long_side * RANK_EPS).sum()) if spec.full else None,
        log_norm=math.log10(spec.scale * sum_sq) if sum_sq > 0 else -math.inf,
        log_spectral_norm=log_spectral,
        alpha=fit.alpha,
        alpha_weighted=fit.alpha * log_spectral,
        xmin=fit.xmin,
        ks_distance=fit.ks_distance,
        spectrum="full" if spec.full else f"truncated:{spec.eigs.numel()}",
        n_eigs=spec.eigs.numel(),
    )


def _entropy_rank(s: torch.Tensor) -> float:
    """exp(H(p)), p = s / sum s, H = -sum p log p (0 log 0 = 0): 1 for rank one, M for a flat spectrum."""
    total = s.sum()
    if total <= 0:
        return math.nan
    p = s[s > 0] / total
    return math.exp(-(p * p.log()).sum().item())
