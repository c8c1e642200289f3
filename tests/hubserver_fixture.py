"""A test hub on 127.0.0.1: a tiny zoo of repos and a Hub-compatible server over it.

Import the fixtures into a test module (pytest picks them up from its namespace)::

    from hubserver_fixture import LLAMA2_RECORDS, hub_server, no_hf_token, tiny_hub

    def test_something(tiny_hub, hub_server):
        server = hub_server(tiny_hub, page_size=3)          # started now, stopped after the test
        hub = HttpHub(server.url)
        server.faults.requests                              # (method, path, Range) of every request

``hub_server(root=None, records=(), faults=None, page_size=...)`` takes the arguments of
``hubtree.hub_server.running``; outside pytest, use ``running`` itself as a context manager.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from hubtree.hub_server import RunningServer, running

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA2_RECORDS = FIXTURES / "hub_records_llama2_7b.jsonl"  # meta-llama/Llama-2-7b and 88 declared descendants
SD21_RECORDS = FIXTURES / "hub_records_sd2_1.jsonl"  # stabilityai/stable-diffusion-2-1 and 174 descendants

GATED_REPO = "gated/secret"


def make_tiny_hub(root: Path) -> Path:
    """Six repos in Hub layout, with distinct creation times (oldest first) so sorts are deterministic.

    ``org/base`` <- ``org/finetune`` <- ``org/finetune-2``; ``other/adapter`` (a LoRA on
    ``org/base``); ``other/merge`` of ``org/finetune`` and ``other/adapter``; and
    ``gated/secret``, gated by a ``.gated`` marker. Weights mix dtypes, a zero-size and
    a scalar tensor.
    """
    torch.manual_seed(0)
    base = {
        "embed.weight": torch.randn(16, 8),
        "layers.0.weight": torch.randn(8, 8).to(torch.float16),
        "layers.0.bias": torch.randn(8).to(torch.bfloat16),
        "positions": torch.arange(12, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "scale": torch.tensor(0.5),
    }
    repos = {
        "org/base": ({"license": "mit", "tags": ["llama"]}, base),
        "org/finetune": ({"base_model": "org/base", "tags": ["llama", "chat"]}, {k: v + 1 for k, v in base.items()}),
        "org/finetune-2": ({"base_model": "org/finetune"}, {"embed.weight": torch.randn(16, 8)}),
        "other/adapter": ({"base_model": "org/base", "library_name": "peft"}, {"lora_A": torch.randn(2, 8), "lora_B": torch.zeros(8, 2)}),
        "other/merge": ({"base_model": ["org/finetune", "other/adapter"], "tags": ["merge"]}, {"embed.weight": torch.randn(16, 8)}),
        GATED_REPO: ({"license": "other", "pipeline_tag": "text-generation"}, {"w": torch.randn(4, 4)}),
    }
    for when, (repo_id, (card, tensors)) in enumerate(repos.items()):
        folder = root / repo_id
        folder.mkdir(parents=True)
        (folder / "README.md").write_text("---\n" + json.dumps(card) + "\n---\n# " + repo_id + "\n")
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        if repo_id == "other/adapter":
            (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
        if repo_id == "org/finetune":
            (folder / "tokenizer").mkdir()
            (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
        for path in folder.rglob("*"):
            os.utime(path, (1_700_000_000 + when * 1000, 1_700_000_000 + when * 1000))
    (root / GATED_REPO / ".gated").write_text("manual")
    return root


@pytest.fixture
def tiny_hub(tmp_path: Path) -> Path:
    return make_tiny_hub(tmp_path / "hub")


@pytest.fixture
def hub_server():
    """Start servers on free ports; each stops when the test ends."""
    with ExitStack() as stack:

        def start(root: Path | None = None, **kwargs) -> RunningServer:
            return stack.enter_context(running(root, **kwargs))

        yield start


@pytest.fixture
def no_hf_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token from the environment or a saved login, so gating is tested as an anonymous user sees it."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
