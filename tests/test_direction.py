"""Which way a family points, from its evidence: declared edges and times, the tree's shape, a default."""
import numpy as np

from hubtree.ops.trees.direction import PRETRAINED_RULE, family_direction, reroot, shape_direction, shape_score
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
    assert fixed.tolist() == [-1, 0, 0, 0, 1, 1, 2]
    assert DirectionRule("default", "rank", -1) == PRETRAINED_RULE
