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
the norm moved by more than chance (``adapter_fixed``); a member that cannot parent (a
quantized copy) is never the root.

``FamilyDirection.confidence`` says how far the chosen rule beats the best rule of the
other sign, and is halved when the other witness, on its own, points the other way. Where
the family is re-rooted, the same votes give a posterior over its roots
(``root_posterior``): the family's confidence is the rule's times P(the chosen root), an
edge's at most the rule's times P(the root lies on its parent's side), so that votes which
disagree (an adapter's norm against the witness, a witness that fits few edges, changes
within chance) say the direction is a guess where it is one.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.special import ndtr

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
    a: np.ndarray, b: np.ndarray, values: np.ndarray, sign: int, witness: str = "", fixed: np.ndarray | None = None,
    can_root: np.ndarray | None = None,
) -> ShapeScore:
    """The root whose orientation of the tree (a, b) agrees with ``sign * values`` falling on most edges.

    ``fixed`` (per edge, optional): > 0 where ``a`` is known to be the parent, < 0 where ``b``
    is, 0 where the witness decides (``merged_adapter_edges``). ``can_root`` (per node,
    optional): False for members that parent nothing (quantized copies are leaves); a tree
    of such members alone keeps its best.
    """
    n = len(values)
    if len(a) == 0:
        return ShapeScore(witness, sign, 0, 0, 0)
    down, up, ok = _votes_of(a, b, values, sign, fixed)
    agree, trees = root_scores(a, b, n, down.astype(np.float64), up.astype(np.float64))
    total, root, biggest = 0, 0, 0
    for order in trees:
        allowed = order if can_root is None or not can_root[order].any() else order[can_root[order]]
        best = int(allowed[int(np.argmax(agree[allowed]))])
        total += int(round(agree[best]))
        if len(order) > biggest:
            root, biggest = best, len(order)
    return ShapeScore(witness, sign, total, int(ok.sum()), root)


