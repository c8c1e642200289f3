"""The tree stage's input from per-layer rows: each model's point in weight space and its direction witnesses.

A model is the ``families.distance_vector`` of the sketches of its square attention
layers; its witnesses are the excess kurtosis summed over the attention output
projections (MoTHer's direction evidence), and the exact norm and summed entropy effective
rank of the square attention layers (``direction``), all from ``layer_stats``. Models without square attention layers
(adapters, models without attention) have no place in weight space and are left out.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hubtree.ops.trees.families import architecture_signature, distance_vector, output_projections, square_attention_layers
from hubtree.ops.trees.mother import Models


def models_from_layers(rows: Sequence[Mapping], relation: Mapping[str, str]) -> tuple[Models, dict[str, str]]:
    """``Models`` from rows (repo_id, revision, tensor, shape, row_begin, row_end, numel, sketch, kurtosis,
    created_at, and where known frobenius_norm and entropy_effective_rank) ordered by repo; also
    each model's revision.

    ``numel`` is what the sketch and statistics saw (a sample's entries, for sampled rows);
    every model of a block is read at the same rows, so witnesses from samples compare.

    ``created_at`` is Unix seconds or None (unknown); ``relation`` is each repo's declared
    relation, of which ``quantized`` makes a model a leaf.
    """
    by_model: dict[str, list[Mapping]] = {}
    for row in rows:
        by_model.setdefault(row["repo_id"], []).append(row)
    ids, signatures, vectors, kurtosis, norms, ranks, created, quantized, revisions, sizes = [], [], [], [], [], [], [], [], {}, {}
    for repo_id, layers in by_model.items():
        shapes = {r["tensor"]: r["shape"] for r in layers}
        chosen = square_attention_layers(shapes)
        if not chosen:
            continue  # adapters and models without attention matrices have no place in weight space
        by_name = {r["tensor"]: r for r in layers}
        # The rows read are part of the block: models sampled at other rows are never compared.
        signature = architecture_signature({n: [*shapes[n], by_name[n]["row_begin"], by_name[n]["row_end"]] for n in chosen}, chosen)
        ids.append(repo_id)
        signatures.append(signature)
        vectors.append(distance_vector([by_name[n]["sketch"] for n in chosen], [by_name[n]["numel"] for n in chosen]))
        kurtosis.append(sum(by_name[n]["kurtosis"] for n in output_projections(chosen)))
        norms.append(_root_sum_square([by_name[n].get("frobenius_norm") for n in chosen]))
        ranks.append(_total([by_name[n].get("entropy_effective_rank") for n in chosen]))
        created.append(layers[0]["created_at"] if layers[0]["created_at"] is not None else np.nan)
        quantized.append(relation.get(repo_id) == "quantized")
        revisions[repo_id] = layers[0]["revision"]
        sizes[signature] = [len(by_name[n]["sketch"]) for n in chosen]
    models = Models(
        ids, signatures, vectors, np.array(kurtosis), np.array(created, dtype=float), np.array(quantized), sizes,
        np.array(norms, dtype=float), np.array(ranks, dtype=float),
    )  # fmt: skip
    return models, revisions


def _root_sum_square(values: Sequence[float | None]) -> float:
    """The chosen layers' joint Frobenius norm, nan when a layer's is unknown."""
    return float(np.sqrt(sum(v * v for v in values))) if None not in values else np.nan


def _total(values: Sequence[float | None]) -> float:
    return float(sum(values)) if None not in values else np.nan
