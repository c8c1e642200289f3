"""Build small hubs in Hub layout for tests, file by file, so each test shows its input."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def tiny_weights(seed: int, d: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(d, d, generator=g),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(d, d, generator=g),
        "model.norm.weight": torch.ones(d),
    }


def add_repo(
    root: Path,
    repo_id: str,
    card: str | None = "license: mit\n",
    weights: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    config: dict | None = None,
) -> Path:
    """One repo: README.md with ``card`` as YAML front matter, config.json, model.safetensors."""
    repo = root / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    if card is not None:
        (repo / "README.md").write_text(f"---\n{card}---\n# {repo_id}\n")
    (repo / "config.json").write_text(json.dumps(config or {"model_type": "tiny", "architectures": ["Tiny"]}))
    save_file(weights if weights is not None else tiny_weights(seed), str(repo / "model.safetensors"))
    return repo


def crawled_zoo(out: Path, seed: int) -> str:
    """A tiny zoo trained for real at ``seed`` into ``out``, crawled into ``out/lake``; returns the lake."""
    from hubtree.ops.zoo.build import ZooSpec, build_zoo
    from hubtree.pipelines.crawl import crawl_flow

    build_zoo(out, seed=seed, spec=ZooSpec.tiny(), progress=False)
    lake = str(out / "lake")
    crawl_flow(hub=str(out / "hub"), lake=lake, progress=False)
    return lake
