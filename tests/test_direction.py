"""Which way a family points, from its evidence: declared edges and times, the tree's shape, a default."""
import numpy as np

from hubtree.ops.trees.direction import (
    PRETRAINED_RULE,
    adapter_fixed,
    family_direction,
    merged_adapter_edges,
    reroot,
    shape_direction,
    TimeFit,
    shape_score,
    time_fit,
    times_tell,
)
from hubtree.ops.trees.priors import DirectionRule

# 0 -> 1, 2, 3; 1 -> 4, 5; 2 -> 6: a family with branch points
A, B = np.array([0, 0, 0, 1, 1, 2]), np.array([1, 2, 3, 4, 5, 6])
DEPTH = np.array([0, 1, 1, 1, 2, 2, 2], dtype=float)


def test_a_monotone_witness_finds_the_root_and_its_reverse_cannot():
    up = shape_score(A, B, DEPTH, -1)  # a witness growing along lineages, read as growing
    down = shape_score(A, B, DEPTH, +1)  # the same read the other way
    assert (up.agree, up.usable, up.root) == (6, 6, 0)
    assert down.agree <= 2  # edges cannot all point into a node with two neighbours


def test_the_shape_picks_witness_and_sign_and_reports_conflicts():
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=7)
    clear = shape_direction(A, B, {"rank": DEPTH, "kurtosis": noisy, "norm": np.full(7, np.nan)})
    assert clear.rule.source == "shape" and (clear.rule.witness, clear.rule.sign) == ("rank", -1)
    from_4 = np.array([2, 1, 3, 3, 0, 2, 4], dtype=float)  # grows away from member 4: fits the tree from another root
    conflicting = shape_direction(A, B, {"rank": DEPTH, "kurtosis": -from_4, "norm": np.full(7, np.nan)})
    assert "conflict" in conflicting.why and conflicting.confidence < clear.confidence


def test_a_chain_does_not_tell_so_the_default_holds_with_the_witnesses_agreement():
    x = np.cumsum(np.random.default_rng(1).normal(size=(4, 16)), axis=0).astype(np.float32)
    witnesses = {"rank": np.arange(4.0), "kurtosis": -np.arange(4.0), "norm": np.arange(4.0)}
    got = family_direction(x, witnesses, np.full(4, np.nan), {}, {}, None, PRETRAINED_RULE)
    assert got.rule == PRETRAINED_RULE and "does not tell" in got.why and got.confidence == 0.5


def test_upload_times_are_evidence_before_the_shape():
    x = np.cumsum(np.random.default_rng(2).normal(size=(4, 16)), axis=0).astype(np.float32)
    witnesses = {"rank": np.arange(4.0), "kurtosis": np.arange(4.0), "norm": np.arange(4.0)}
    got = family_direction(x, witnesses, np.arange(4.0), {}, {}, None, PRETRAINED_RULE)
    assert got.rule.source == "upload times" and got.rule.sign == -1 and got.confidence == 1.0


def test_reroot_moves_the_root_to_where_the_witness_agrees():
    parent = np.array([1, -1, 0, 0, 1, 1, 2])  # member 1 was made the root
    fixed = reroot(parent, DEPTH, -1)
    assert fixed.parent.tolist() == [-1, 0, 0, 0, 1, 1, 2]
    assert DirectionRule("default", "rank", -1) == PRETRAINED_RULE


def test_when_two_witnesses_fit_from_different_roots_the_larger_margin_wins_and_a_tie_goes_to_the_default():
    from_4 = np.array([2, 1, 3, 3, 0, 2, 4], dtype=float)
    witnesses = {"rank": DEPTH, "kurtosis": -from_4, "norm": np.full(7, np.nan)}
    for default in (PRETRAINED_RULE, DirectionRule("default", "kurtosis", +1)):
        got = shape_direction(A, B, witnesses, default)  # rank's reverse fits less of the tree than kurtosis's
        assert (got.rule.witness, got.rule.sign) == ("rank", -1) and "conflict" in got.why and got.confidence <= 0.5
    # 0 -> 1, 2, 3; 1 -> 4, 5; 2 -> 6, 7: rooted at 1 or at 2, the tree looks the same
    a, b = np.array([0, 0, 0, 1, 1, 2, 2]), np.array([1, 2, 3, 4, 5, 6, 7])
    from_1, from_2 = np.array([1, 0, 2, 2, 1, 1, 3, 3.0]), np.array([1, 2, 0, 2, 3, 3, 1, 1.0])
    tie = {"rank": from_1, "kurtosis": -from_2, "norm": np.full(8, np.nan)}
    got = shape_direction(a, b, tie, PRETRAINED_RULE)
    assert (got.rule.witness, got.rule.sign) == ("rank", -1) and "the default decided" in got.why
    other = shape_direction(a, b, tie, DirectionRule("default", "kurtosis", +1))
    assert (other.rule.witness, other.rule.sign) == ("kurtosis", +1)
    assert got.confidence <= 0.5 and other.confidence <= 0.5


