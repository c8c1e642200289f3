"""Spectral DeTuning and the LoRA-set checks before it, on synthetic merges and a tiny trained zoo."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from hubtree.errors import ShapeMismatchError, TooFewMergesError
from hubtree.ops.lora.attack_sets import check_attack_set, classify_layers, estimate_lora_rank, low_rank_layers
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor
from hubtree.ops.lora.spectral_detuning import paper_spectral_detuning, spectral_detuning, spectral_detuning_batch, w_error
from hubtree.ops.torch_threads import intra_op_threads


@pytest.fixture(autouse=True)
def one_thread():
    """These matrices are tiny: a second OpenMP thread only adds barriers, which spin for whole
    time slices when another process holds the core (measured 60x slower on a loaded 2-core box)."""
    with intra_op_threads(1):
        yield


def lora_merges(n: int, m: int, d: int, r: int, seed: int = 0, scale: float = 0.02) -> tuple[Tensor, Tensor]:
    """(W, merges): a float64 base and n float32 merges ``W + B_i A_i`` (rank r), as a hub stores them."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    w = 0.05 * randn(m, d)
    return w, torch.stack([(w + scale * randn(m, r) @ randn(r, d) / r**0.5).float() for _ in range(n)])


def test_detuning_recovers_the_base_exactly_with_the_estimated_rank():
    w, merges = lora_merges(n=5, m=48, d=40, r=4)
    rank = estimate_lora_rank(merges)
    result = spectral_detuning(merges, rank)
    assert rank == 4
    assert w_error(result.weights, w) <= -10
    assert w_error(result.weights, w) <= w_error(merges.mean(0), w) - 6  # the mean of merges is the baseline
    assert result.converged and result.final_rank == 4


def test_batched_per_layer_and_paper_runs_agree():
    layers = [lora_merges(n=4, m=32, d=32, r=3, seed=s) for s in range(3)]
    batched = spectral_detuning_batch(torch.stack([merges for _, merges in layers]), rank=3)
    for (w, merges), together in zip(layers, batched):
        alone, paper = spectral_detuning(merges, 3), paper_spectral_detuning(merges, 3)
        assert w_error(together.weights, alone.weights) <= -20
        assert w_error(together.weights, paper.weights) <= -20
        assert w_error(together.weights, w) <= -10


def test_two_merges_are_refused_because_they_cannot_be_separated():
    _, merges = lora_merges(n=2, m=16, d=16, r=2)
    with pytest.raises(TooFewMergesError, match="cannot be separated"):
        spectral_detuning(merges, 2)
    found = check_attack_set({"a/one": {"q": merges[0]}, "b/two": {"q": merges[1]}})
    assert not found.ok
    assert "cannot be separated" in found.problems[0]


def test_mismatched_shapes_raise_an_error_naming_the_model():
    _, merges = lora_merges(n=3, m=16, d=16, r=2)
    with pytest.raises(ShapeMismatchError, match="same"):
        spectral_detuning([merges[0], merges[1], merges[2][:, :15]], 2)
    models = {"a/x": {"q": merges[0]}, "b/y": {"q": merges[1]}, "c/z": {"q": merges[2][:15]}}
    with pytest.raises(ShapeMismatchError, match="c/z"):
        check_attack_set(models)


def test_a_merge_of_another_base_is_excluded_with_a_reason():
    _, ours = lora_merges(n=4, m=32, d=32, r=2, seed=1)
    _, theirs = lora_merges(n=1, m=32, d=32, r=2, seed=2)
    models = {f"org/m{i}": {"q": merged} for i, merged in enumerate(ours)} | {"other/base": {"q": theirs[0]}}
    found = check_attack_set(models)
    assert found.ok
    assert sorted(found.members) == [f"org/m{i}" for i in range(4)]
    assert found.layers == {"q": 2}
    assert "full rank" in found.excluded["other/base"] and "another base" in found.excluded["other/base"]


@pytest.mark.parametrize(("m", "d", "r", "scale"), [(64, 48, 1, 0.02), (40, 64, 3, 0.02), (96, 96, 8, 1e-4), (64, 200, 5, 0.02)])
def test_rank_estimate_is_exact_despite_float32_rounding(m, d, r, scale):
    _, merges = lora_merges(n=4, m=m, d=d, r=r, scale=scale)
    assert estimate_lora_rank(merges, max_rank=16) == r  # d=200 > 2*16+8: the sketched path


def test_layers_are_told_apart_as_targeted_identical_or_full_rank_different():
    w, merges = lora_merges(n=3, m=24, d=24, r=2)
    g = torch.Generator().manual_seed(3)
    models = [{"q": q, "norm": torch.ones(24), "k": w.float(), "mlp": torch.randn(24, 24, generator=g)} for q in merges]
    kinds = {name: diff.kind for name, diff in classify_layers(models).items()}
    assert kinds == {"q": "low_rank", "k": "identical", "mlp": "full_rank"}
    assert low_rank_layers(models) == {"q": 2}


def read_state(path) -> dict[str, Tensor]:
    """Every tensor of one safetensors file, through hubtree's reader."""
    source = LocalFile(path)
    return {entry.name: as_float_tensor(read_tensor(source, entry)) for entry in read_header(source).tensors}


def test_tiny_zoo_merged_loras_are_detuned_to_the_hidden_base(tmp_path):
    from hubtree.ops.zoo.build import ZooSpec, build_zoo

    truth = build_zoo(tmp_path, progress=False, spec=replace(ZooSpec.tiny(), archs=()))  # the LoRA part only
    base = read_state(tmp_path / next(iter(truth.hidden_bases.values())))
    merged = {repo: read_state(tmp_path / "hub" / repo / "model.safetensors") for repo in truth.lora.merged}
    found = check_attack_set(merged)
    assert found.ok and found.excluded == {}
    assert {name.split(".")[-2] for name in found.layers} == set(truth.lora.targets)
    assert set(found.layers.values()) == {truth.lora.rank}  # estimated, never given
    for name, rank in found.layers.items():
        recovered = spectral_detuning([merged[repo][name] for repo in found.members], rank).weights
        assert w_error(recovered, base[name]) <= -10
