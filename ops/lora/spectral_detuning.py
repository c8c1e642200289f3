"""Spectral DeTuning (Horwitz, Kahana, Hoshen; ICML 2024): the base weights back from LoRA merges.

Given n merges of one layer, ``W'_i = W + B_i A_i`` with ``rank(B_i A_i) <= r``, alternate

    M_i = argmin_{rank(M) <= r_t} || (W'_i - W*) - M ||_F      (truncated SVD of each residual)
    W*  = 1/n sum_i (W'_i - M_i)

from ``W* = mean_i W'_i``, with ``r_t`` starting at 1 and doubling (capped at r) whenever the loss
``1/n sum_i ||W'_i - W* - M_i||_F^2`` has not improved for ``PATIENCE`` iterations, and ``r_t = r``
from half the iterations on. No data, no gradients: only SVDs.

hubtree runs that loop on ``(L, n, m, d)`` stacks: every merge of every same-shape layer in one
batched SVD step, warm-started from the last iteration's singular vectors (``SubspaceStep``),
each layer with its own rank schedule (a mask on its singular values), leaving the batch when its
loss stops improving at full rank. ``paper_spectral_detuning`` runs the same loop one layer at a
time with one ``torch.svd_lowrank`` per merge (``SvdLowrankStep``), the paper's procedure and
our benchmark's baseline.

Example:
    >>> result = spectral_detuning(merges, rank=estimate_lora_rank(merges))   # doctest: +SKIP
    >>> w_error(result.weights, true_w)                                         # doctest: +SKIP
    -15.2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from hubtree.ops.lora.attack_sets import stack_merges

ITERATIONS = 300  # the paper's default (1000 for 7B LLMs)
PATIENCE = 15  # iterations without improvement before the rank doubles (or, at full rank, we stop)
IMPROVEMENT = 1e-6  # a relative loss decrease below this, PATIENCE times running, is a plateau
OVERSAMPLE = 8  # extra basis columns: the top r_t directions converge at rate sigma_{r+p+1} / sigma_{r_t}


@dataclass
class DetuningResult:
    """One layer's recovery: ``weights`` is W* (m, d) in the compute dtype, ``loss_history`` one value per iteration."""

    weights: Tensor
    loss_history: list[float]
    iterations: int
    final_rank: int
    converged: bool  # stopped because the loss was flat at full rank, not because iterations ran out


@dataclass
class LowRankFit:
    """Every merge's ``M_i = left_i @ right_i`` in factors, and ``||M_i||_F^2`` (its kept squared singular values)."""

    left: Tensor  # (L, n, m, t): U_t S_t, columns past a layer's r_t zeroed
    right: Tensor  # (L, n, t, d): V_t^T
    energy: Tensor  # (L, n)

    def stacked(self) -> tuple[Tensor, Tensor]:
        """(L, m, n t) and (L, n t, d), whose product is ``sum_i M_i``: one matmul, the n products never formed."""
        return self.left.transpose(1, 2).flatten(2), self.right.flatten(1, 2)


class LowRankStep(Protocol):
    """The pluggable step: the best rank-``ranks[l]`` approximation of every residual ``x[l, i]``.

    Each ``M_i`` must be an orthogonal projection of ``X_i`` onto its top singular directions
    (truncated SVDs are), so that ``||X_i - M_i||^2 = ||X_i||^2 - ||M_i||^2``.
    """

    def __call__(self, x: Tensor, ranks: Tensor) -> LowRankFit:
        """``x`` (L, n, m, d) and ``ranks`` (L,) ints."""

    def keep(self, rows: Tensor) -> None:
        """Keep only the state of layers ``rows`` (a bool mask over L): the others have converged."""


def _fit(left: Tensor, s: Tensor, right: Tensor, ranks: Tensor) -> LowRankFit:
    """Factors from singular triplets ``(U, s, V^T)`` cut to ``max(ranks)``, each layer masked to its own r_t."""
    top = int(ranks.max())
    s = s[..., :top] * (torch.arange(top, device=s.device) < ranks[:, None, None])
    return LowRankFit(left[..., :top] * s[..., None, :], right[..., :top, :], s.square().sum(-1))


