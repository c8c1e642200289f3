"""Model tree recovery: MoTHer (methods.md §3) with the Hub's priors (§4), sparse enough for 100k models.

Within one family the tree is the minimum spanning arborescence (Chu-Liu/Edmonds) of

    M[p, c] = D[p, c] + lambda * s * T[p, c],

D the RMS distance over square attention matrices (exact, or from sketches), T[p, c] = 1
when the edge runs against the family's direction rule, s a typical distance. Where we
depart from the paper, and why:

- Candidate parents are each child's k nearest admissible models (not newer, not
  quantized), not all n: memory O(n k), and a parent is almost always among the nearest.
- s is the mean distance from a child to its nearest candidate, which does not depend on
  k; the paper's mean over all pairs would need n^2 distances.
- The direction witness is chosen per family from the declared edges, upload times or
  the tree's shape (``direction``); a family oriented by its shape is re-rooted once as a
  whole (never from a quantized copy), and its edges pay the direction price only in
  proportion to the square of the rule's confidence.
- Two more rounds re-price every edge against the previous round's tree: the family's
  mean fine-tuning step, shrunk by as much as it could be chance, is removed from the
  distance, and an edge that turns back towards
  its parent's parent pays for the turn (``mother_tree``). Fine-tunes trained the same
  way drift together, so siblings are often closer to each other than to their parent;
  MoTHer then chains them (54% of edges right on the tuning zoo of seed 0, 96% with
  both terms).
"""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from hubtree.ops.trees.direction import (
    PRETRAINED_RULE,
    FamilyDirection,
    Rooting,
    adapter_fixed,
    family_direction,
    merged_adapter_edges,
    reroot,
    times_tell,
)
from hubtree.ops.trees.families import Clustering, cluster_block, cut_height, knn, pair_distances, shared_layer_groups
from hubtree.ops.trees.priors import (
    PAPER_RULE,
    DeclaredGraph,
    DeclaredRow,
    DirectionRule,
    Votes,
    choose_direction,
    declared_graph,
    direction_votes,
    duplicate_of,
    time_allows,
)

