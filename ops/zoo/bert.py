"""A BERT encoder written over a safetensors state dict, for fine-tuning real pretrained weights.

The realistic zoo (``hubtree.ops.zoo.realistic``) fine-tunes checkpoints such as
all-MiniLM-L6-v2 the way sentence-transformers and the Hugging Face Trainer do. We need
only the forward pass of a known architecture, so it is written here as plain functions on
a dict of tensors named as the checkpoint names them (``encoder.layer.{i}.attention.self.query.weight``):
nothing is unpickled, no model code is loaded, and a LoRA is just another entry added
to a weight before use. The tokenizer is WordPiece over the checkpoint's ``vocab.txt``.
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

Weights = Mapping[str, Tensor]


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1

    @classmethod
    def from_hf(cls, config: Mapping) -> BertConfig:
        """From a Hugging Face ``config.json`` of a BERT model."""
        return cls(
            config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"],
            config.get("layer_norm_eps", 1e-12), config.get("hidden_dropout_prob", 0.1),
        )


def encode(w: Weights, cfg: BertConfig, ids: Tensor, mask: Tensor, train: bool = False) -> Tensor:
    """Token states (B, T, H) of post-LayerNorm BERT: for each layer ``l``,

        a = LN(x + Wo softmax(Q K^T / sqrt(d_head) + mask) V),   x' = LN(a + W2 gelu(W1 a)).
    """
    p = cfg.dropout if train else 0.0
    b, t = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t] + w["embeddings.token_type_embeddings.weight"][0]
    x = F.dropout(_ln(w, "embeddings.LayerNorm", x, cfg), p, train)
    bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        q, k, v = (_linear(w, pre + f"attention.self.{n}", x).view(b, t, heads, d).transpose(1, 2) for n in ("query", "key", "value"))
        att = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1), p, train)
        ctx = (att @ v).transpose(1, 2).reshape(b, t, heads * d)
        x = _ln(w, pre + "attention.output.LayerNorm", x + F.dropout(_linear(w, pre + "attention.output.dense", ctx), p, train), cfg)
        h = F.gelu(_linear(w, pre + "intermediate.dense", x))
        x = _ln(w, pre + "output.LayerNorm", x + F.dropout(_linear(w, pre + "output.dense", h), p, train), cfg)
    return x


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers' mean pooling: the average of the non-padding token states."""
    m = mask[..., None].to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def mlm_logits(w: Weights, head: Weights, cfg: BertConfig, states: Tensor) -> Tensor:
    """BERT's masked-LM head: dense, gelu, LayerNorm, then the tied word embeddings plus a bias."""
    h = F.gelu(F.linear(states, head["transform.dense.weight"], head["transform.dense.bias"]))
    h = F.layer_norm(h, h.shape[-1:], head["transform.LayerNorm.weight"], head["transform.LayerNorm.bias"], cfg.layer_norm_eps)
    return F.linear(h, w["embeddings.word_embeddings.weight"], head["bias"])


def new_mlm_head(cfg: BertConfig, vocab: int, generator: torch.Generator) -> dict[str, Tensor]:
    """A freshly initialised masked-LM head (N(0, 0.02) dense), as when a sentence encoder has none."""
    h = cfg.hidden_size
    return {
        "transform.dense.weight": torch.randn(h, h, generator=generator) * 0.02,
        "transform.dense.bias": torch.zeros(h),
        "transform.LayerNorm.weight": torch.ones(h),
        "transform.LayerNorm.bias": torch.zeros(h),
        "bias": torch.zeros(vocab),
    }


def _linear(w: Weights, name: str, x: Tensor) -> Tensor:
    return F.linear(x, w[name + ".weight"], w[name + ".bias"])


def _ln(w: Weights, name: str, x: Tensor, cfg: BertConfig) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], cfg.layer_norm_eps)


# ----------------------------------------------------------------------------- tokenizer


class WordPiece:
    """BERT's uncased tokenizer: lower-case, strip accents, split punctuation, greedy longest match.

    Ids follow ``vocab.txt`` line order; ``[CLS] text [SEP]`` then padding with ``[PAD]``.
    """

    def __init__(self, vocab_file: Path):
        self.vocab = {tok: i for i, tok in enumerate(Path(vocab_file).read_text(encoding="utf-8").splitlines())}
        self.cls, self.sep, self.pad = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[PAD]"]
        self.unk, self.mask = self.vocab["[UNK]"], self.vocab["[MASK]"]

    def tokens(self, text: str) -> list[int]:
        out: list[int] = []
        for word in _basic_split(text):
            out += self._word(word)
        return out

    def _word(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def batch(self, texts: Sequence[str], seq_len: int) -> tuple[Tensor, Tensor]:
        """(ids, attention mask), both (len(texts), seq_len), truncated and padded."""
        ids = torch.full((len(texts), seq_len), self.pad, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [self.cls] + self.tokens(text)[: seq_len - 2] + [self.sep]
            ids[i, : len(row)] = torch.tensor(row)
        return ids, (ids != self.pad).long()


def _basic_split(text: str) -> list[str]:
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    words, current = [], []
    for c in text:
        if c.isspace() or unicodedata.category(c).startswith("C"):
            words.append("".join(current))
            current = []
        elif _is_punctuation(c):
            words += ["".join(current), c]
            current = []
        else:
            current.append(c)
    words.append("".join(current))
    return [w for w in words if w]


def _is_punctuation(c: str) -> bool:
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c).startswith("P")
