"""The tree stage's input from per-layer rows: each model's point in weight space and its direction witnesses.

A model is the ``families.distance_vector`` of the sketches of its square attention
layers; its kurtosis witness is the excess kurtosis summed over the attention output
projections (MoTHer's direction evidence), its norm witness the RMS of those layers' entries. Models without square attention layers
(adapters, models without attention) have no place in weight space and are left out.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hubtree.ops.trees.families import architecture_signature, distance_vector, output_projections, square_attention_layers
from hubtree.ops.trees.mother import Models


def models_from_layers(rows: Sequence[Mapping], relation: Mapping[str, str]) -> tuple[Models, dict[str, str]]:
    """``Models`` from rows (repo_id, revision, tensor, shape, row_begin, row_end, numel, sketch, kurtosis,
    frobenius_norm, created_at) ordered by repo; also each model's revision.

    ``numel`` is what the sketch and statistics saw (a sample's entries, for sampled rows);
    the norm witness is the RMS over the chosen layers' entries, from ``frobenius_norm``
    (exact, where a sketch's norm would err by ~3%: more than a small fine-tune moves it).

    ``created_at`` is Unix seconds or None (unknown); ``relation`` is each repo's declared
    relation, of which ``quantized`` makes a model a leaf.
    """
    by_model: dict[str, list[Mapping]] = {}
    for row in rows:
        by_model.setdefault(row["repo_id"], []).append(row)
    ids, signatures, vectors, kurtosis, norm, created, quantized, revisions, sizes = [], [], [], [], [], [], [], {}, {}
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
        norm.append(math.sqrt(sum(by_name[n]["frobenius_norm"] ** 2 / by_name[n]["numel"] for n in chosen) / len(chosen)))
        created.append(layers[0]["created_at"] if layers[0]["created_at"] is not None else np.nan)
        quantized.append(relation.get(repo_id) == "quantized")
        revisions[repo_id] = layers[0]["revision"]
        sizes[signature] = [len(by_name[n]["sketch"]) for n in chosen]
    models = Models(ids, signatures, vectors, np.array(kurtosis), np.array(created, dtype=float), np.array(quantized), sizes, np.array(norm))
    return models, revisions