@dataclass
class SubspaceStep:
    """Batched truncated SVD by subspace iteration, warm-started from the previous call's basis.

    ``W*`` moves little between iterations, so last iteration's row basis ``V`` (d, k) already
    spans nearly the top-k row space of every residual ``X``; one power step ``Q = orth(X V)``,
    then the exact SVD of the small ``Q^T X`` (k, d) (Rayleigh-Ritz, done as a QR and a (k, k)
    SVD), brings it up to date: two (m, d, k) matmuls per merge instead of ``svd_lowrank``'s six
    and its Python loop; the row basis of ``Q^T X`` is the next ``V``. The top-r_t directions
    are accurate to ``sigma_{k+1} / sigma_{r_t}`` per step, and near the solution the residuals
    are rank r plus the vanishing error, so the fit becomes exact. Matrices no wider than
    ``width`` get a full batched SVD instead.
    """

    width: int  # k = r + OVERSAMPLE
    warmup: int = 2  # extra power steps from the random start
    seed: int = 0
    basis: Tensor | None = field(default=None, repr=False)  # (L, n, d, k)

    def __call__(self, x: Tensor, ranks: Tensor) -> LowRankFit:
        if self.width >= min(x.shape[-2:]):
            u, s, vh = torch.linalg.svd(x, full_matrices=False)
            return _fit(u, s, vh, ranks)
        q = torch.linalg.qr(x @ (self._start(x) if self.basis is None else self.basis)).Q
        self.basis, r = torch.linalg.qr((q.mT @ x).mT)  # Q^T X = R^T P^T: the SVD shrinks to (k, k)
        u, s, vh = torch.linalg.svd(r.mT)
        top = int(ranks.max())
        return _fit(q @ u[..., :top], s, vh[..., :top, :] @ self.basis.mT, ranks)

    def _start(self, x: Tensor) -> Tensor:
        """A random (d, k) basis, sharpened by ``warmup`` power steps (a randomized range finder)."""
        gen = torch.Generator(x.device).manual_seed(self.seed)
        v = torch.randn(*x.shape[:-2], x.shape[-1], self.width, generator=gen, device=x.device, dtype=x.dtype)
        for _ in range(self.warmup):
            v = torch.linalg.qr(x.mT @ torch.linalg.qr(x @ v).Q).Q
        return v

    def keep(self, rows: Tensor) -> None:
        if self.basis is not None:
            self.basis = self.basis[rows]


class SvdLowrankStep:
    """The paper's step: one ``torch.svd_lowrank(X_i, q=r_t)`` (randomized, 2 power iterations) per merge."""

    def __call__(self, x: Tensor, ranks: Tensor) -> LowRankFit:
        (n_layers, n, m, d), top = x.shape, int(ranks.max())
        u, s, v = x.new_zeros(n_layers, n, m, top), x.new_zeros(n_layers, n, top), x.new_zeros(n_layers, n, d, top)
        for layer, rank in enumerate(ranks.tolist()):
            for i, residual in enumerate(x[layer]):
                u[layer, i, :, :rank], s[layer, i, :rank], v[layer, i, :, :rank] = torch.svd_lowrank(residual, q=rank)
        return _fit(u, s, v.mT, ranks)

    def keep(self, rows: Tensor) -> None:
        """Stateless: nothing to drop."""


