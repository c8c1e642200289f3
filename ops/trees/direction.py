"""Which way a family's edges point, from evidence that does not assume one way of training.

A direction witness is a per-model number that moves one way along fine-tuning edges:
MoTHer's summed excess kurtosis of the attention output projections (it falls when a
well-pretrained model is fine-tuned: an update with lighter tails than the weights thins
theirs) or the weights' norm (it grows when updates are large next to the weights and
decay is weak: ``||W + d||^2 ~ ||W||^2 + ||d||^2`` for a near-orthogonal Adam step; weight
decay on a well-trained model shrinks it instead). Which witness holds, and with which
sign, depends on the regime, so a family's evidence decides, strongest first:

1. its declared edges, and pairs whose upload times are both known (``priors.choose_direction``),
   where the hub's times order its trees at all (``times_tell``);
2. the shape of its tree. Orient the undirected minimum spanning tree away from a root:
   a witness that is monotone along lineages agrees with every edge for the true root,
   while its opposite sign can agree with at most one edge per branch point, because
   edges cannot all point *into* a node with two neighbours. So each (witness, sign) is
   scored by the agreement of its best root, and a family with branches identifies its
   own rule, whatever the generator. When two witnesses fit it from different roots, the
   one that beats its own reverse by more wins (on a tie, the default);
3. with neither (a chain, a pair), the rule other families' shapes told without conflict
   (``mother.recover_trees``: models of one hub tend to be made alike), else the default:
   entropy effective rank grows. A dense
   update (full fine-tuning with Adam) spreads a pretrained spectrum, and rank does not see
   weight decay (scale-free), which flips the norm; kurtosis (MoTHer's witness) moves by
   less than its noise on short fine-tunes and not at all on output projections under LoRA.

Re-rooting a family (``reroot``) counts every edge's vote at once; edges that merge an
adapter (``merged_adapter_edges``) vote by the norm instead of the family's witness, where
the norm moved by more than chance (``adapter_fixed``).

``FamilyDirection.confidence`` says how far the chosen rule beats the best rule of the
other sign, and is halved when the other witness, on its own, points the other way.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

from hubtree.ops.trees.families import knn, layer_slices
from hubtree.ops.trees.priors import PAPER_RULE, WITNESSES, DirectionRule, Votes, choose_direction, direction_votes

# Without declared edges or a telling tree shape: fine-tuning a pretrained model raises the
# summed entropy effective rank of its attention matrices. On the realistic tuning zoos
# (seeds 0, 1) it is the witness that orients most true edges (78% / 94%; kurtosis 61% / 47%).
PRETRAINED_RULE = DirectionRule("default", "rank", -1)
# A tree shape decides the rule only when its best root beats the other sign's by this
# share of the edges: a chain (no branch point) or a coin flip does not.
MIN_SHAPE_MARGIN = 0.25


@dataclass(frozen=True)
class ShapeScore:
    """How well one (witness, sign) orients an undirected tree from its best root."""

    witness: str
    sign: int
    agree: int  # edges oriented away from ``root`` along which sign * witness falls
    usable: int  # edges whose ends differ in the witness
    root: int


def undirected_tree(x: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Edges (a, b) of the minimum spanning tree (forest) of each member's k nearest neighbours."""
    n = len(x)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    idx, dist = knn(x, k)
    has = idx >= 0
    rows = np.repeat(np.arange(n), idx.shape[1]).reshape(idx.shape)[has]
    graph = coo_matrix((np.maximum(dist[has], 1e-12), (rows, idx[has])), shape=(n, n)).tocsr()
    mst = minimum_spanning_tree(graph.maximum(graph.T)).tocoo()
    return mst.row.astype(np.int64), mst.col.astype(np.int64)


