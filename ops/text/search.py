"""Rank models by a free-text query: through the labels they have (known or predicted) and through ProbeX's text space.

A query q and every label's text t_l are embedded by the same sentence encoder. The query
picks labels softly, P(l | q) = softmax_l(cos(q, t_l) / tau), so a paraphrase of a label's
description lands on that label even when it shares no word with it. A model m then scores

    score(m) = (1 - beta) * sum_l P(l | q) p(m, l)  +  beta * (1 + cos(h_m, W_t q)) / 2

with p(m, l) = 1 for a label the model is known to have, else its expert's predicted score,
and h_m its expert's text-aligned representation (``ProbexExpert.predict``/``query``): a model
that was never labelled is found by what its weights say, and models that match equally well
on labels are ordered by how close their weights sit to the query itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

QUERY_TEMPERATURE = 0.05
ALIGN_WEIGHT = 0.25


@dataclass(frozen=True)
class Hit:
    repo_id: str
    score: float
    label: str | None  # the label that carried most of the score
    evidence: str  # known | predicted | weights


def rank(query: torch.Tensor, label_texts: dict[str, torch.Tensor], label_scores: dict[str, dict[str, float]],
         known: dict[str, set[str]], aligned: dict[str, float], limit: int) -> list[Hit]:
    """The ``limit`` best models for one query.

    Args:
        query: the query's unit embedding (d,).
        label_texts: label -> unit embedding of its text (d,).
        label_scores: repo -> label -> predicted score in [0, 1].
        known: repo -> labels it is known to have (from the fit's labels).
        aligned: repo -> cos(h_m, W_t q) from the model's expert.
    """
    labels = sorted(label_texts)
    weights = {}
    if labels:
        sims = torch.stack([label_texts[l] for l in labels]) @ query
        weights = dict(zip(labels, (sims / QUERY_TEMPERATURE).softmax(0).tolist()))
    hits = []
    for repo in sorted(set(label_scores) | set(known) | set(aligned)):
        parts = {l: w * (1.0 if l in known.get(repo, ()) else label_scores.get(repo, {}).get(l, 0.0)) for l, w in weights.items()}
        best = max(parts, key=parts.get, default=None)
        by_labels = sum(parts.values())
        score = (1 - ALIGN_WEIGHT) * by_labels + ALIGN_WEIGHT * (1 + aligned[repo]) / 2 if repo in aligned else (1 - ALIGN_WEIGHT) * by_labels
        evidence = "weights" if best is None or parts[best] == 0 else "known" if best in known.get(repo, ()) else "predicted"
        hits.append(Hit(repo, score, best if evidence != "weights" else None, evidence))
    hits.sort(key=lambda h: (-h.score, h.repo_id))
    return hits[:limit]