def detune(
    merged: Tensor, rank: int, step: LowRankStep, iterations: int = ITERATIONS, early_stop: bool = True
) -> list[DetuningResult]:
    """The Spectral DeTuning loop (module docstring) on ``merged`` (L, n, m, d); one result per layer.

    Each layer keeps its own ``r_t``, best loss and stale count, as if run alone; a layer whose
    loss has been flat for ``PATIENCE`` iterations at ``r_t = rank`` is done (``early_stop``).
    Residuals and W* are written into buffers: a large layer costs no fresh (n, m, d) memory per iteration.
    """
    (n_layers, n, *_), mean = merged.shape, merged.mean(1)
    w, x = mean.clone(), torch.empty_like(merged)
    ranks = torch.ones(n_layers, dtype=torch.long, device=merged.device)
    best, stale = torch.full_like(ranks, math.inf, dtype=merged.dtype), torch.zeros_like(ranks)
    active, histories, results = list(range(n_layers)), [[] for _ in merged], {}
    for t in range(iterations):
        if t == iterations // 2:  # force full rank for the second half
            ranks, stale = torch.full_like(ranks, rank), torch.zeros_like(stale)
        torch.sub(merged, w[:, None], out=x)  # X_i = W'_i - W*
        fit = step(x, ranks)  # M_i, the best rank-r_t approximation of X_i
        loss = (torch.linalg.vector_norm(x, dim=(-2, -1)).square() - fit.energy).mean(1)  # Pythagoras: M_i projects X_i
        torch.baddbmm(mean, *fit.stacked(), alpha=-1 / n, out=w)  # W* = mean_i (W'_i - M_i)
        improved = loss + IMPROVEMENT * loss.abs() < best
        best, stale = torch.where(improved, loss, best), torch.where(improved, 0, stale + 1)
        grow = (stale >= PATIENCE) & (ranks < rank)
        ranks, stale = torch.where(grow, (2 * ranks).clamp(max=rank), ranks), torch.where(grow, 0, stale)
        for layer, value in zip(active, loss.tolist()):
            histories[layer].append(value)
        flat = (ranks == rank) & (stale >= PATIENCE) & early_stop
        done = torch.ones_like(flat) if t == iterations - 1 else flat
        for row in done.nonzero().flatten().tolist():
            layer = active[row]
            results[layer] = DetuningResult(w[row].clone(), histories[layer], t + 1, int(ranks[row]), bool(flat[row]))
        if done.any():
            keep = ~done
            merged, mean, w, ranks, best, stale = merged[keep], mean[keep], w[keep], ranks[keep], best[keep], stale[keep]
            x, active = x[keep], [layer for layer, k in zip(active, keep.tolist()) if k]
            step.keep(keep)
        if not active:
            break
    return [results[layer] for layer in range(n_layers)]


def spectral_detuning_batch(
    layers: Tensor, rank: int, iterations: int = ITERATIONS, dtype: torch.dtype = torch.float64, seed: int = 0
) -> list[DetuningResult]:
    """Detune L same-shape layers at once: ``layers`` (L, n, m, d) on any device, one result per layer.

    float64 by default: on float32-stored merges it reaches a W-Error near -18, where float32
    arithmetic stalls 2-3 orders higher and its loss (a difference of two norms) drowns in
    rounding; float32 halves the time where -15 is enough.
    """
    stack_merges(layers[0])  # refuse fewer than 3 merges
    step = SubspaceStep(rank + OVERSAMPLE, seed=seed)
    return detune(layers.to(dtype), rank, step, iterations)


def spectral_detuning(
    merged: Tensor | Sequence[Tensor], rank: int, iterations: int = ITERATIONS, dtype: torch.dtype = torch.float64, seed: int = 0
) -> DetuningResult:
    """Recover one layer's pre-fine-tuning weights from its merges (n, m, d) or a list of (m, d).

    Raises:
        ShapeMismatchError: the merges differ in shape.
        TooFewMergesError: fewer than 3 merges (two cannot be separated).
    """
    return spectral_detuning_batch(stack_merges(merged)[None], rank, iterations, dtype, seed)[0]


def paper_spectral_detuning(
    merged: Tensor | Sequence[Tensor], rank: int, iterations: int = ITERATIONS, dtype: torch.dtype = torch.float64
) -> DetuningResult:
    """The procedure as the paper runs it: one layer, ``svd_lowrank`` per merge, every iteration run."""
    return detune(stack_merges(merged)[None].to(dtype), rank, SvdLowrankStep(), iterations, early_stop=False)[0]


def w_error(recovered: Tensor, true: Tensor) -> float:
    """W-Error = log10 MSE(recovered, true), the paper's metric (-inf when exact)."""
    mse = (recovered.to(torch.float64) - true.to(torch.float64)).square().mean().item()
    return math.log10(mse) if mse > 0 else -math.inf
