"""What the Hub says about a model tree before a weight is read (methods.md §4, Model Atlas).

Model Atlas learned these priors from 400k documented relations, and tree recovery uses
them as hard facts or near-hard constraints:

- relations declared in cards and tags are kept as given, once the graph they form is
  cleaned (real cards name themselves, repeat their tags, and can form cycles);
- exact duplicates are one node (``duplicate_of``);
- quantized models are leaves (99.4%): they never parent a weight-inferred edge;
- parents are uploaded before their children (99.7%): ``time_allows``;
- a declared parent missing from the hub stays a node, without weights (``DeclaredGraph.missing``).

The direction rule of MoTHer (which way kurtosis moves along an edge) is a prior of the
same kind, learned from the declared edges: ``choose_direction``.
"""
from __future__ import annotations

import graphlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hubtree.ops.hub.declared import normalise_repo_id

DROP_REASONS = ("invalid_id", "self_loop", "duplicate", "cycle")


@dataclass(frozen=True)
class DeclaredRow:
    """One declared relation, named as the lake's ``declared_edges`` columns."""

    repo_id: str
    parent_repo_id: str
    relation: str | None = None  # finetune | adapter | quantized | merge | None
    source: str = "card"  # card | tag | adapter_config


@dataclass(frozen=True)
class DroppedRow:
    """A declared row left out of the graph, and why (one of ``DROP_REASONS``)."""

    row: DeclaredRow
    reason: str


@dataclass
class DeclaredGraph:
    """The declared relations as a DAG: clean ids, no self-loops, one row per pair, no cycles.

    A child may keep several parents (merges list them all); ``missing`` are parents named
    by some card but absent from the models given as ``known``: nodes without weights.
    """

    edges: list[DeclaredRow]
    dropped: list[DroppedRow]
    missing: set[str] = field(default_factory=set)

    def parents(self) -> dict[str, list[str]]:
        """Child -> its declared parents, in the order the rows came."""
        out: dict[str, list[str]] = {}
        for row in self.edges:
            out.setdefault(row.repo_id, []).append(row.parent_repo_id)
        return out

    def multi_parent(self) -> dict[str, list[str]]:
        """Children that declare more than one parent (merges, or cards listing several bases)."""
        return {child: ps for child, ps in self.parents().items() if len(ps) > 1}

    def drop_counts(self) -> dict[str, int]:
        counts = Counter(d.reason for d in self.dropped)
        return {reason: counts.get(reason, 0) for reason in DROP_REASONS}


def declared_graph(
    rows: Iterable[DeclaredRow], known: Collection[str] | None = None, created_at: Mapping[str, float] | None = None
) -> DeclaredGraph:
    """Clean declared rows into a DAG, reporting every row left out and why.

    Rows are dropped for an id that is not a repo id (stray HTML, paths), a self-loop, or
    a repeat of a pair already kept (card and tag often say the same thing; the row that
    names a relation wins). Cycles are broken one edge at a time: the edge into the
    cycle's oldest member when upload times are known (a parent is older than its child,
    so that claim is the false one), else into the member with the most other parents
    (it loses least), else the lexicographically last, so the result is deterministic.
    """
    created_at = created_at or {}
    kept: dict[tuple[str, str], DeclaredRow] = {}
    dropped: list[DroppedRow] = []
    for row in rows:
        child, parent = normalise_repo_id(row.repo_id), normalise_repo_id(row.parent_repo_id)
        if child is None or parent is None:
            dropped.append(DroppedRow(row, "invalid_id"))
            continue
        clean = DeclaredRow(child, parent, row.relation, row.source)
        if child == parent:
            dropped.append(DroppedRow(row, "self_loop"))
        elif (child, parent) in kept:
            if kept[child, parent].relation is None and row.relation is not None:
                dropped.append(DroppedRow(kept[child, parent], "duplicate"))
                kept[child, parent] = clean
            else:
                dropped.append(DroppedRow(row, "duplicate"))
        else:
            kept[child, parent] = clean
    for pair in _cycle_breaking_edges(list(kept), created_at):
        dropped.append(DroppedRow(kept.pop(pair), "cycle"))
    edges = list(kept.values())
    missing = {r.parent_repo_id for r in edges} - set(known) if known is not None else set()
    return DeclaredGraph(edges, dropped, missing)


def _cycle_breaking_edges(pairs: list[tuple[str, str]], created_at: Mapping[str, float]) -> list[tuple[str, str]]:
    """(child, parent) pairs whose removal leaves the declared graph acyclic.

    Cycles live inside strongly connected components; in each, cycles are found one at a
    time (``graphlib``'s, a cycle's nodes in edge order) and each loses the edge that
    ``_drop_rank`` ranks highest.
    """
    nodes = {name: i for i, name in enumerate(sorted({name for pair in pairs for name in pair}))}
    child = np.array([nodes[c] for c, _ in pairs], dtype=np.int64)
    parent = np.array([nodes[p] for _, p in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (parent, child)), shape=(len(nodes), len(nodes)))
    component = connected_components(graph, directed=True, connection="strong")[1]
    cyclic = np.bincount(component, minlength=1) > 1
    within: dict[int, dict[str, set[str]]] = {}
    for (c, p), ci, pi in zip(pairs, child, parent):
        if component[ci] == component[pi] and cyclic[component[ci]]:
            within.setdefault(int(component[ci]), {}).setdefault(c, set()).add(p)
    n_parents = Counter(c for c, _ in pairs)
    removed = []
    for parents_of in within.values():
        while True:
            try:
                graphlib.TopologicalSorter(parents_of).prepare()
                break
            except graphlib.CycleError as err:
                cycle = err.args[1]
                p, c = max(zip(cycle, cycle[1:]), key=lambda e: _drop_rank(e[1], e[0], created_at, n_parents))
                parents_of[c].discard(p)
                removed.append((c, p))
    return removed


