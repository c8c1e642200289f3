"""Attack-set planning and checking, on rows and tensors alone (no lake, no hub, no Ray)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from hubtree.ops.lora.attack_sets import SAMPLE_ROWS
from hubtree.ops.lora.groups import (
    GroupPlan, ProbeCache, RepoLoc, check_group, detune, detune_units, one_architecture, plan_groups,
)


def _repo(repo_id: str) -> dict:
    return {"repo_id": repo_id, "revision": "r1", "hub": "/hub"}


def _tensors(repo_id: str, shape=(8, 8), names=("q", "v")) -> list[dict]:
    return [{"repo_id": repo_id, "revision": "r1", "file": "model.safetensors", "name": n, "shape": list(shape), "dtype": "F32"} for n in names]


def test_groups_follow_declared_parents_and_keep_one_architecture():
    repos = [_repo(r) for r in ("org/a", "org/b", "org/c", "org/wide", "org/free", "org/odd", "org/q")]
    tensors = [t for r in ("org/a", "org/b", "org/c", "org/free", "org/q") for t in _tensors(r)]
    tensors += _tensors("org/wide", shape=(8, 16)) + _tensors("org/odd", shape=(4, 4))
    edges = [{"repo_id": r, "parent_repo_id": "hidden/base", "relation": "finetune"} for r in ("org/a", "org/b", "org/c", "org/wide")]
    edges += [{"repo_id": "org/q", "parent_repo_id": "hidden/base", "relation": "quantized"}]
    (plan,) = plan_groups(repos, tensors, edges, layers=None)
    assert plan.base_repo == "hidden/base" and plan.base is None
    assert [m.repo_id for m in plan.members] == ["org/a", "org/b", "org/c"]
    assert set(plan.excluded) == {"org/wide"}  # another shape declaring the same base is left out, and said so
    assert [c.repo_id for c in plan.candidates] == ["org/free"]  # undeclared and same shapes; org/odd differs, org/q declares
    assert plan.layers == ["q", "v"] and plan.shapes == {"q": (8, 8), "v": (8, 8)}
    assert plan_groups(repos, tensors, edges, layers="^q$")[0].layers == ["q"]


def test_one_architecture_breaks_ties_by_more_layers():
    shapes = {"a": {"q": (4, 4)}, "b": {"q": (4, 4), "v": (4, 4)}}
    assert one_architecture(["a", "b"], shapes) == (["b"], {"a": "has other tensor names or shapes than the other models declaring this base"})


def test_three_merges_of_one_base_are_checked_and_detuned():
    torch.manual_seed(0)
    base = {n: torch.randn(16, 16) for n in ("q", "v")}
    weights = {}
    for i in range(4):
        weights[f"org/m{i}"] = {n: w + 0.1 * torch.randn(16, 2) @ torch.randn(2, 16) for n, w in base.items()}
    locs = [RepoLoc(r, "r1", "/hub", {"q": "f", "v": "f"}, {"q": "F32", "v": "F32"}) for r in weights]

    def read(loc: RepoLoc, names: list[str], rows) -> dict[str, torch.Tensor]:
        return {n: weights[loc.repo_id][n] for n in names}

    plan = GroupPlan("hidden/base", locs[:3], locs[3:], ["q", "v"], {"q": (16, 16), "v": (16, 16)}, None)
    check = check_group(plan, read)
    assert check.problem is None
    assert sorted(m.repo_id for m in check.members) == sorted(weights)  # the undeclared merge joined
    assert check.layers == {"q": 2, "v": 2}
    (unit,) = detune_units(check, iterations=50)
    results = detune(unit, read, torch.device("cpu"))
    assert [r.layer for r in results] == ["q", "v"] and all(r.error is None and r.w_error is None for r in results)
    assert all(r.weights.shape == (16, 16) for r in results)


def test_a_group_without_shared_layers_is_low_confidence():
    plan = GroupPlan("hidden/base", [], [], [], {}, None)
    assert check_group(plan, lambda loc, names, rows: {}).problem == "low: the members share no 2-D floating tensor of one shape"


def test_tall_layers_are_checked_on_a_sample_of_their_rows_and_detuned_whole():
    """A 600-row layer is judged on SAMPLE_ROWS rows: LoRA merges join, a full fine-tune does not, and
    only the detuning reads whole layers."""
    torch.manual_seed(1)
    base = {n: torch.randn(600, 40) for n in ("q", "v")}
    weights = {f"org/m{i}": {n: w + 0.05 * torch.randn(600, 2) @ torch.randn(2, 40) for n, w in base.items()} for i in range(4)}
    weights["org/full"] = {n: w + 0.05 * torch.randn(600, 40) for n, w in base.items()}
    locs = [RepoLoc(r, "r1", "/hub", {"q": "f", "v": "f"}, {"q": "F32", "v": "F32"}) for r in weights]
    rows_read = []

    def read(loc: RepoLoc, names: list[str], rows) -> dict[str, torch.Tensor]:
        out = {n: weights[loc.repo_id][n][rows[n].begin : rows[n].end] if n in rows else weights[loc.repo_id][n] for n in names}
        rows_read.extend(t.shape[0] for t in out.values())
        return out

    plan = GroupPlan("hidden/base", locs[:3], locs[3:], ["q", "v"], {"q": (600, 40), "v": (600, 40)}, None)
    check = check_group(plan, read)
    assert check.problem is None and check.layers == {"q": 2, "v": 2}
    assert sorted(m.repo_id for m in check.members) == [f"org/m{i}" for i in range(4)]  # org/full left out
    assert set(rows_read) == {SAMPLE_ROWS} and len(rows_read) == 2 * 4 + 1  # org/full: its probe layer only
    rows_read.clear()
    (unit,) = detune_units(check, iterations=50)
    assert all(r.weights.shape == (600, 40) for r in detune(unit, read, torch.device("cpu")))
    assert set(rows_read) == {600}


def _lora_zoo() -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, RepoLoc], dict[str, tuple]]:
    """Four rank-2 LoRA merges of one base on q and v (o untouched), a model of another base and a full fine-tune."""
    torch.manual_seed(2)
    shapes = {"q": (16, 16), "v": (16, 16), "o": (8, 16)}
    base = {n: torch.randn(*s) for n, s in shapes.items()}
    lora = {n: (lambda: 0.1 * torch.randn(16, 2) @ torch.randn(2, 16)) if n != "o" else (lambda: 0) for n in shapes}
    weights = {f"org/m{i}": {n: w + lora[n]() for n, w in base.items()} for i in range(4)}
    weights["other/base"] = {n: torch.randn(*s) for n, s in shapes.items()}
    weights["org/full"] = {n: w + 0.1 * torch.randn(*w.shape) for n, w in base.items()}
    locs = {r: RepoLoc(r, "r1", "/hub", dict.fromkeys(shapes, "f"), dict.fromkeys(shapes, "F32")) for r in weights}
    return weights, locs, shapes


def _counted(weights: dict[str, dict[str, torch.Tensor]]) -> tuple[Counter, Callable]:
    """A ``read`` of ``weights`` that counts each (repo, layer) it is asked for."""
    reads: Counter = Counter()

    def read(loc: RepoLoc, names: list[str], rows) -> dict[str, torch.Tensor]:
        reads.update((loc.repo_id, n) for n in names)
        return {n: weights[loc.repo_id][n] for n in names}

    return reads, read


def test_candidates_are_read_at_one_probe_layer_unless_they_join():
    """A candidate ruled out by its probe layer is read nowhere else: at a targeted layer when the declared
    members found some, else at the smallest layer; one that joins is read at every layer, once."""
    weights, locs, shapes = _lora_zoo()
    reads, read = _counted(weights)
    outsiders = [locs["other/base"], locs["org/full"]]
    plan = GroupPlan("hidden/base", [locs[f"org/m{i}"] for i in range(3)], [locs["org/m3"], *outsiders], list(shapes), shapes, None)
    check = check_group(plan, read)
    assert check.problem is None and check.layers == {"q": 2, "v": 2}
    assert sorted(m.repo_id for m in check.members) == [f"org/m{i}" for i in range(4)]
    every_layer = {(f"org/m{i}", n): 1 for i in range(4) for n in shapes}
    assert reads == Counter(every_layer | {("other/base", "q"): 1, ("org/full", "q"): 1})  # q: the first targeted layer

    reads.clear()
    one = GroupPlan("hidden/base", [locs["org/m0"]], [locs["org/m1"], locs["org/m2"], *outsiders], list(shapes), shapes, None)
    check = check_group(one, read)
    assert check.problem is None and sorted(m.repo_id for m in check.members) == ["org/m0", "org/m1", "org/m2"]
    every_layer = {(f"org/m{i}", n): 1 for i in range(3) for n in shapes}
    assert reads == Counter(every_layer | {("other/base", "o"): 1, ("org/full", "o"): 1})  # o: the smallest layer


def test_groups_checked_on_one_worker_read_a_candidates_probe_layer_once():
    """Two groups of one architecture try the same candidates: the second reads none of them again, and the
    cache keeps the probe layers read last within its bytes."""
    weights, locs, shapes = _lora_zoo()
    reads, read = _counted(weights)
    candidates = [locs[r] for r in ("org/m1", "org/m2", "other/base", "org/full")]
    probes = ProbeCache()
    first = check_group(GroupPlan("hidden/base", [locs["org/m0"]], candidates, list(shapes), shapes, None), read, probes)
    reads.clear()
    second = check_group(GroupPlan("other/parent", [locs["other/base"]], candidates[:2] + candidates[3:], list(shapes), shapes, None),
                         read, probes)
    assert len(first.members) == 3 and [m.repo_id for m in second.members] == ["other/base"]
    assert reads == Counter({("other/base", n): 1 for n in shapes})  # its own declared member only: every candidate is ruled out at o, kept
    assert probes.bytes == 4 * weights["org/m0"]["o"].nbytes

    small = ProbeCache(max_bytes=2 * weights["org/m0"]["o"].nbytes)
    check_group(GroupPlan("hidden/base", [locs["org/m0"]], candidates, list(shapes), shapes, None), read, small)
    assert small.bytes == 2 * weights["org/m0"]["o"].nbytes  # the two read last