def _votes_of(a, b, values, sign, fixed=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per edge (a, b): whether it votes a -> b, whether it votes b -> a, and whether the witness is usable on it.

    The witness ``sign * values`` falls from parent to child; a ``fixed`` edge (non-zero)
    votes its own way instead.
    """
    s = sign * np.asarray(values, dtype=np.float64)
    ok = np.isfinite(s[a]) & np.isfinite(s[b]) & (s[a] != s[b])
    fixed = np.zeros(len(a)) if fixed is None else np.asarray(fixed, dtype=np.float64)
    down = np.where(fixed != 0, fixed > 0, ok & (s[a] > s[b]))
    up = np.where(fixed != 0, fixed < 0, ok & (s[b] > s[a]))
    return down, up, ok


def root_scores(a: np.ndarray, b: np.ndarray, n: int, down: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per node v, the summed weight of the edges whose vote agrees with the tree (a, b) oriented away from v.

    An edge oriented a -> b earns ``down``, b -> a earns ``up``. Rerooting across an edge
    flips only that edge, so every root's score comes from one breadth-first pass per tree:
    ``score(v) = score(u) - w(u -> v) + w(v -> u)``. Also returns each tree's nodes, in
    breadth-first order.
    """
    adj = coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    w = {}
    for u, v, d, p in zip(a.tolist(), b.tolist(), down.tolist(), up.tolist()):
        w[u, v], w[v, u] = d, p
    score = np.full(n, np.nan)
    trees = []
    for start in range(n):
        if np.isfinite(score[start]):
            continue
        order, pred = breadth_first_order(adj, start, directed=False, return_predecessors=True)
        score[start] = sum(w[int(pred[v]), int(v)] for v in order[1:])
        for v in order[1:]:
            u = int(pred[v])
            score[v] = score[u] - w[u, int(v)] + w[int(v), u]
        trees.append(order)
    return score, trees


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
    """Merged-adapter edges oriented by the norm growing, as a signed z-score (> 0: ``a`` is the parent), 0 elsewhere.

    Weight decay acts on an adapter's factors, never on the weights it merges into, so
    ``||W + BA||`` grows (on 11 of 12 merged-LoRA edges of the realistic tuning zoos),
    while the spectrum-based default can move either way under a rank-8 spike. The edge
    abstains (0: the family's witness decides) when the change is within chance: a step d
    of RMS ``step`` (the edge's distance) in a random direction moves the norm by

        ||W + d|| - ||W|| ~ <W / ||W||, d> ~ N(0, RMS(d)^2),

    so ``z = |norm[a] - norm[b]| / step < 1`` is no evidence of growth either way.
    """
    z = np.abs(norm[a] - norm[b]) / np.maximum(step, 1e-300)
    out = np.where(norm[a] < norm[b], z, np.where(norm[a] > norm[b], -z, 0.0))
    return np.where(merged & (z >= 1.0) & np.isfinite(norm[a]) & np.isfinite(norm[b]), out, 0.0)


@dataclass(frozen=True)
class Rooting:
    """A family re-rooted by its votes (``reroot``), with how likely its orientation is."""

    parent: np.ndarray  # (m,) -1 for roots
    side: np.ndarray  # (m,) posterior probability that the root lies on the parent's side of the member's edge; nan for roots
    root: float  # posterior probability of the chosen root (the least likely, over the family's trees)
    contradicted: int  # merged-adapter edges whose norm vote goes against the family's witness


def reroot(
    parent: np.ndarray, values: np.ndarray, sign: int, fixed: Callable | None = None, noise: Callable | None = None,
    can_root: np.ndarray | None = None,
) -> Rooting:
    """``parent`` re-oriented from the root whose orientation ``sign * values`` agrees with most.

    MoTHer prices the witness edge by edge, so one noisy value turns one edge; a family has
    one root, and choosing it by the agreement of all edges at once turns a witness that
    holds on most edges into a tree directed right on all of them. ``fixed(a, b)`` gives
    edges whose direction is known otherwise (``adapter_fixed``'s signed z-scores);
    ``noise(a, b)`` the witness's change on each edge under chance, where it has a model of it;
    ``can_root`` False for members that parent nothing (``shape_score``).

    How sure that is (``root_posterior``) comes from the same votes, each weighed by how
    often its kind is right, so that votes which disagree (a merged adapter's norm against
    the witness, a witness that fits the tree on few edges) leave several roots likely.
    """
    child = np.nonzero(parent >= 0)[0]
    a, b = parent[child], child
    n = len(parent)
    if len(a) == 0:
        return Rooting(parent, np.full(n, np.nan), 1.0, 0)
    known = np.zeros(len(a)) if fixed is None else np.asarray(fixed(a, b), dtype=np.float64)
    root = shape_score(a, b, values, sign, fixed=known, can_root=can_root).root
    p, c = oriented_edges(a, b, root, n, np.nonzero(parent < 0)[0])
    out = np.full(n, -1)
    out[c] = p
    chance = np.zeros(len(a)) if noise is None else np.asarray(noise(a, b), dtype=np.float64)
    side, likely = root_posterior(a, b, values, sign, known, chance, out, can_root)
    s = sign * np.asarray(values, dtype=np.float64)
    contradicted = int(np.sum((known != 0) & np.isfinite(s[a]) & np.isfinite(s[b]) & (s[a] != s[b]) & ((known > 0) != (s[a] > s[b]))))
    return Rooting(out, side, likely, contradicted)


# How often a merged adapter's norm vote of at least one sigma is right, as a rule: on the
# realistic tuning zoos (seeds 0, 1, 14) the norm grew on 12 of 12 such edges; (12 + 1) / (12 + 2).
ADAPTER_RULE_HOLDS = 13 / 14


def root_posterior(
    a: np.ndarray, b: np.ndarray, values: np.ndarray, sign: int, known: np.ndarray, chance: np.ndarray, parent: np.ndarray,
    can_root: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Per member of the oriented tree ``parent``, P(the root lies on its parent's side of its edge),
    and P(each tree's chosen root), the least over the trees.

    Each vote is taken as right with probability q, independently, and every member is a
    root a priori alike, so

        P(root = v) ∝ prod_votes q^[it agrees from v] (1 - q)^[it disagrees from v]
                    ∝ exp(sum_votes logit(q) [it agrees from v]).

    A vote is right when its rule holds on the edge (probability pi) and the change seen
    has the sign of the change made, or neither: q = pi Phi(z) + (1 - pi)(1 - Phi(z)), where
    z is the change over its spread under chance (Phi(z) = 1 where there is no model of
    chance: rank, kurtosis). The family witness's pi is its agreement with the tree from
    the chosen root on the other edges, (right + 1) / (usable + 2); its chance spread is
    ``chance`` (0: none). A merged adapter's norm vote (``known``, a signed z) has pi =
    ``ADAPTER_RULE_HOLDS`` and counts beside the witness's vote on its edge: the root
    follows the adapter there, but where the two disagree the evidence is split. Members
    that cannot be roots (``can_root``) have no prior weight. An edge is as likely right as
    the roots on its parent's side together.
    """
    n = len(parent)
    s = sign * np.asarray(values, dtype=np.float64)
    witnessed = np.isfinite(s[a]) & np.isfinite(s[b]) & (s[a] != s[b])
    pointed = parent[b] == a  # the edge runs a -> b in the chosen tree
    right = np.where(pointed, s[a] > s[b], s[b] > s[a])[witnessed & (known == 0)]
    pi = (right.sum() + 1.0) / (len(right) + 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = np.where(chance > 0, ndtr(np.abs(s[a] - s[b]) / chance), 1.0)
    w_adapter = np.where(known != 0, _logit(_holds(ADAPTER_RULE_HOLDS, ndtr(np.abs(known)))), 0.0)
    w_witness = np.where(witnessed, _logit(_holds(pi, seen)), 0.0)
    down = w_adapter * (known > 0) + w_witness * (s[a] > s[b])
    up = w_adapter * (known < 0) + w_witness * (s[b] > s[a])
    score, trees = root_scores(a, b, n, down, up)
    if can_root is not None:
        score = np.where(can_root, score, -np.inf)
    post, likely = np.zeros(n), 1.0
    for order in trees:
        if not np.isfinite(score[order]).any():
            score[order] = 0.0
        e = np.exp(score[order] - score[order].max())
        post[order] = e / e.sum()
        likely = min(likely, float(post[order[parent[order] < 0]].sum()))
    below = post.copy()  # the posterior mass of each member's subtree
    for order in trees:
        for v in order[::-1]:
            if parent[v] >= 0:
                below[parent[v]] += below[v]
    return np.where(parent >= 0, np.clip(1.0 - below, 0.0, 1.0), np.nan), likely


def _logit(q: np.ndarray) -> np.ndarray:
    """A vote's weight: log-odds of its being right; no better than a coin carries nothing."""
    q = np.clip(q, 0.5, 1.0 - 1e-6)
    return np.log(q / (1.0 - q))


def _holds(pi: float, seen: np.ndarray) -> np.ndarray:
    """P(a vote is right): its rule holds and the sign seen is the sign made, or neither."""
    return pi * seen + (1.0 - pi) * (1.0 - seen)
