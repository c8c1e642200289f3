"""The bundled MiniLM, run by hubtree's own BERT forward pass: same tokens and vectors as sentence-transformers."""
from __future__ import annotations

import pytest
import torch

from hubtree.ops.text.encoder import text_encoder


@pytest.fixture(scope="module")
def encoder():
    return text_encoder()


def test_wordpiece_splits_like_berts_tokenizer(encoder):
    ids, mask = encoder.tokenizer.batch(["Héllo, wörld! 東京 tokenization's edge-cases", "a"])
    # The ids bert-base-uncased's tokenizer gives (accents dropped, CJK characters and punctuation split).
    assert ids[0].tolist() == [101, 7592, 1010, 2088, 999, 1879, 1755, 19204, 3989, 1005, 1055, 3341, 1011, 3572, 102]
    assert mask[1].tolist() == [1, 1, 1] + [0] * 12


def test_embedding_matches_sentence_transformers(encoder):
    vec = encoder.embed(["Radiology reports describing chest X-ray findings."])[0]
    # sentence-transformers' all-MiniLM-L6-v2 (mean pooling, normalised), first four numbers.
    assert vec[:4].tolist() == pytest.approx([0.09343, 0.08049, -0.0323, 0.01704], abs=1e-4)
    assert vec.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_a_paraphrase_is_nearest_its_description(encoder):
    descriptions = ["Radiology reports describing chest X-ray findings.", "Chess games written in algebraic notation.",
                    "Customer reviews of kitchen appliances labelled as positive or negative."]
    q = encoder.embed(["what shoppers thought of the blenders and toasters they bought"])[0]
    assert int(torch.argmax(encoder.embed(descriptions) @ q)) == 2