@dataclass
class Models:
    """The tree stage's input: one row per repo with weights, as columns (100k rows stay cheap).

    ``vectors[i]`` is ``families.distance_vector`` of the model's square attention layers:
    their sketches (the ``layer_sketches`` table) or, for small blocks, the exact entries.
    ``kurtosis`` is the excess kurtosis summed over the attention output projections
    (``layer_stats``), MoTHer's direction witness; ``norm`` the other witness, the RMS of the
    same entries the vectors stand for (``layer_stats.frobenius_norm``), exact where the
    vectors are sketches; without it, the vectors' own norm. Times are Unix seconds, nan if unknown.
    """

    ids: list[str]
    signature: list[str]
    vectors: Sequence[np.ndarray]
    kurtosis: np.ndarray
    created_at: np.ndarray
    quantized: np.ndarray
    layer_sizes: Mapping[str, Sequence[int]] = field(default_factory=dict)  # signature -> part lengths
    # The chosen layers' exact Frobenius norm (``layer_stats``), nan where unknown. A sketch
    # keeps a norm to ~1/sqrt(width), and a real fine-tune moves it by ~1e-4: only the
    # exact norm (or one from the same sampled rows) can witness the change.
    norm: np.ndarray | None = None
    # Summed entropy effective rank of the chosen layers (``layer_stats``), nan where unknown:
    # a fine-tuning update is full-rank next to a pretrained spectrum and spreads it, while
    # weight decay, a uniform scaling, leaves it be.
    rank: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.norm is None:
            self.norm = np.array([np.linalg.norm(np.asarray(v, dtype=np.float64)) for v in self.vectors])
        self.norm = np.asarray(self.norm, dtype=np.float64)
        self.kurtosis = np.asarray(self.kurtosis, dtype=np.float64)
        sketched = np.array([np.linalg.norm(np.asarray(v, dtype=np.float64)) for v in self.vectors])
        self.norm = sketched if self.norm is None else np.where(np.isfinite(self.norm), self.norm, sketched)
        self.rank = np.full(len(self.ids), np.nan) if self.rank is None else np.asarray(self.rank, dtype=np.float64)
        self.created_at = np.asarray(self.created_at, dtype=np.float64)
        self.quantized = np.asarray(self.quantized, dtype=bool)
        sizes = {len(self.ids), len(self.signature), len(self.vectors), len(self.kurtosis), len(self.created_at), len(self.quantized), len(self.norm)}
        if len(sizes) != 1:
            raise ValueError(f"Models columns differ in length: {sorted(sizes)}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("Models.ids has repeats; give each repo one row (its latest revision)")


@dataclass(frozen=True)
class TreeEdge:
    """One row of the recovered forest: ``parent`` -> ``child``, or a root when parent is None.

    ``confidence`` in [0, 1]: 1 for declared and duplicate edges; for inferred edges the
    margin ``(M2 - M1) / s`` by which the chosen parent's cost beats the best other
    candidate's, in units of the family's typical step s, capped at 1: how far the
    distances would have to move to change the answer (sketches err by ~3% of a distance,
    so margins of that order are coin flips). In a re-rooted family it is also at most the
    family rule's confidence times the posterior probability that the edge points the
    right way (``direction.root_posterior``). nan for roots, which are not edges.
    """

    child: str
    parent: str | None
    family: int  # -1: a node without weights that no declared edge ties to a family
    source: str  # "declared" | "weights" | "duplicate" | "root"
    confidence: float
    kurtosis_parent: float = float("nan")
    kurtosis_child: float = float("nan")
    distance: float = float("nan")  # what MoTHer priced an inferred edge at (nan for declared, duplicate and root rows)


@dataclass(frozen=True)
class FamilyReport:
    """How one family's tree was made: its size, direction rule and evidence."""

    family: int
    signature: str
    size: int
    rule: DirectionRule
    timed: float  # fraction of members with a known upload time
    placeholders: tuple[str, ...] = ()  # missing declared parents placed at their children's mean
    confidence: float = float("nan")  # in the direction, [0, 1]: the rule's (``direction.FamilyDirection``), times P(root) where re-rooted
    why: str = ""  # the evidence that chose the rule, and any conflict


@dataclass
class Trees:
    edges: list[TreeEdge]
    families: list[FamilyReport]
    declared: DeclaredGraph
    clusterings: dict[str, Clustering]  # signature -> how its block was cut


# ----------------------------------------------------------------------------- one family


@dataclass(frozen=True)
class MotherOptions:
    """MoTHer's knobs, as ``recover_trees`` passes them to every family's ``mother_tree``."""

    k: int = 10  # candidate parents per child (the k nearest admissible models)
    lam: float = 0.5  # MoTHer's lambda: the price of an edge against the direction rule, in typical steps
    beta: float = 0.5  # the price of an edge turning back towards its parent's parent, in typical steps
    rounds: int = 3  # at most this many trees; it stops early once the tree repeats
    drift: bool = True  # later rounds remove the family's mean fine-tuning step (False: MoTHer's distances)
    enter: float = 1.0  # the price of an edge into a group of members sharing layers from outside it, in typical steps


@dataclass
class Family:
    """One family as ``mother_tree`` sees it: m members (placeholders last), one array entry each.

    Args:
        x: (m, d) distance vectors of the family's members.
        seniority: the direction witness times the rule's sign: parents should have more
            (nan: no opinion, e.g. a placeholder).
        created_at: upload times (nan unknown); a parent is never newer than its child.
        can_parent: False for quantized models (Hub prior: they are leaves).
        steps: whether a member, as a child, is a fine-tuning step (False for quantized
            copies and placeholders): only steps are corrected for and estimate delta.
        declared_parent: the index of a member's declared parent inside the family, -1 for none.
        declared_elsewhere: True where a member's declared parent is outside the family (or
            it is a placeholder): it is a root here, at no cost.
        placeholders: members without weights (missing declared parents), placed at their
            children's mean: given, then re-placed at the mean of their children in each
            tree, and seen from each of those children as the mean of the others.
        groups: per member, its group of members sharing some layer bit-for-bit, -1 for
            none (``families.shared_layer_groups``).
    """

    x: np.ndarray
    seniority: np.ndarray
    created_at: np.ndarray
    can_parent: np.ndarray
    steps: np.ndarray
    declared_parent: np.ndarray | None = None
    declared_elsewhere: np.ndarray | None = None
    placeholders: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = len(self.x)
        if self.groups is None:
            self.groups = np.full(m, -1)
        if self.declared_parent is None:
            self.declared_parent = np.full(m, -1, dtype=np.int64)
        if self.declared_elsewhere is None:
            self.declared_elsewhere = np.zeros(m, dtype=bool)
        if self.placeholders is None:
            self.placeholders = np.zeros(m, dtype=bool)

    @property
    def free(self) -> np.ndarray:
        """Members whose parent comes from the weights: no declared parent, inside or out."""
        return (self.declared_parent < 0) & ~self.declared_elsewhere


@dataclass(frozen=True)
class FamilyTree:
    """``mother_tree``'s answer, per member: its parent, how sure, and the distance the edge was priced at."""

    parent: np.ndarray  # (m,) index within the family, -1 for roots
    confidence: np.ndarray  # (m,) nan for roots
    distance: np.ndarray  # (m,) ||x_c - delta - x_p|| of the chosen edge in the last round; nan for roots


def mother_tree(family: Family, options: MotherOptions = MotherOptions()) -> FamilyTree:
    """The tree of one family: the min arborescence of, per candidate edge p -> c,

        M[p, c] = ||x_c - delta - x_p|| + s * (lam * T[p, c] + beta * cos angle(parent(p), p, c) + enter * E[p, c]).

    The first round is MoTHer (delta = 0, no angle term). Each later round takes the
    previous round's tree and (1) removes the family's mean fine-tuning step ``delta``
    from every step (siblings trained the same way share it, so they can be closer to each
    other than to their parent; without it the parent is the nearest again) and (2) scores
    the turn an edge makes at p: a fine-tune moves on from its parent, so the path
    parent(p) -> p -> c runs straight or bends (cos <= 0), while a sibling posing as a
    parent sits back towards the common parent (cos > 0). ``s`` is the mean candidate cost
    (MoTHer's mean(D)); T[p, c] = 1 when c looks more senior than p; E[p, c] = 1 when the edge
    enters a group of members sharing layers from outside (``_enters``). A member's declared
    parent inside the family is its parent at no cost; members declared elsewhere are roots.
    It stops after ``options.rounds`` trees, or once the tree repeats.
    """
    fam, opt = family, options
    x, m = fam.x, len(family.x)
    drift, parent = np.zeros(x.shape[1]), None
    for _ in range(opt.rounds):
        queries = x - fam.steps[:, None] * drift
        p, c, d = _candidates(fam, x, queries, opt.k)
        if parent is not None:
            d = _leave_one_out(x, queries, parent, fam.placeholders, p, c, d)
        if len(p) == 0:
            return FamilyTree(np.full(m, -1), np.full(m, np.nan), np.full(m, np.nan))
        s = _typical_step(c, d, m)
        cost = d + opt.lam * s * (fam.seniority[c] > fam.seniority[p]) + opt.enter * s * _enters(fam, p, c)
        if parent is not None:
            cost += opt.beta * s * _cos_angle(x, np.where(parent[p] >= 0, parent[p], p), p, c)
        cost[fam.declared_parent[c] == p] = 0.0
        edge = _tree(m, p, c, cost, fam)
        previous, parent = parent, _parents(p, edge)
        if previous is not None and np.array_equal(previous, parent):
            break
        if fam.placeholders.any():
            x = _recentre(x, parent, np.nonzero(fam.placeholders)[0])
        drift = _mean_step(x, parent, fam.steps) if opt.drift else drift
    distance = np.where(edge >= 0, d[np.maximum(edge, 0)], np.nan)
    return FamilyTree(parent, _margins(m, c, cost, edge, fam.free, s), distance)


def _enters(fam: Family, p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Whether the edge p -> c enters c's group of members sharing layers from outside it.

    Such a group is one subtree of the true tree: its members descend, by adapters or
    frozen layers, from the one member whose bytes they keep, so the tree enters it once.
    A member made by an adapter is about as far from its parent as from any model near
    it, because the adapter's own update dominates; paying per entry hangs it inside.
    A placeholder (a missing parent) may be the group's maker: entering from it is free.
    """
    g = fam.groups
    return (g[c] >= 0) & (g[p] != g[c]) & ~fam.placeholders[p]


def _leave_one_out(
    x: np.ndarray, queries: np.ndarray, parent: np.ndarray, placeholders: np.ndarray,
    p: np.ndarray, c: np.ndarray, d: np.ndarray,
) -> np.ndarray:
    """Distances to a placeholder from its own children, measured to the mean of its *other* children.

    A placeholder sits at its children's mean, so each child pulls it closer to itself; a
    wrong child (a grandchild that tied with its true parent in the first round) would keep
    itself there. Without its own pull, such a child is a full step further away.
    """
    n_children = np.bincount(parent[parent >= 0], minlength=len(x))
    own = np.nonzero(placeholders[p] & (parent[c] == p) & (n_children[p] > 1))[0]
    if len(own) == 0:
        return d
    g, ch, n = p[own], c[own], n_children[p[own]][:, None]
    others = (n * x[g].astype(np.float64) - x[ch]) / (n - 1)
    d = d.copy()
    d[own] = np.linalg.norm(queries[ch] - others, axis=1)
    return d


def _recentre(x: np.ndarray, parent: np.ndarray, movable: np.ndarray) -> np.ndarray:
    """``x`` with each ``movable`` row at the mean of its children in ``parent`` (kept where it has none)."""
    x = x.copy()
    for g in movable:
        children = np.nonzero(parent == g)[0]
        if len(children):
            x[g] = x[children].mean(axis=0)
    return x


def _parents(p: np.ndarray, edge: np.ndarray) -> np.ndarray:
    return np.where(edge >= 0, p[np.maximum(edge, 0)], -1)


def _typical_step(c: np.ndarray, d: np.ndarray, m: int) -> float:
    """Mean distance from a child to its nearest candidate: the scale lam and beta multiply.

    MoTHer scales by mean(D) over all pairs; the nearest candidate is the same whatever k
    is, so the sparse and the dense search price edges alike.
    """
    nearest = np.full(m, np.inf)
    np.minimum.at(nearest, c, d)
    return float(nearest[np.isfinite(nearest)].mean())


def _mean_step(x: np.ndarray, parent: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The family's shared fine-tuning step: the mean of ``x_c - x_p`` over the tree's step
    children, shrunk towards zero by as much as it could be chance (positive-part James-Stein):

        delta = max(0, 1 - (tr(S) / n) / ||mean||^2) * mean,

    tr(S) / n the variance of the mean of n steps. Siblings trained the same way share a
    drift that stands far above that noise (the toy zoo); fine-tunes made by different
    recipes do not, and removing the mean of independent steps would only add noise.
    Edges from a placeholder are steps whose size we cannot see (it sits at its children's
    mean); they count as zero rather than not at all, so that a family whose parent is
    missing does not take its drift from the few sibling-to-sibling edges of a first guess.
    """
    children = np.nonzero((parent >= 0) & steps)[0]
    use = children[steps[parent[children]]]
    n = len(children)
    if len(use) == 0 or n < 2:
        return np.zeros(x.shape[1])
    d = np.zeros((n, x.shape[1]))
    d[: len(use)] = x[use].astype(np.float64) - x[parent[use]]
    mean = d.mean(axis=0)
    noise = float(np.square(d - mean).sum()) / (n - 1) / n
    return max(0.0, 1.0 - noise / max(float(mean @ mean), 1e-300)) * mean


def _candidates(fam: Family, x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, child, distance) of every candidate edge: kNN among admissible parents, plus declared edges.

    Edges from placeholders come first, so that ``min_arborescence`` (which breaks equal
    costs by edge order) gives a tie between a placeholder and the member it sits on to
    the placeholder: its place is a guess the next round refines (see ``_placeholders``).
    """
    free = fam.free

    def allowed(rows: np.ndarray) -> np.ndarray:
        return fam.can_parent[None, :] & time_allows(fam.created_at[None, :], fam.created_at[rows, None]) & free[rows, None]

    idx, dist = knn(x, k, queries, allowed)
    has = idx >= 0
    child = np.repeat(np.arange(len(x)), idx.shape[1]).reshape(idx.shape)[has]
    tied = np.nonzero(fam.declared_parent >= 0)[0]
    p = np.concatenate([idx[has], fam.declared_parent[tied]])
    c = np.concatenate([child, tied])
    d = np.concatenate([dist[has], pair_distances(queries, x, tied, fam.declared_parent[tied])])
    first = np.argsort(~fam.placeholders[p], kind="stable")
    return p[first], c[first], d[first]


def _tree(m: int, p: np.ndarray, c: np.ndarray, cost: np.ndarray, fam: Family) -> np.ndarray:
    """Index of each member's incoming candidate edge in the min arborescence, -1 for roots.

    A virtual root m reaches every member without a declared parent inside: free members
    at a cost above any tree (so there are as few roots as the candidate graph allows),
    members declared elsewhere at 0.
    """
    rooted = np.nonzero(fam.declared_parent < 0)[0]
    big = float(np.abs(cost).sum()) + 1.0
    src = np.concatenate([p, np.full(len(rooted), m)])
    dst = np.concatenate([c, rooted])
    w = np.concatenate([cost, np.where(fam.declared_elsewhere[rooted], 0.0, big)])
    edge = min_arborescence(m + 1, src, dst, w, root=m)[:m]
    return np.where(edge < len(p), edge, -1)


def _cos_angle(x: np.ndarray, r: np.ndarray, p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """cos of the angle at p between r and c, from the three distances (0 where p is r)."""
    a, b, e = pair_distances(x, x, p, r), pair_distances(x, x, p, c), pair_distances(x, x, r, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * a + b * b - e * e) / (2.0 * a * b)
    return np.where((r == p) | ~np.isfinite(cos), 0.0, cos)


def _margins(m: int, c: np.ndarray, cost: np.ndarray, edge: np.ndarray, free: np.ndarray, scale: float) -> np.ndarray:
    """How far each chosen parent beats the child's best other candidate, in typical distances, capped at 1."""
    conf = np.full(m, np.nan)
    chosen = np.nonzero(edge >= 0)[0]
    conf[chosen] = 1.0
    best_other = np.full(m, np.inf)
    others = np.ones(len(c), dtype=bool)
    others[edge[chosen]] = False
    np.minimum.at(best_other, c[others], cost[others])
    inferred = chosen[free[chosen] & np.isfinite(best_other[chosen])]
    conf[inferred] = np.clip((best_other[inferred] - cost[edge[inferred]]) / scale, 0.0, 1.0)
    return conf


# ----------------------------------------------------------------------------- the whole forest


def recover_trees(
    models: Models,
    declared: Iterable[DeclaredRow] = (),
    k: int = 10,
    lam: float = 0.5,
    beta: float = 0.5,
    rounds: int = 3,
    all_pairs_max: int = 2000,
    default_rule: DirectionRule = PRETRAINED_RULE,
    drift: bool = True,
    enter: float = 1.0,
) -> Trees:
    """Every model's family and parent: declared edges as given, weights and priors for the rest.

    Steps: clean the declared graph; per architecture block merge exact duplicates and cut
    the rest into families; give each family its direction rule (its own declared edges,
    shrunk towards all declared edges in the lake; with none anywhere ``default_rule``);
    place missing declared parents at their children's mean; then ``mother_tree`` per family.

    Args:
        models: every repo with weights (see ``Models``).
        declared: the lake's ``declared_edges`` rows, as they are (cleaned here).
        k, lam, beta, rounds, drift, enter: ``MotherOptions``; all_pairs_max: ``families.cluster_block``'s.
        default_rule: the direction rule when no declared edge joins two models of a family.
    """
    graph = declared_graph(declared, known=models.ids, created_at=dict(zip(models.ids, models.created_at.tolist())))
    parents = graph.parents()
    rep, family, clusterings, signature_of = _families(models, k, all_pairs_max)
    index = {m: i for i, m in enumerate(models.ids)}
    witnesses = {"kurtosis": models.kurtosis, "norm": models.norm, "rank": models.rank}
    unique = np.nonzero(rep == np.arange(len(rep)))[0]
    members_of = _group(family[unique], unique)
    rules = _direction_rules(models, parents, index, rep, family, witnesses, members_of, default_rule, k)
    if not times_tell([r.times for r in rules]):
        models, rules = _untimed(models, rules, lambda m: _direction_rules(m, parents, index, rep, family, witnesses, members_of, default_rule, k))
    ghosts_of = _placeholders(graph, parents, index, family)
    options = MotherOptions(k, lam, beta, rounds, drift, enter)
    edges, reports = [], []
    for f, direction in enumerate(rules):
        members, rule = members_of[f], direction.rule
        fam = _family_input(models, members, rule, witnesses, ghosts_of.get(f, []), parents, rep, index)
        rerooted = rule.source in ("shape", "shapes", "default") and fam.family.free.all()
        tree = mother_tree(fam.family, _pricing(options, direction) if rerooted else options)
        if rerooted:
            sizes, norm = models.layer_sizes.get(signature_of[f]), models.norm[members]
            fixed = partial(_adapter_edges, x=fam.family.x, sizes=sizes, norm=norm)
            noise = partial(_steps, x=fam.family.x) if rule.witness == "norm" else None
            tree, rooting = _rerooted(tree, fam.family, witnesses[rule.witness][members], rule.sign, direction.confidence, fixed, noise)
            direction = replace(direction, confidence=direction.confidence * rooting.root, why=direction.why + _rooting_note(rooting))
        edges += _inferred_edges(f, fam, tree)
        timed = float(np.isfinite(models.created_at[members]).mean())
        reports.append(FamilyReport(
            f, signature_of[f], len(members), rule, timed, tuple(fam.ids[len(members) :]), direction.confidence, direction.why,
        ))  # fmt: skip
    placed = {g: r.family for r in reports for g in r.placeholders}
    edges += _declared_and_duplicate_edges(models, graph, parents, rep, family, placed, edges)
    return Trees(edges, reports, graph, clusterings)


def _direction_rules(
    models: Models, parents: Mapping[str, list[str]], index: Mapping[str, int], rep: np.ndarray, family: np.ndarray,
    witnesses: Mapping[str, np.ndarray], members_of: Mapping[int, np.ndarray], default_rule: DirectionRule, k: int,
) -> list[FamilyDirection]:
    """Each family's direction rule (``direction.family_direction``): its own declared edges
    between distinct models, shrunk towards all such edges in the lake, and its upload
    times; else its tree's shape; else the rule of the lake's declared edges or ``default_rule``."""
    evidence = np.array([
        (rep[index[p]], rep[index[c]])
        for c, ps in parents.items() for p in ps
        if c in index and p in index and family[index[c]] == family[index[p]] and rep[index[c]] != rep[index[p]]
    ], dtype=np.int64).reshape(-1, 2)  # fmt: skip
    lake = _votes(evidence, witnesses)
    lake_rule = choose_direction(lake, "lake")
    evidence_of = _group(family[evidence[:, 1]], evidence)

    def direction(f: int, members: np.ndarray, prior: DirectionRule) -> FamilyDirection:
        return family_direction(
            _rows(models.vectors, members), {w: v[members] for w, v in witnesses.items()}, models.created_at[members],
            _votes(evidence_of.get(f, evidence[:0]), witnesses), lake, lake_rule, prior, k,
        )  # fmt: skip

    rules = {f: direction(f, members, default_rule) for f, members in sorted(members_of.items())}
    prior = None if lake_rule else _shape_consensus(list(rules.values()))
    if prior is not None:
        for f, members in members_of.items():
            if rules[f].rule.source == "default" or rules[f].conflict == "default":
                rules[f] = direction(f, members, prior)
    return [rules[f] for f in sorted(rules)]


def _untimed(models: Models, rules: Sequence[FamilyDirection], direction_rules) -> tuple[Models, list[FamilyDirection]]:
    """``models`` without upload times and the families' rules made again without them (``direction.times_tell``)."""
    extra, chance = sum(r.times.extra_roots for r in rules), sum(r.times.by_chance for r in rules)
    untimed = replace(models, created_at=np.full(len(models.ids), np.nan))
    note = f"; upload times ignored: {extra:.0f} members older than all their tree neighbours beyond one per tree, chance {chance:.1f}"
    return untimed, [replace(r, why=r.why + note) for r in direction_rules(untimed)]


def _shape_consensus(directions: Sequence[FamilyDirection]) -> DirectionRule | None:
    """The rule that the families whose tree shape told their rule without conflict agree on,
    weighted by confidence; None without such families.

    In a hub without declared edges it is the prior for families whose shape does not
    tell (a chain, a pair) before the default: models of one hub tend to be trained alike,
    and a rule read off other families of that hub is evidence, a default is not.
    """
    votes = Counter()
    for d in directions:
        if d.rule.source == "shape" and not d.conflict:
            votes[d.rule.witness, d.rule.sign] += d.confidence
    if not votes:
        return None
    (witness, sign), _ = votes.most_common(1)[0]
    return DirectionRule("shapes", witness, sign)


def _pricing(options: MotherOptions, direction: FamilyDirection) -> MotherOptions:
    """MoTHer's price of an edge against the rule, scaled by the square of how sure the family's rule is:

        lam' = lam * confidence^2.

    A rerooted family is oriented once, as a whole, afterwards; pricing each edge by a rule
    that may be the wrong one would only bend the tree's shape towards it. A clear rule
    (toy zoos, ~1) prices as MoTHer does; a guess (0.1-0.4 on the realistic zoos) barely
    bends the tree. The square was chosen on the tuning zoos (realistic 0, 1, 14; toy 0, 1):
    confidence alone left long seed 14 at 78.9% directed against 89.5%, and tied elsewhere.
    """
    return replace(options, lam=options.lam * direction.confidence**2)


def _adapter_edges(a: np.ndarray, b: np.ndarray, x: np.ndarray, sizes, norm: np.ndarray) -> np.ndarray:
    """Tree edges (a, b) that merge an adapter, oriented by the norm; 0 for the others (``direction.adapter_fixed``).

    An edge's RMS step is its distance: ``families.distance_vector`` makes ``||x_a - x_b||``
    the RMS over the layers' entries (for layers of equal size, as a block's attention matrices are).
    """
    return adapter_fixed(a, b, merged_adapter_edges(x, a, b, sizes), norm, _steps(a, b, x))


def _steps(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each edge's RMS step, the spread of the norm's change under a step in a random direction (``direction.adapter_fixed``)."""
    return np.linalg.norm(x[a].astype(np.float64) - x[b], axis=1)


def _rerooted(
    tree: FamilyTree, fam: Family, values: np.ndarray, sign: int, confidence: float, fixed=None, noise=None
) -> tuple[FamilyTree, Rooting]:
    """The tree re-oriented from the root its rule's witness agrees with most (``direction.reroot``),
    never from a member that cannot parent (a quantized copy stays a leaf).

    An edge is right only if the rule is and the root lies on its parent's side, so its
    confidence is at most ``confidence * side`` (``direction.root_posterior``): flipped
    edges take that and keep the distance of the pair, the others keep their margin,
    capped at it.
    """
    rooting = reroot(tree.parent, values, sign, fixed, noise, fam.can_parent)
    x = fam.x
    parent, direction = rooting.parent, confidence * rooting.side
    same = parent == tree.parent
    has = parent >= 0
    distance = np.where(same, tree.distance, np.nan)
    distance[has & ~same] = np.linalg.norm(x[has & ~same] - x[parent[has & ~same]], axis=1)
    conf = np.where(same, np.minimum(tree.confidence, direction), np.where(has, direction, np.nan))
    return FamilyTree(parent, conf, distance), rooting


def _rooting_note(rooting: Rooting) -> str:
    """What the family's votes say of its root, for ``families.direction_rule``."""
    note = f"; root: {rooting.root:.0%} likely by the edges' votes"
    if rooting.contradicted:
        note += f", {rooting.contradicted} merged adapter's norm vote{'s' if rooting.contradicted > 1 else ''} against the witness"
    return note


def _group(keys: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """``values`` split by ``keys`` (one pass, so per-family loops stay O(n) in total)."""
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(np.diff(keys[order])) + 1
    return {int(keys[order[g[0]]]): values[order[g]] for g in np.split(np.arange(len(keys)), cuts) if len(g)}


def _placeholders(
    graph: DeclaredGraph, parents: dict[str, list[str]], index: dict[str, int], family: np.ndarray
) -> dict[int, list[tuple[str, np.ndarray]]]:
    """Per family, the missing declared parents with a declared child in it, and those children.

    Such a parent (gated, deleted, never uploaded) starts at its declared children's mean and
    ``mother_tree`` moves it to the mean of all its children after each round: for fine-tunes
    with independent steps that is closer to it than any child is, so its undeclared children
    find it. (With one declared child it starts on that child; its siblings, equally near,
    attach to the placeholder, which carries no direction penalty, and pull it to the centre.)
    """
    children: dict[tuple[int, str], list[int]] = {}
    for child, ps in parents.items():
        for p in ps:
            if p in graph.missing and child in index:
                children.setdefault((int(family[index[child]]), p), []).append(index[child])
    out: dict[int, list[tuple[str, np.ndarray]]] = {}
    for (f, p), cs in sorted(children.items()):
        out.setdefault(f, []).append((p, np.array(cs)))
    return out


def _families(models: Models, k: int, all_pairs_max: int) -> tuple[np.ndarray, np.ndarray, dict[str, Clustering], list[str]]:
    """Duplicate representatives, global family ids (duplicates share their rep's), block cuts."""
    n = len(models.ids)
    rep, family = np.arange(n), np.full(n, -1)
    clusterings, signature_of = {}, []
    blocks: dict[str, list[int]] = {}
    for i, sig in enumerate(models.signature):
        blocks.setdefault(sig, []).append(i)
    for sig in sorted(blocks):
        members = np.array(blocks[sig])
        x = _rows(models.vectors, members)
        rep[members] = members[duplicate_of(x, models.created_at[members])]
        unique = rep[members] == members
        clusterings[sig] = cut = cluster_block(x[unique], models.layer_sizes.get(sig), k, all_pairs_max)
        family[members[unique]] = len(signature_of) + cut.labels
        signature_of += [sig] * (int(cut.labels.max()) + 1)
    family = family[rep]
    return rep, family, clusterings, signature_of


def _votes(evidence: np.ndarray, witnesses: Mapping[str, np.ndarray]) -> Votes:
    p, c = evidence[:, 0], evidence[:, 1]
    return direction_votes({w: v[p] for w, v in witnesses.items()}, {w: v[c] for w, v in witnesses.items()})


@dataclass(frozen=True)
class _FamilyInput:
    ids: list[str]  # members, then placeholders
    kurtosis: np.ndarray
    family: Family


def _family_input(models, members, rule, witnesses, ghosts, parents, rep, index) -> _FamilyInput:
    """One family's arrays: its members, then its placeholders (missing declared parents)."""
    ids = [models.ids[i] for i in members] + [g for g, _ in ghosts]
    x = _rows(models.vectors, members)
    if ghosts:
        x = np.concatenate([x, np.stack([_rows(models.vectors, cs).mean(axis=0) for _, cs in ghosts])])
    local = {repo: j for j, repo in enumerate(ids)}
    declared_parent = np.full(len(ids), -1, dtype=np.int64)
    elsewhere = np.zeros(len(ids), dtype=bool)
    for j, repo in enumerate(ids):
        declared = [local.get(models.ids[rep[index[p]]] if p in index else p) for p in parents.get(repo, [])]
        inside = [q for q in declared if q is not None and q != j]
        if inside:
            declared_parent[j] = min(inside, key=lambda q: float(np.linalg.norm(x[q] - x[j])))
        elif declared or j >= len(members):
            elsewhere[j] = True  # a placeholder has no weights to place it by
    pad = np.full(len(ghosts), np.nan)
    family = Family(
        x, np.concatenate([rule.sign * witnesses[rule.witness][members], pad]), np.concatenate([models.created_at[members], pad]),
        np.concatenate([~models.quantized[members], np.ones(len(ghosts), dtype=bool)]),
        np.concatenate([~models.quantized[members], np.zeros(len(ghosts), dtype=bool)]),
        declared_parent, elsewhere, np.arange(len(ids)) >= len(members),
        np.concatenate([shared_layer_groups(x[: len(members)], models.layer_sizes.get(models.signature[members[0]])), np.full(len(ghosts), -1)]),
    )  # fmt: skip
    return _FamilyInput(ids, np.concatenate([models.kurtosis[members], pad]), family)


def _inferred_edges(f: int, fam: _FamilyInput, tree: FamilyTree) -> list[TreeEdge]:
    """Rows of the members whose parent came from weights, and of roots; declared rows come later."""
    out = []
    for j in np.nonzero(fam.family.free)[0]:
        p, kc = int(tree.parent[j]), float(fam.kurtosis[j])
        if p < 0:
            out.append(TreeEdge(fam.ids[j], None, f, "root", float("nan"), float("nan"), kc))
        else:
            out.append(TreeEdge(fam.ids[j], fam.ids[p], f, "weights", float(tree.confidence[j]), float(fam.kurtosis[p]), kc,
                                float(tree.distance[j])))
    return out


def _declared_and_duplicate_edges(models, graph, parents, rep, family, placed: Mapping[str, int], inferred) -> list[TreeEdge]:
    """Declared rows as given, duplicates under their representative, roots for the remaining nodes."""
    family_of = dict(zip(models.ids, family.tolist())) | dict(placed)
    _spread_families(family_of, graph.edges)
    kurtosis = dict(zip(models.ids, models.kurtosis.tolist()))
    nan = float("nan")
    out = [
        TreeEdge(r.repo_id, r.parent_repo_id, family_of.get(r.repo_id, -1), "declared", 1.0,
                 kurtosis.get(r.parent_repo_id, nan), kurtosis.get(r.repo_id, nan))
        for r in graph.edges
    ]  # fmt: skip
    for i in np.nonzero(rep != np.arange(len(rep)))[0]:
        child, parent = models.ids[i], models.ids[rep[i]]
        if child not in parents:
            out.append(TreeEdge(child, parent, int(family[i]), "duplicate", 1.0, kurtosis[parent], kurtosis[child]))
    placed_rows = {e.child for e in inferred} | {e.child for e in out}
    for node in dict.fromkeys(r.parent_repo_id for r in graph.edges):
        if node not in placed_rows:
            out.append(TreeEdge(node, None, family_of.get(node, -1), "root", nan, nan, kurtosis.get(node, nan)))
    return out


def _spread_families(family_of: dict[str, int], edges: Sequence[DeclaredRow]) -> None:
    """Give nodes without weights the family of a declared neighbour (parent first), in place."""
    changed = True
    while changed:
        changed = False
        for r in edges:
            fc, fp = family_of.get(r.repo_id, -1), family_of.get(r.parent_repo_id, -1)
            if fc < 0 <= fp:
                family_of[r.repo_id], changed = fp, True
            elif fp < 0 <= fc:
                family_of[r.parent_repo_id], changed = fc, True


def _rows(vectors: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the vectors as one float32 array (a 2-D array is sliced, a list stacked)."""
    if isinstance(vectors, np.ndarray):
        return np.ascontiguousarray(vectors[idx], dtype=np.float32)
    return np.stack([np.asarray(vectors[i], dtype=np.float32) for i in idx])


# ----------------------------------------------------------------------------- baseline and scores


def plain_mother(
    ids: Sequence[str], signature: Sequence[str], layers: Sequence[Sequence[np.ndarray]], kurtosis: np.ndarray, lam: float = 0.3
) -> list[TreeEdge]:
    """MoTHer as published, the benchmark's baseline: no priors, no sparsity, no time.

    Per architecture block: ``D[i, j] = mean_l RMS(W_il - W_jl)`` over the square attention
    matrices; Ward clusters (cut where ``families.cut_height`` says: the paper fixes no
    rule); per cluster ``M = D + lam * mean(D) * T`` with ``T[p, c] = 1 if kurt(c) > kurt(p)``
    (fine-tuning lowers kurtosis), diagonal infinite, and networkx's Chu-Liu/Edmonds.
    """
    from scipy.cluster.hierarchy import fcluster, linkage  # the baseline's alone: hubtree's trees start without them
    from scipy.spatial.distance import squareform

    kurtosis = np.asarray(kurtosis, dtype=np.float64)
    edges, next_family = [], 0
    for sig in sorted(set(signature)):
        members = np.array([i for i, s in enumerate(signature) if s == sig])
        d = np.mean([_pairwise_rms([layers[i][l] for i in members]) for l in range(len(layers[members[0]]))], axis=0)
        labels = np.zeros(len(members), dtype=np.int64)
        if len(members) > 1:
            tree = linkage(squareform(d, checks=False), method="ward")
            scale = float(np.median([np.mean([np.sqrt(np.mean(np.square(w, dtype=np.float64))) for w in layers[i]]) for i in members]))
            labels = fcluster(tree, cut_height(tree[:, 2], floor=0.5 * scale), criterion="distance") - 1
        for f in range(int(labels.max()) + 1):
            group = members[labels == f]
            parent = _dense_mother(d[np.ix_(labels == f, labels == f)], kurtosis[group], lam)
            for i, p in zip(group, parent):
                if p < 0:
                    edges.append(TreeEdge(ids[i], None, next_family + f, "root", np.nan, np.nan, kurtosis[i]))
                else:
                    edges.append(TreeEdge(ids[i], ids[group[p]], next_family + f, "weights", np.nan, kurtosis[group[p]], kurtosis[i]))
        next_family += int(labels.max()) + 1
    return edges


def _dense_mother(d: np.ndarray, kurtosis: np.ndarray, lam: float) -> np.ndarray:
    """Parent index per member (-1 root) of the paper's dense arborescence, via networkx."""
    n = len(d)
    if n == 1:
        return np.array([-1])
    off = ~np.eye(n, dtype=bool)
    seniority = PAPER_RULE.sign * kurtosis  # T[p, c] = 1 where the child looks more senior than the parent
    cost = d + lam * d[off].mean() * (seniority[None, :] > seniority[:, None])
    import networkx as nx  # the baseline's alone

    graph = nx.DiGraph()
    graph.add_weighted_edges_from((p, c, float(cost[p, c])) for p in range(n) for c in range(n) if p != c)
    parent = np.full(n, -1)
    for p, c in nx.minimum_spanning_arborescence(graph).edges:
        parent[c] = p
    return parent


def _pairwise_rms(mats: Sequence[np.ndarray]) -> np.ndarray:
    """RMS(W_i - W_j) for every pair of same-shaped matrices (float64 Gram trick)."""
    x = np.stack([np.asarray(m, dtype=np.float64).ravel() for m in mats])
    sq = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2 / x.shape[1])


@dataclass(frozen=True)
class TrueTree:
    """Ground truth to score against: each node's true parent (None for roots) and family."""

    parent: Mapping[str, str | None]
    family: Mapping[str, str]

    @classmethod
    def from_zoo(cls, truth) -> TrueTree:
        """From ``hubtree.ops.zoo.ZooTruth`` (or anything with ``models[id].parent/.family``)."""
        return cls({m: t.parent for m, t in truth.models.items()}, {m: t.family for m, t in truth.models.items()})


@dataclass(frozen=True)
class TreeScores:
    directed_acc: float  # true edges found with the right direction
    undirected_acc: float  # ... with either direction
    family_purity: float  # share of nodes whose predicted family's majority is their true family
    families_split: int  # true families spread over more than one predicted family
    n_edges: int  # true edges counted


def evaluate(edges: Sequence[TreeEdge], truth: TrueTree, exclude_declared: bool = True) -> TreeScores:
    """MoTHer's edge accuracy over the true edges a method had to find.

    A true edge parent -> child counts when both ends are nodes of the prediction (a parent
    that never reached the hub cannot be found) and, with ``exclude_declared``, when the
    child's parent was not given as a declared edge.
    """
    predicted: dict[str, set[str]] = {}
    given: set[str] = set()
    family: dict[str, int] = {}
    for e in edges:
        predicted.setdefault(e.child, set())
        family.setdefault(e.child, e.family)
        if e.parent is not None:
            predicted[e.child].add(e.parent)
        if e.source == "declared":
            given.add(e.child)
    counted = [
        (p, c) for c, p in truth.parent.items()
        if p is not None and c in predicted and p in predicted and not (exclude_declared and c in given)
    ]  # fmt: skip
    directed = sum(p in predicted[c] for p, c in counted)
    undirected = sum(p in predicted[c] or c in predicted[p] for p, c in counted)
    n = max(len(counted), 1)
    purity, split = _family_scores({m: f for m, f in family.items() if f >= 0 and m in truth.family}, truth.family)
    return TreeScores(directed / n, undirected / n, purity, split, len(counted))


def _family_scores(predicted: Mapping[str, int], true: Mapping[str, str]) -> tuple[float, int]:
    by_predicted: dict[int, Counter] = {}
    by_true: dict[str, set[int]] = {}
    for m, f in predicted.items():
        by_predicted.setdefault(f, Counter())[true[m]] += 1
        by_true.setdefault(true[m], set()).add(f)
    majority = sum(c.most_common(1)[0][1] for c in by_predicted.values())
    return majority / max(len(predicted), 1), sum(len(fs) > 1 for fs in by_true.values())


# ----------------------------------------------------------------------------- Chu-Liu/Edmonds


def min_arborescence(n: int, src: np.ndarray, dst: np.ndarray, cost: np.ndarray, root: int) -> np.ndarray:
    """Index of each node's incoming edge in a minimum spanning arborescence from ``root`` (-1 there).

    Chu-Liu/Edmonds in Tarjan's O(E log E) form: walk from each node along its cheapest
    incoming edge; on meeting a node of the current walk, contract the cycle into one node
    whose incoming edges are re-priced by what leaving the cycle's edge would save (a
    lazy offset per heap); finally expand the cycles newest first, each keeping all its
    edges but the one into the node where the chosen entering edge lands. networkx's
    version is far too slow past a few hundred nodes with sparse random costs.

    Raises:
        ValueError: some node cannot be reached from ``root``.
    """
    srcs, dsts = src.tolist(), dst.tolist()
    heaps: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for e, (v, w) in enumerate(zip(dsts, cost.tolist())):
        heaps[v].append((w, e))
    for h in heaps:
        heapq.heapify(h)
    offset = [0.0] * n
    sets = _RollbackSets(n)
    seen = [-1] * n
    seen[root] = root
    incoming = [-1] * n
    cycles: list[tuple[int, int, list[int]]] = []
    for start in range(n):
        u, path = start, []
        while seen[u] < 0:
            w, e = _pop_external(heaps[u], sets, srcs, u)
            offset[u] = -w  # the remaining incoming edges now cost their excess over this one
            path.append((u, e))
            seen[u] = start
            u = sets.find(srcs[e])
            if seen[u] == start:
                u = _contract(u, path, heaps, offset, sets, seen, cycles)
        for _, e in path:
            incoming[sets.find(dsts[e])] = e
    for node, mark, edges in reversed(cycles):
        sets.rollback(mark)
        entering = incoming[node]
        for e in edges:
            incoming[sets.find(dsts[e])] = e
        incoming[sets.find(dsts[entering])] = entering
    incoming[root] = -1
    return np.array(incoming, dtype=np.int64)


def _pop_external(heap, sets, srcs, u) -> tuple[float, int]:
    """Cheapest incoming edge of (contracted) node u that does not start inside u."""
    while heap:
        w, e = heapq.heappop(heap)
        if sets.find(srcs[e]) != u:
            return w, e
    raise ValueError(f"node {u} cannot be reached from the root")


def _contract(u, path, heaps, offset, sets, seen, cycles) -> int:
    """Merge the cycle ending at u on the walk into one node; return that node."""
    mark = len(sets.log)
    members, edges = [], []
    while True:
        v, e = path.pop()
        members.append(v)
        edges.append(e)
        if v == u:
            break
    big = max(members, key=lambda v: len(heaps[v]))
    heap, base = heaps[big], offset[big]
    for v in members:
        if v != big:  # smaller heaps into the largest: each edge moves O(log E) times
            for w, e in heaps[v]:
                heapq.heappush(heap, (w + offset[v] - base, e))
            heaps[v] = []
        sets.union(u, v)
    node = sets.find(u)
    heaps[node], offset[node], seen[node] = heap, base, -1
    cycles.append((node, mark, edges))
    return node


class _RollbackSets:
    """Union-find by size without path compression, so unions can be undone in reverse order."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n
        self.log: list[int] = []

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]
        self.log.append(b)

    def rollback(self, mark: int) -> None:
        while len(self.log) > mark:
            b = self.log.pop()
            self.size[self.parent[b]] -= self.size[b]
            self.parent[b] = b
