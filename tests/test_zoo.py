"""The zoo is a test hub whose answers are known: these tests prove the answers are right.

All tests share one tiny zoo (``ZooSpec.tiny()``, a few seconds to train); the
reproducibility test builds two more.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hubtree.ops.zoo.build import ZooSpec, ZooTruth, build_zoo, load_truth

SPEC = ZooSpec.tiny()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, ZooTruth]:
    out = tmp_path_factory.mktemp("zoo")
    return out, build_zoo(out, seed=0, spec=SPEC, progress=False)


def card_meta(repo: Path) -> dict:
    text = (repo / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def full_weights(out: Path, truth: ZooTruth, repo_id: str) -> dict[str, torch.Tensor]:
    if repo_id in truth.hidden_bases:
        return load_file(out / truth.hidden_bases[repo_id])
    weights = {}
    for f in sorted((out / "hub" / repo_id).glob("model*.safetensors")):
        weights |= load_file(f)
    return weights


def safetensors_digests(out: Path) -> dict[str, str]:
    files = sorted(out.rglob("*.safetensors"))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_every_published_model_has_hf_repo_layout(zoo):
    out, truth = zoo
    published = [r for r, m in truth.models.items() if m.published]
    for repo_id in published:
        repo = out / "hub" / repo_id
        if truth.models[repo_id].relation == "adapter":
            assert (repo / "adapter_config.json").exists() and (repo / "adapter_model.safetensors").exists()
            continue
        config = json.loads((repo / "config.json").read_text())
        assert config["model_type"] == "tinygpt" and config["num_hidden_layers"] >= 1
        assert card_meta(repo)["pipeline_tag"] == "text-generation"
        weights = full_weights(out, truth, repo_id)
        assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (config["hidden_size"],) * 2
        assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= weights.keys()
    assert len({r.split("/")[0] for r in published}) >= 3  # several authors to filter on


def test_one_repo_is_sharded_with_a_valid_hf_index(zoo):
    out, _ = zoo
    (index_file,) = (out / "hub").rglob("model.safetensors.index.json")
    index = json.loads(index_file.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tensors = {}
    for shard in shards:
        tensors |= load_file(index_file.parent / shard)
    assert tensors.keys() == index["weight_map"].keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_quantized_child_is_its_parent_in_float16(zoo):
    out, truth = zoo
    (edge,) = [e for e in truth.edges if e.relation == "quantized"]
    child, parent = full_weights(out, truth, edge.child), full_weights(out, truth, edge.parent)
    assert all(child[k].dtype == torch.float16 and torch.equal(child[k], parent[k].half()) for k in parent)
    assert json.loads((out / "hub" / edge.child / "config.json").read_text())["torch_dtype"] == "float16"


def test_truth_stays_outside_the_hub_and_round_trips(zoo):
    out, truth = zoo
    assert load_truth(out / "truth.json") == truth
    hub_files = [f for f in (out / "hub").rglob("*") if f.is_file()]
    assert not any("truth" in f.name for f in hub_files)
    hidden = {hashlib.sha256((out / p).read_bytes()).digest() for p in truth.hidden_bases.values()}
    assert not hidden & {hashlib.sha256(f.read_bytes()).digest() for f in hub_files}
    assert not any((out / "hub" / r).exists() for r in truth.hidden_bases)


def test_cards_declare_the_parent_for_only_some_finetunes(zoo):
    out, truth = zoo
    forms = set()
    for edge in truth.edges:
        meta = card_meta(out / "hub" / edge.child)
        assert ("base_model" in meta) == edge.declared
        if edge.declared:
            declared = meta["base_model"]
            forms.add(type(declared))
            assert declared in (edge.parent, [edge.parent])
    finetunes = [e for e in truth.edges if e.relation == "finetune"]
    assert 0 < sum(e.declared for e in finetunes) < len(finetunes)
    assert forms == {str, list}


def test_families_have_roots_children_and_grandchildren(zoo):
    _, truth = zoo
    for family in ("atlas", "birch", "cobalt"):
        members = [truth.models[r] for r in truth.families[family]]
        assert members[0].parent is None and members[0].depth == 0
        assert max(m.depth for m in members) == 2
    archs = [truth.models[truth.families[f][0]].arch for f in ("atlas", "birch", "cobalt")]
    assert archs[0] == archs[1] != archs[2]


def test_every_model_trains_on_its_own_data(zoo):
    _, truth = zoo
    chains = [m.train.data.split("-")[1] for m in truth.models.values() if m.train]  # "copy-3f2a": chain 3f2a
    assert len(set(chains)) == len(chains)
    families = ("atlas", "birch", "cobalt")
    per_family = 1 + SPEC.children * (1 + SPEC.grandchildren)
    assert sum(len(truth.families[f]) for f in families) == len(families) * per_family + 1  # + the float16 copy


def test_training_lowers_the_loss_of_every_model(zoo):
    _, truth = zoo
    trained = [m.train for m in truth.models.values() if m.train]
    assert len(trained) == len(truth.models) - 1  # all but the float16 copy
    assert all(t.last_loss < t.first_loss for t in trained)


def test_finetunes_stay_closer_to_their_parent_than_to_other_families(zoo):
    out, truth = zoo
    atlas, birch = truth.families["atlas"], truth.families["birch"]  # same architecture

    def rms(a, b):
        wa, wb = full_weights(out, truth, a), full_weights(out, truth, b)
        attention = [k for k in wa if "self_attn" in k]
        return torch.stack([(wa[k].float() - wb[k].float()).pow(2).mean().sqrt() for k in attention]).mean()

    nearest_other = min(rms(a, b) for a in atlas[:2] for b in birch[:2])
    for edge in truth.edges:
        if edge.relation == "finetune" and edge.child in atlas:
            assert rms(edge.parent, edge.child) < nearest_other / 3


def test_merged_lora_deltas_are_rank_r_on_targets_and_zero_elsewhere(zoo):
    out, truth = zoo
    (base_id,) = truth.hidden_bases
    base = full_weights(out, truth, base_id)
    assert len(truth.lora.merged) == SPEC.merged
    for repo_id in truth.lora.merged:
        merged = full_weights(out, truth, repo_id)
        for name, w in base.items():
            delta = merged[name].double() - w.double()
            if name.split(".")[-2] in truth.lora.targets:
                s = torch.linalg.svdvals(delta)
                assert s[0] > 0 and s[truth.lora.rank] < 1e-5 * s[0]
            else:
                assert torch.equal(merged[name], w)


def test_adapters_are_peft_repos_with_known_dataset_sizes(zoo):
    out, truth = zoo
    r, d, n_layers = SPEC.lora_rank, SPEC.hidden_arch.hidden_size, SPEC.hidden_arch.num_hidden_layers
    sizes = list(truth.lora.adapters.values())
    assert sorted(set(sizes)) == sorted(SPEC.adapter_sizes)
    assert all(sizes.count(n) == SPEC.adapters_per_size for n in SPEC.adapter_sizes)
    for repo_id in truth.lora.adapters:
        repo = out / "hub" / repo_id
        config = json.loads((repo / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == r
        assert config["base_model_name_or_path"] in truth.hidden_bases
        tensors = load_file(repo / "adapter_model.safetensors")
        expected = {
            f"base_model.model.model.layers.{i}.self_attn.{t}.lora_{ab}.weight"
            for i in range(n_layers)
            for t in config["target_modules"]
            for ab in "AB"
        }
        assert tensors.keys() == expected
        for name, t in tensors.items():
            assert t.shape == ((r, d) if ".lora_A." in name else (d, r))


def test_same_seed_gives_identical_bytes_and_another_seed_other_weights(zoo, tmp_path):
    out, _ = zoo
    build_zoo(tmp_path / "again", seed=0, spec=SPEC, progress=False)
    build_zoo(tmp_path / "other", seed=1, spec=SPEC, progress=False)
    first = safetensors_digests(out)
    assert safetensors_digests(tmp_path / "again") == first
    other = safetensors_digests(tmp_path / "other")
    assert first["hidden/base.safetensors"] != other["hidden/base.safetensors"]
    assert not set(first.values()) & set(other.values())


def test_refuses_to_write_over_an_existing_hub(zoo):
    out, _ = zoo
    with pytest.raises(FileExistsError, match="not empty"):
        build_zoo(out, seed=0, spec=SPEC, progress=False)