def test_a_merged_adapter_edge_is_told_by_its_untouched_layers_and_oriented_by_the_norm():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(3, 8))  # three layers of 4 entries each, as distance vectors
    merged = base.copy()
    merged[:, :4] += 0.1  # an adapter moved layer 0 only
    tuned = base + rng.normal(0, 0.1, base.shape)  # a fine-tune moves both layers
    x = np.concatenate([base, merged[:1], tuned[:1]])
    a, b = np.array([0, 0]), np.array([3, 4])
    assert merged_adapter_edges(x, a, b, [4, 4]).tolist() == [True, False]
    norm = np.array([1.0, 0, 0, 1.5, 0.5])  # the merge grew the norm
    step = np.array([0.1, 0.1])  # the edges' RMS steps
    fixed = adapter_fixed(a, b, np.array([True, False]), norm, step)
    assert np.allclose(fixed, [5.0, 0])  # base is the merge's parent, by 5 sigmas; the fine-tune's edge is left to the witness
    assert adapter_fixed(a, b, np.array([True, False]), norm, np.array([0.6, 0.6])).tolist() == [0, 0]  # within chance
    parent, values = np.array([3, -1, -1, -1]), np.array([0.0, 0, 0, 1.0])  # the witness roots the pair at 3
    assert reroot(parent, values, +1).parent.tolist() == [3, -1, -1, -1]
    assert reroot(parent, values, +1, lambda a, b: np.array([-1.0])).parent.tolist() == [-1, -1, -1, 0]  # the edge says: 0 is the parent


def test_a_merge_that_moves_the_norm_by_less_than_a_random_step_would_does_not_vote():
    rng = np.random.default_rng(5)
    w = rng.normal(size=20_000)
    d = rng.normal(0, 0.01, w.size)  # a step of random direction: RMS 0.01
    d -= (d @ w) / (w @ w) * w  # no growth beyond ||d||^2 / 2||W||, far below one RMS step
    norms = np.array([np.linalg.norm(w), np.linalg.norm(w + d)])
    step = np.array([np.sqrt(np.mean(d**2))])
    merged = np.array([True])
    assert adapter_fixed(np.array([0]), np.array([1]), merged, norms, step).tolist() == [0]
    grown = np.array([norms[0], np.linalg.norm(w + d + 0.003 * w / np.linalg.norm(w) * np.sqrt(w.size))])
    assert adapter_fixed(np.array([0]), np.array([1]), merged, grown, step)[0] > 1
    assert adapter_fixed(np.array([1]), np.array([0]), merged, grown, step)[0] < -1


def test_times_of_making_leave_one_root_per_tree_and_times_in_random_order_leave_many():
    made = DEPTH + np.arange(7) / 100  # each member after its parent
    assert time_fit(A, B, made).extra_roots == 0
    leaves = 4  # reversed, every leaf looks older than all its neighbours
    assert time_fit(A, B, -made).extra_roots == leaves - 1
    chance = 1 / 4 + 1 / 4 + 1 / 3 + 4 / 2 - 1  # sum of 1/(degree + 1), one tree
    assert np.isclose(time_fit(A, B, made).by_chance, chance)
    tied = np.full(7, 5.0)  # one clock for every file: no order at all
    assert time_fit(A, B, tied).by_chance == 0 and times_tell([time_fit(A, B, tied)])
    assert times_tell([time_fit(A, B, made)]) and not times_tell([time_fit(A, B, -made)] * 3)
    # a big hub whose trees join siblings: far from none, but far below chance too
    assert times_tell([TimeFit(1800.0, 3500.0, 800.0)]) and not times_tell([TimeFit(3450.0, 3500.0, 800.0)])


def test_a_root_that_votes_disagree_on_is_less_likely_and_says_so():
    # 0 -> 1, 2, 3; 1 -> 4, 5; 2 -> 6; the witness falls along every edge, so 0 is the root.
    parent = np.array([-1, 0, 0, 0, 1, 1, 2])
    clear = reroot(parent, -DEPTH, +1)
    assert clear.parent.tolist() == parent.tolist() and clear.root > 0.5 and clear.contradicted == 0
    # A merged adapter's norm on edge 0 - 3 says 3 is the parent, against the witness: the
    # root follows the adapter, but with one vote each way on that edge, 0 and 3 are nearly
    # a coin flip, and the edge between them is no surer than that; edges away from both stay sure.
    adapter = lambda a, b: np.where((a == 0) & (b == 3), -3.0, 0.0)  # noqa: E731
    split = reroot(parent, -DEPTH, +1, adapter)
    assert split.parent[0] == 3 and split.contradicted == 1
    assert split.root < 0.7 and split.root < clear.root
    assert split.side[0] < 0.7 and split.side[0] < clear.side[3]
    assert split.side[4] > 0.9  # the root is on 1's parent side either way
    # A witness that agrees with the tree on fewer edges is weaker evidence: the root is less sure.
    noisy = -DEPTH.copy()
    noisy[6] = 1.0  # edge 2 -> 6 now votes the other way
    assert reroot(parent, noisy, +1).root < clear.root


def test_a_norm_vote_within_chance_counts_for_little_and_a_leaf_that_cannot_parent_is_never_the_root():
    parent = np.array([-1, 0, 0, 0, 1, 1, 2])
    norm = -DEPTH.copy()  # grows along every edge
    sure = reroot(parent, norm, +1, noise=lambda a, b: np.full(len(a), 1e-3))  # changes of 1000 sigmas
    unsure = reroot(parent, norm, +1, noise=lambda a, b: np.full(len(a), 10.0))  # changes of 0.1 sigma
    assert sure.root > 0.5 and unsure.root < sure.root
    # member 6 is a quantized copy (a leaf): a witness rooting the tree at it is overruled
    towards_6 = -np.array([2, 3, 1, 3, 4, 4, 0], dtype=float)  # falls with the distance from 6
    assert reroot(parent, towards_6, +1).parent[6] == -1
    kept = reroot(parent, towards_6, +1, can_root=np.arange(7) != 6)
    assert kept.parent[6] == 2 and kept.parent[2] == -1