def shape_score(
    a: np.ndarray, b: np.ndarray, values: np.ndarray, sign: int, witness: str = "", fixed: np.ndarray | None = None
) -> ShapeScore:
    """The root whose orientation of the tree (a, b) agrees with ``sign * values`` falling on most edges.

    ``fixed`` (per edge, optional): +1 where ``a`` is known to be the parent, -1 where ``b``
    is, 0 where the witness decides (``merged_adapter_edges``).
    Rerooting across an edge flips only that edge, so every root's count comes from one
    breadth-first pass: ``agree(v) = agree(u) - right(u -> v) + right(v -> u)``.
    """
    n = len(values)
    s = sign * np.asarray(values, dtype=np.float64)
    ok = np.isfinite(s[a]) & np.isfinite(s[b]) & (s[a] != s[b])
    if len(a) == 0:
        return ShapeScore(witness, sign, 0, 0, 0)
    adj = coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    right = {}  # (parent, child) -> 1 when the witness falls from parent to child
    fixed = np.zeros(len(a), dtype=np.int64) if fixed is None else fixed
    for u, v, usable, known in zip(a.tolist(), b.tolist(), ok.tolist(), fixed.tolist()):
        right[u, v] = int(known > 0) if known else int(usable and s[u] > s[v])
        right[v, u] = int(known < 0) if known else int(usable and s[v] > s[u])
    agree = np.full(n, -1)
    total, root, biggest = 0, 0, 0
    for start in range(n):
        if agree[start] >= 0:
            continue
        order, pred = breadth_first_order(adj, start, directed=False, return_predecessors=True)
        agree[start] = sum(right[int(pred[v]), int(v)] for v in order[1:])
        for v in order[1:]:
            u = int(pred[v])
            agree[v] = agree[u] - right[u, int(v)] + right[int(v), u]
        best = int(order[int(np.argmax(agree[order]))])
        total += int(agree[best])
        if len(order) > biggest:
            root, biggest = best, len(order)
    return ShapeScore(witness, sign, total, int(ok.sum()), root)


@dataclass(frozen=True)
class TimeFit:
    """How far a family's upload times fit its tree (``time_fit``); sums over families compare alike."""

    extra_roots: float = 0.0  # members older than all their tree neighbours, beyond one per tree
    by_chance: float = 0.0  # the same, expected of times in random order
    variance: float = 0.0  # of that count under random order, sum p (1 - p) (adjacent minima exclude each other: an upper bound)


@dataclass(frozen=True)
class FamilyDirection:
    rule: DirectionRule
    confidence: float  # in [0, 1]
    why: str  # one line for families.direction_rule
    times: TimeFit = TimeFit()
    conflict: str = ""  # shape rules: "rival" (another witness fits from another root), "default" (a tie the default decided)


