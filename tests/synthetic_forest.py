"""A lake holding one synthetic family of N models (trees, repos, layer stats) for drawing tests:
a root missing from the hub (no weights), fine-tune chains and bushy levels, declared,
recovered and duplicate edges, and heavy-tailed alphas (outliers the histograms must clip)."""
from __future__ import annotations

import random

from hubtree.lake import Lake


def forest_lake(root: str, n: int, seed: int = 0) -> Lake:
    rng = random.Random(seed)
    names = ["org/base-missing"] + [f"org/ft-{i:04d}" for i in range(1, n)]
    edges = [{"child_repo_id": names[0], "parent_repo_id": None, "family_id": 0, "source": "root"}]
    for i in range(1, n):
        parent = names[rng.randrange(max(1, i - 8), i) if i > 4 else 0]  # local chains, so depth grows with n
        source = rng.choice(["declared", "recovered", "recovered", "duplicate"] if i % 17 == 0 else ["declared", "recovered", "recovered"])
        edges.append({"child_repo_id": names[i], "parent_repo_id": parent, "family_id": 0, "source": source,
                      "confidence": 1.0 if source == "declared" else round(rng.uniform(0.3, 1.0), 2)})
    families = [{"repo_id": m, "revision": "r", "family_id": 0, "direction_rule": "parent has the larger norm (default)"} for m in names]
    repos = [{"repo_id": m, "revision": "r", "author": "org", "n_tensors": 8} for m in names[1:]]
    stats = [{"repo_id": m, "revision": "r", "tensor": f"model.layers.{layer}.self_attn.q_proj.weight", "shape": [16, 16],
              "kurtosis": rng.gauss(0.5, 0.4) if rng.random() > 0.02 else rng.uniform(50, 500),
              "alpha": rng.gauss(3.5 + layer * 0.4, 0.6) if rng.random() > 0.02 else rng.uniform(20, 80),
              "stable_rank": rng.uniform(2, 12)}
             for m in names[1:min(n, 200)] for layer in range(8)]
    lake = Lake(root)
    lake.commit("crawl", "c", {"repos": repos, "layer_stats": stats})
    lake.commit("trees", "t", {"tree_edges": edges, "families": families})
    return lake
