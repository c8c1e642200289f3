"""The tree stage's input: each model's point from its square attention sketches, its kurtosis witness from the output projections."""
from __future__ import annotations

import numpy as np

from hubtree.ops.trees.families import distance_vector
from hubtree.ops.trees.inputs import models_from_layers


def _layers(repo_id: str, seed: int, created_at: float | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, shape, kurt in [("model.layers.0.self_attn.q_proj.weight", [4, 4], 1.0), ("model.layers.0.self_attn.o_proj.weight", [4, 4], 2.5),
                              ("model.layers.0.mlp.up_proj.weight", [8, 4], 9.0)]:
        rows.append({"repo_id": repo_id, "revision": f"rev-{repo_id}", "tensor": name, "shape": shape,
                     "row_begin": None, "row_end": None, "numel": int(np.prod(shape)),  # whole tensors, as the lake gives them
                     "sketch": rng.normal(size=6).tolist(), "kurtosis": kurt + seed, "created_at": created_at})
    return rows


def test_models_are_points_of_their_square_attention_layers_with_kurtosis_of_the_output_projection():
    adapter = [{"repo_id": "org/lora", "revision": "r", "tensor": "base.q_proj.lora_A.weight", "shape": [2, 4],
                "row_begin": None, "row_end": None, "numel": 8, "sketch": [0.0], "kurtosis": 0.0, "created_at": None}]
    rows = _layers("org/a", 0, created_at=100.0) + _layers("org/b", 1) + adapter
    models, revisions = models_from_layers(rows, relation={"org/b": "quantized"})
    assert models.ids == ["org/a", "org/b"]  # the adapter has no square attention layer
    assert revisions == {"org/a": "rev-org/a", "org/b": "rev-org/b"}
    np.testing.assert_array_equal(models.kurtosis, [2.5, 3.5])  # the o_proj only, not q_proj or the MLP
    np.testing.assert_array_equal(models.quantized, [False, True])
    assert models.created_at[0] == 100.0 and np.isnan(models.created_at[1])
    attn = sorted((r for r in rows[:3] if "attn" in r["tensor"]), key=lambda r: r["tensor"])
    np.testing.assert_allclose(models.vectors[0], distance_vector([r["sketch"] for r in attn], [16, 16]))
    assert models.signature[0] == models.signature[1] and models.layer_sizes[models.signature[0]] == [6, 6]
