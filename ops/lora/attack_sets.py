"""Which published weights form a LoRA set, and at what rank: the checks before Spectral DeTuning.

Merges of one base are ``W'_i = W + B_i A_i`` with ``rank(B_i A_i) <= r``, so any two differ by
``B_i A_i - B_j A_j``, of rank ``r_i + r_j`` for adapters in general position (trained ones are)
and never more. A layer that LoRA did not target is bit-identical across the set; a model made
from another base, or fully fine-tuned, differs from the others at full rank. Everything here
follows from those three facts, measured with one numerical-rank test (``pair_ranks``).

Example:
    >>> found = check_attack_set({"a/m1": m1, "b/m2": m2, "c/m3": m3})    # doctest: +SKIP
    >>> found.ok, found.layers                                             # doctest: +SKIP
    (True, {'model.layers.0.self_attn.q_proj.weight': 4, ...})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from hubtree.errors import LoraSetError, ShapeMismatchError, TooFewMergesError

MAX_RANK = 128  # the largest LoRA rank looked for; hub adapters use 4-128
RTOL = 1e-6  # singular values below RTOL * sigma_1 are rounding, whatever the weights' scale
NOISE = 2.0  # the float rounding floor, in units of its expected spectral norm (see pair_ranks)
MIN_MERGES = 3  # two merges cannot be separated (see TooFewMergesError)
SAMPLE_ROWS = 2 * MAX_RANK + 8  # rows of each layer that settle its difference's rank (see classify_layers)


def stack_merges(merged: Tensor | Sequence[Tensor]) -> Tensor:
    """``(n, m, d)`` from a stacked tensor or a list of equal-shape matrices, refusing what cannot be detuned.

    Raises:
        ShapeMismatchError: the matrices differ in shape (or are not matrices).
        TooFewMergesError: fewer than ``MIN_MERGES`` of them.
    """
    shapes = {tuple(w.shape) for w in merged}
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise ShapeMismatchError(f"merges have shapes {sorted(shapes)}; all must be the same (m, d) matrix")
    if len(merged) < MIN_MERGES:
        raise TooFewMergesError(
            f"{len(merged)} merge(s): two merges cannot be separated, since any split of W'_1 - W'_2 into "
            f"two rank-r parts fits them exactly; Spectral DeTuning needs at least {MIN_MERGES} fine-tunes of one base"
        )
    return merged if isinstance(merged, Tensor) else torch.stack(list(merged))


def pair_ranks(stack: Tensor, rtol: float = RTOL, eps: float | None = None, max_rank: int = MAX_RANK) -> Tensor:
    """Numerical rank ``rho_ij`` of ``W'_i - W'_j`` for every pair of ``stack`` (n, m, d); (n, n) ints.

    ``rank(D) = rank(D @ Omega)`` for ``Omega`` (d, k) with random orthonormal columns whenever
    ``rank(D) < k``, so each model is sketched once (``Y_i = W'_i Omega``, k = 2 * max_rank + 8)
    and each pair costs one (m, k) SVD instead of one (m, d) SVD.

    A singular value counts if it exceeds both ``rtol * sigma_1`` and the rounding floor. The
    weights were stored with relative rounding ``eps`` (the input dtype's unless given: pass the
    storage dtype's eps for upcast weights), so a difference carries iid noise of std about
    ``0.3 * eps * rms(W')``, whose spectral norm is that times ``sqrt(m) + sqrt(k)`` (an orthonormal
    ``Omega`` keeps noise iid); ``NOISE`` times that bound leaves a margin yet sits far below any
    trained LoRA's singular values.
    """
    n, m, d = stack.shape
    eps = torch.finfo(stack.dtype).eps if eps is None else eps
    x = stack.to(torch.float64)
    rms, k = x.square().mean().sqrt(), min(d, 2 * max_rank + 8)
    if k < d:
        gen = torch.Generator(x.device).manual_seed(0)
        x = x @ torch.linalg.qr(torch.randn(d, k, generator=gen, device=x.device, dtype=x.dtype))[0]
    i, j = torch.triu_indices(n, n, 1, device=x.device)
    s = torch.linalg.svdvals(x[i] - x[j])
    floor = NOISE * eps * rms * (math.sqrt(m) + math.sqrt(k))
    counted = (s > torch.clamp(rtol * s[:, :1], min=floor)).sum(-1)
    ranks = torch.zeros(n, n, dtype=torch.long, device=x.device)
    ranks[i, j] = counted
    return (ranks + ranks.T).cpu()


def low_rank_limit(m: int, d: int, max_rank: int = MAX_RANK) -> int:
    """The largest pair rank still read as two LoRAs: ``2 * max_rank``, and at most half the layer.

    A difference above half of ``min(m, d)`` leaves too few equations per unknown for any
    separation, and is what a different base or a full fine-tune looks like.
    """
    return min(2 * max_rank, min(m, d) // 2)


def estimate_lora_rank(
    weights: Sequence[Tensor] | Tensor, tol: float = RTOL, eps: float | None = None, max_rank: int = MAX_RANK
) -> int:
    """The LoRA rank of one layer's merges: ``r = ceil(max_{i<j} rank(W'_i - W'_j) / 2)``.

    Why pairs and not the differences to one reference stacked: the stack spans every member's
    ``B_i``, rank ``n r``, which saturates ``min(m, d)`` n/2 times sooner and tells no more. For a
    set sharing one rank (one PEFT config) every pair has rank ``2r`` exactly; with mixed ranks
    the max pair gives ``(r_max + r_next) / 2``, which errs upward from every other member.

    Raises:
        LoraSetError: some pair differs at full rank (run ``check_attack_set`` to find the outlier).
    """
    stack = stack_merges(weights)
    rho = pair_ranks(stack, tol, eps, max_rank)
    limit = low_rank_limit(*stack.shape[1:], max_rank)
    if rho.max() > limit:
        i, j = divmod(int(rho.argmax()), len(stack))
        raise LoraSetError(
            f"merges {i} and {j} differ at rank {int(rho.max())} (> {limit}): not LoRA merges of one base; "
            "check_attack_set names the model to leave out"
        )
    return lora_rank(rho)


def lora_rank(rho: Tensor) -> int:
    """``ceil(max_{i<j} rho_ij / 2)``: a pair of rank-r LoRAs differs at rank 2r (see ``estimate_lora_rank``)."""
    return math.ceil(int(rho.max()) / 2)


@dataclass(frozen=True)
class LayerDiff:
    """How one layer differs across a set: ``rank`` is the LoRA rank estimate (0 when identical)."""

    kind: Literal["identical", "low_rank", "full_rank"]
    rank: int
    pair_ranks: Tensor  # (n, n) rho_ij, zeros when identical


def classify_layers(
    models: Sequence[Mapping[str, Tensor]], tol: float = RTOL, eps: float | None = None, max_rank: int = MAX_RANK,
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, LayerDiff]:
    """Each matrix (2-D tensor) of the models: identical, LoRA-targeted at some rank, or full-rank different.

    The models may hold the same ``SAMPLE_ROWS`` consecutive rows of each matrix instead of all of it
    (``shapes``: the whole matrices' shapes, which set ``low_rank_limit``). Rows ``R`` of a
    difference ``B_i A_i - B_j A_j`` keep its rank, ``rank(D[R]) = rank(D)``, whenever
    ``|R| >= rank(D)`` and the ``B`` rows are in general position (trained ones are); a
    full-rank difference shows rank ``min(|R|, d) > low_rank_limit`` in any ``|R| = 2 * max_rank + 8`` rows.
    So a 4096-row layer is judged on 6% of its bytes.

    Raises:
        ShapeMismatchError: the models differ in tensor names or shapes.
    """
    _check_same_tensors([str(i) for i in range(len(models))], models)
    out = {}
    for name, first in models[0].items():
        if first.ndim != 2:
            continue
        stack = torch.stack([model[name] for model in models])
        if all(torch.equal(first, other) for other in stack[1:]):
            out[name] = LayerDiff("identical", 0, torch.zeros(len(models), len(models), dtype=torch.long))
            continue
        rho = pair_ranks(stack, tol, eps, max_rank)
        low = int(rho.max()) <= low_rank_limit(*(shapes or {}).get(name, first.shape), max_rank)
        out[name] = LayerDiff("low_rank" if low else "full_rank", lora_rank(rho), rho)
    return out


def low_rank_layers(models: Sequence[Mapping[str, Tensor]], **rank_kw) -> dict[str, int]:
    """The LoRA-targeted layers of a set and their estimated ranks: the layers worth detuning."""
    return {name: diff.rank for name, diff in classify_layers(models, **rank_kw).items() if diff.kind == "low_rank"}


@dataclass
class AttackSet:
    """What ``check_attack_set`` found: whom to detune, which layers at which rank, and why not if not."""

    members: list[str]  # model ids kept; the reference (most low-rank neighbours) first
    layers: dict[str, int]  # LoRA-targeted layer -> estimated rank over the members
    excluded: dict[str, str] = field(default_factory=dict)  # model id -> why it was left out
    problems: list[str] = field(default_factory=list)  # why the members cannot be detuned; empty if they can

    @property
    def ok(self) -> bool:
        return not self.problems


def check_attack_set(
    models: Mapping[str, Mapping[str, Tensor]], tol: float = RTOL, eps: float | None = None, max_rank: int = MAX_RANK,
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> AttackSet:
    """Validate candidate merges of one base: keep the largest group whose pairwise differences are low rank.

    Two models are merges of one base when every matrix differs at rank <= ``low_rank_limit``;
    the reference is the model with the most such partners, the members are it and its
    partners, and every other model is excluded with the layer that gives it away. Passing a
    few layers (say one q_proj) is enough to decide membership on large models, and so is a
    sample of each layer's rows (see ``classify_layers``; ``shapes`` then gives the whole layers').

    Raises:
        ShapeMismatchError: the models differ in tensor names or shapes (not one architecture).
    """
    names = list(models)
    _check_same_tensors(names, [models[n] for n in names])
    shapes = {name: (shapes or {}).get(name, tuple(t.shape)) for name, t in models[names[0]].items()}
    layers = classify_layers([models[n] for n in names], tol, eps, max_rank, shapes)
    limits = {name: low_rank_limit(*shapes[name], max_rank) for name in layers}
    same_base = torch.ones(len(names), len(names), dtype=torch.bool)
    for name, diff in layers.items():
        same_base &= diff.pair_ranks <= limits[name]
    ref = int(same_base.sum(1).argmax())
    keep = [i for i in range(len(names)) if same_base[ref, i] and i != ref]
    members = [ref, *keep]
    excluded = {names[i]: _why_excluded(names, ref, i, layers, limits) for i in range(len(names)) if i not in members}
    idx = torch.tensor(members)
    ranks = {name: lora_rank(d.pair_ranks[idx][:, idx]) for name, d in layers.items()}
    found = AttackSet([names[i] for i in members], {name: r for name, r in ranks.items() if r > 0}, excluded)
    if len(members) < MIN_MERGES:
        found.problems.append(
            f"only {len(members)} merge(s) of one base ({', '.join(found.members)}): two merges cannot be "
            f"separated, since any split of their difference into two rank-r parts fits both exactly; "
            f"find at least {MIN_MERGES} fine-tunes of this base"
        )
    if not found.layers and len(members) > 1:
        found.problems.append("no layer differs between the members: they are copies of one model, not fine-tunes")
    return found


def _why_excluded(names: Sequence[str], ref: int, i: int, layers: dict[str, LayerDiff], limits: dict[str, int]) -> str:
    """Name the layer where model ``i`` differs most from the reference, in words a user can act on."""
    rho = {name: int(d.pair_ranks[ref, i]) for name, d in layers.items()}
    full = [name for name in layers if rho[name] > limits[name]]
    worst = max(full, key=rho.get)
    return (
        f"differs from {names[ref]} at full rank in {len(full)} of {len(layers)} matrices (e.g. {worst}: rank "
        f"{rho[worst]}, LoRA merges of one base differ at <= {limits[worst]}): a fine-tune of another base "
        "or a full fine-tune, not a LoRA merge of this base"
    )


def _check_same_tensors(names: Sequence[str], models: Sequence[Mapping[str, Tensor]]) -> None:
    """Raise ``ShapeMismatchError`` naming the first model whose tensor names or shapes differ from the first's."""
    expected = {k: tuple(v.shape) for k, v in models[0].items()}
    for name, model in zip(names[1:], models[1:]):
        got = {k: tuple(v.shape) for k, v in model.items()}
        if got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))[0]
            raise ShapeMismatchError(
                f"{name} does not share {names[0]}'s tensors (first difference: {diff[0]} {diff[1]}): "
                "merges of one base have the same tensor names and shapes"
            )