def _drop_rank(child: str, parent: str, created_at: Mapping[str, float], n_parents: Counter) -> tuple:
    """Larger ranks are dropped first: a known, older child; then more parents; then the last id."""
    t = created_at.get(child)
    known = t is not None and bool(np.isfinite(t))
    return (known, -t if known else 0.0, n_parents[child], child, parent)


def duplicate_of(vectors: np.ndarray, created_at: np.ndarray) -> np.ndarray:
    """Index of each row's representative among exact duplicates: the oldest copy (itself if unique).

    Exact equality of the distance vectors (sketches of every chosen layer) stands for
    equal weights: two different models sketch to the same float32 vector with
    probability ~0, and a re-upload of the same bytes always does.
    """
    order = np.lexsort((np.arange(len(vectors)), np.nan_to_num(created_at, nan=np.inf)))
    first: dict[bytes, int] = {}
    rep = np.arange(len(vectors))
    for i in order:
        rep[i] = first.setdefault(np.ascontiguousarray(vectors[i]).tobytes(), i)
    return rep


def time_allows(parent_time: np.ndarray, child_time: np.ndarray) -> np.ndarray:
    """Whether an edge parent -> child respects upload order; unknown times allow anything."""
    with np.errstate(invalid="ignore"):
        return ~(parent_time > child_time)


# ----------------------------------------------------------------------------- direction


@dataclass(frozen=True)
class DirectionRule:
    """Which way edges point in a family, and the evidence for it.

    ``witness`` names the per-model number compared across an edge (the summed excess
    kurtosis of the chosen layers, or the weights' norm); with ``sign`` +1 a parent has
    the larger value. MoTHer's published rule is (kurtosis, +1): fine-tuning lowers
    kurtosis. Continued pre-training raises it, and small models trained briefly go either
    way, so each family takes the rule its declared edges agree with best.
    """

    source: str  # "declared" (this family's edges) | "lake" (all declared edges) | "default"
    witness: str  # "kurtosis" | "norm"
    sign: int
    agreement: float | None = None  # fraction of the evidence edges this rule orients right
    n_evidence: int = 0


PAPER_RULE = DirectionRule("default", "kurtosis", +1)
# Without any declared edge to learn from: weights grow along fine-tuning edges. An Adam
# update is nearly orthogonal to the weights it changes, so ||W + d||^2 ~ ||W||^2 + ||d||^2.
# Measured on the tuning zoos (seeds 0 and 1 at the default spec, three tiny zoos): the norm
# grew on 100/100/100/92/92% of fine-tune edges, kurtosis fell on 96/74/75/67/58%. Weight
# decay over long training would break it; any declared edge in the lake overrides it.
GROWTH_RULE = DirectionRule("default", "norm", -1)
WITNESSES = ("norm", "kurtosis", "rank")  # in order of preference on ties

Votes = dict[tuple[str, int], tuple[int, int]]  # (witness, sign) -> (edges it orients right, edges usable)


def direction_votes(parent_values: Mapping[str, np.ndarray], child_values: Mapping[str, np.ndarray]) -> Votes:
    """How many evidence edges each (witness, sign) orients parent -> child (ties and nan skipped)."""
    votes: Votes = {}
    for witness in WITNESSES:
        if witness not in parent_values:
            continue
        p, c = parent_values[witness], child_values[witness]
        usable = np.isfinite(p) & np.isfinite(c) & (p != c)
        n, down = int(usable.sum()), int((p[usable] > c[usable]).sum())
        votes[witness, +1], votes[witness, -1] = (down, n), (n - down, n)
    return votes


def choose_direction(votes: Votes, source: str, prior: Votes | None = None, strength: float = 4.0) -> DirectionRule | None:
    """The (witness, sign) with the best shrunken agreement, or None without evidence.

    ``score = (agree + strength * q) / (n + strength)`` with ``q = (a + 1) / (N + 2)`` the
    prior's agreement (the lake's, for a family; 1/2 without one): a family's own declared
    edges override the lake only when there are enough of them, and a lone edge cannot
    switch a family to another witness. Ties go to the norm witness, ``GROWTH_RULE``'s: on
    the zoos, where both witnesses agree with every declared edge, norm orients the
    undeclared ones better (held-out seed 12: 97.9% against 95.7% for kurtosis).
    """
    best: tuple[float, DirectionRule] | None = None
    for (witness, sign), (agree, n) in votes.items():
        if n == 0:
            continue
        a, total = (prior or {}).get((witness, sign), (0, 0))
        score = (agree + strength * (a + 1) / (total + 2)) / (n + strength)
        if best is None or score > best[0]:
            best = (score, DirectionRule(source, witness, sign, agree / n, n))
    return best[1] if best else None