def time_fit(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> TimeFit:
    """Members older than all their neighbours in the tree (a, b), beyond one per tree, against chance.

    Upload times that record the order of making put every member but the root after
    exactly one neighbour, its parent: one such local minimum per tree (a few more where
    the tree joins siblings). Times in random order make a member with d neighbours the
    oldest of them with probability 1/(d + 1), so chance expects

        sum_v 1 / (d_v + 1) - (number of trees)

    extra roots. Edges whose ends are untimed or tied carry no order and are left out.
    """
    ok = np.isfinite(t[a]) & np.isfinite(t[b]) & (t[a] != t[b])
    a, b, n = a[ok], b[ok], len(t)
    if len(a) == 0:
        return TimeFit()
    degree = np.bincount(np.r_[a, b], minlength=n)
    newer = np.where(t[a] < t[b], b, a)
    after_one = np.bincount(newer, minlength=n) > 0
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    trees = len(np.unique(label[degree > 0]))
    roots = int(np.sum((degree > 0) & ~after_one))
    p = 1.0 / (degree[degree > 0] + 1)
    return TimeFit(float(roots - trees), float(p.sum() - trees), float(np.sum(p * (1 - p))))


def times_tell(fits: Sequence[TimeFit]) -> bool:
    """Whether upload times order the hub's trees better than chance (a mirror's re-uploads,
    an emulator's clock), from the extra roots E summed over families against chance's C and V:

        E <= C / 2   or   C - E >= 2 sqrt(V).

    The first asks that E sit nearer none (times of making on a right tree) than chance; the
    second, a one-sided test at two standard deviations, keeps times whose trees join many
    siblings (large families, where E grows with the tree's errors) but still beat chance
    clearly. A small hub has no power for the test, and the first decides.
    """
    extra, chance, variance = (sum(getattr(f, k) for f in fits) for k in ("extra_roots", "by_chance", "variance"))
    return extra <= 0.5 * chance or chance - extra >= 2.0 * np.sqrt(variance)


def shape_direction(
    a: np.ndarray, b: np.ndarray, witnesses: Mapping[str, np.ndarray], default_rule: DirectionRule = PRETRAINED_RULE
) -> FamilyDirection | None:
    """The family's rule from its tree's shape (step 2 of the module docstring), or None when it does not tell.

    A rule fits the tree when its best root beats the other sign's by ``MIN_SHAPE_MARGIN``:

        margin(w, s) = agree(w, s) / usable(w) - agree(w, -s) / usable(w).

    The rule of the largest margin wins: a monotone witness fits from its root and its
    reverse cannot fit the branch points, while a witness that moves at random fits both
    signs about as well (on a small tree with few branch points a wrong witness can fit
    every edge, but so, nearly, does its reverse). Two fitting rules that root the tree at
    different members are a conflict: the confidence is halved, and on a tie in margin the
    default decides between them when it is one of them.
    """
    scores = [shape_score(a, b, witnesses[w], s, w) for w in WITNESSES for s in (+1, -1)]
    scores = [sc for sc in scores if sc.usable > 0]
    if not scores:
        return None
    frac = {(sc.witness, sc.sign): sc.agree / sc.usable for sc in scores}

    def margin(sc: ShapeScore) -> float:
        return frac[sc.witness, sc.sign] - frac.get((sc.witness, -sc.sign), 0.0)

    best = max(scores, key=lambda sc: (margin(sc), frac[sc.witness, sc.sign], sc.usable))
    if margin(best) < MIN_SHAPE_MARGIN:
        return None
    fits = [sc for sc in scores if margin(sc) >= MIN_SHAPE_MARGIN]
    rivals = [sc for sc in fits if sc.witness != best.witness and sc.root != best.root]
    default = next((sc for sc in fits if (sc.witness, sc.sign) == (default_rule.witness, default_rule.sign)), None)
    if rivals and default is not None and default is not best and np.isclose(margin(default), margin(best)):
        rivals, best = [best], default
    confidence = min(1.0, margin(best)) * (0.5 if rivals else 1.0)
    rule = DirectionRule("shape", best.witness, best.sign, frac[best.witness, best.sign], best.usable)
    why = f"tree shape: best root agrees on {frac[best.witness, best.sign]:.0%} of {best.usable} edges, the other sign on {frac.get((best.witness, -best.sign), 0.0):.0%}"
    conflict = "" if not rivals else "default" if best is default else "rival"
    if rivals:
        rival = rivals[0]
        why += f"; conflict: {rival.witness} ({'+' if rival.sign > 0 else '-'}) fits it best from another root"
        why += ", the default decided" if conflict == "default" else ""
    return FamilyDirection(rule, confidence, why, conflict=conflict)


def family_direction(
    x: np.ndarray,
    witnesses: Mapping[str, np.ndarray],
    created_at: np.ndarray,
    declared: Votes,
    lake: Votes,
    lake_rule: DirectionRule | None,
    default_rule: DirectionRule,
    k: int = 10,
) -> FamilyDirection:
    """One family's rule from its evidence, strongest first (see the module docstring).

    Args:
        x: the members' distance vectors; witnesses: their witness values, by name.
        created_at: their upload times (nan unknown); tree edges with both ends timed
            count as evidence, oriented older -> newer, alongside the declared edges.
        declared: votes of the family's own declared edges; lake: of all declared edges.
        lake_rule: the rule all declared edges agree with best (None without any).
    """
    a, b = undirected_tree(x, k)
    t = created_at
    timed = np.isfinite(t[a]) & np.isfinite(t[b]) & (t[a] != t[b])
    older, newer = np.where(t[a] < t[b], a, b)[timed], np.where(t[a] < t[b], b, a)[timed]
    votes = dict(declared)
    for key, (right, n) in direction_votes({w: v[older] for w, v in witnesses.items()}, {w: v[newer] for w, v in witnesses.items()}).items():
        right0, n0 = votes.get(key, (0, 0))
        votes[key] = (right0 + right, n0 + n)
    rule = choose_direction(votes, "declared", prior=lake)
    fit = time_fit(a, b, t)
    if rule is not None:
        n_declared, n_timed = max((n for _, n in declared.values()), default=0), int(timed.sum())
        source = "declared" if not n_timed else "upload times" if not n_declared else "declared and upload times"
        why = f"{source}: agrees with {rule.agreement:.0%} of {rule.n_evidence} edges"
        return FamilyDirection(DirectionRule(source, rule.witness, rule.sign, rule.agreement, rule.n_evidence), 2 * rule.agreement - 1, why, fit)
    shape = shape_direction(a, b, witnesses, default_rule)
    if shape is not None:
        return replace(shape, times=fit)
    fallback = lake_rule or default_rule
    if not np.isfinite(witnesses[fallback.witness]).any():
        fallback = PAPER_RULE
    agree = _witness_agreement(a, b, witnesses, fallback)
    origin = {"lake": "declared edges of other families", "shapes": "tree shapes of other families"}.get(
        fallback.source, "default for fine-tunes of pretrained models"
    )
    notes = ", ".join(f"{w} {v:.0%}" for w, v in agree.items())
    confidence = 0.5 * float(np.mean(list(agree.values()))) if agree else 0.25
    why = f"{origin}; tree shape does not tell" + (f"; other witnesses agree: {notes}" if notes else "")
    return FamilyDirection(fallback, confidence, why, fit)


EXPECTED_SIGN = {"kurtosis": +1, "norm": -1, "rank": -1}  # the published rules: kurtosis falls, norm and rank grow


def _witness_agreement(a: np.ndarray, b: np.ndarray, witnesses: Mapping[str, np.ndarray], rule: DirectionRule) -> dict[str, float]:
    """Per other witness, the share of tree edges (oriented from ``rule``'s best root) it moves along as expected."""
    out = {}
    if len(a) == 0:
        return out
    parent, child = oriented_edges(a, b, shape_score(a, b, witnesses[rule.witness], rule.sign).root, len(witnesses[rule.witness]))
    for w, values in witnesses.items():
        v = EXPECTED_SIGN[w] * values
        usable = np.isfinite(v[parent]) & np.isfinite(v[child]) & (v[parent] != v[child])
        if w != rule.witness and usable.any():
            out[w] = float((v[parent] > v[child])[usable].mean())
    return out


def oriented_edges(a: np.ndarray, b: np.ndarray, root: int, n: int, others: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(parent, child) of the forest (a, b) oriented away from ``root``; other trees from ``others``, else their first node."""
    adj = coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    pred = np.full(n, -2)
    for start in [root, *others, *range(n)]:
        if pred[start] != -2:
            continue
        order, p = breadth_first_order(adj, start, directed=False, return_predecessors=True)
        pred[order] = p[order]
    child = np.nonzero(pred >= 0)[0]
    return pred[child], child


def merged_adapter_edges(x: np.ndarray, a: np.ndarray, b: np.ndarray, sizes: Sequence[int] | None) -> np.ndarray:
    """Per edge (a, b): True where some layers are bit-for-bit equal at both ends and others differ.

    That is an adapter merged into some matrices (LoRA on query and value leaves key and
    output untouched), not a fine-tune, which moves every matrix. ``sizes`` are the lengths
    of the layers' parts of the distance vectors ``x`` (equal layers give equal parts).
    """
    if sizes is None or len(sizes) < 2 or len(a) == 0:
        return np.zeros(len(a), dtype=bool)
    differs = x[a] != x[b]
    changed = np.stack([differs[:, sl].any(axis=1) for sl in layer_slices(x.shape[1], sizes)], axis=1)
    return changed.any(axis=1) & ~changed.all(axis=1)


def adapter_fixed(a: np.ndarray, b: np.ndarray, merged: np.ndarray, norm: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Merged-adapter edges oriented by the norm growing (+1: ``a`` is the parent), 0 elsewhere.

    Weight decay acts on an adapter's factors, never on the weights it merges into, so
    ``||W + BA||`` grows (on 11 of 12 merged-LoRA edges of the realistic tuning zoos),
    while the spectrum-based default can move either way under a rank-8 spike. The edge
    abstains (0: the family's witness decides) when the change is within chance: a step d
    of RMS ``step`` (the edge's distance) in a random direction moves the norm by

        ||W + d|| - ||W|| ~ <W / ||W||, d> ~ N(0, RMS(d)^2),

    so ``|norm[a] - norm[b]| < step`` is no evidence of growth either way.
    """
    out = np.where(norm[a] < norm[b], 1, np.where(norm[a] > norm[b], -1, 0))
    telling = np.abs(norm[a] - norm[b]) >= step
    return np.where(merged & telling & np.isfinite(norm[a]) & np.isfinite(norm[b]), out, 0)


def reroot(parent: np.ndarray, values: np.ndarray, sign: int, fixed: Callable | None = None) -> np.ndarray:
    """``parent`` re-oriented from the root whose orientation ``sign * values`` agrees with most.

    MoTHer prices the witness edge by edge, so one noisy value turns one edge; a family has
    one root, and choosing it by the agreement of all edges at once turns a witness that
    holds on most edges into a tree directed right on all of them. ``fixed(a, b)`` gives
    edges whose direction is known otherwise (``shape_score``).
    """
    child = np.nonzero(parent >= 0)[0]
    a, b = parent[child], child
    if len(a) == 0:
        return parent
    root = shape_score(a, b, values, sign, fixed=None if fixed is None else fixed(a, b)).root
    p, c = oriented_edges(a, b, root, len(parent), np.nonzero(parent < 0)[0])
    out = np.full(len(parent), -1)
    out[c] = p
    return out
