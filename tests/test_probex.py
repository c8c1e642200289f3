"""The ProbeX expert on its own: an average of nets, chosen and refitted over repeated cross-validation."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.ops.weights.probex import ProbexExpert, ProbexSettings, fit_expert
from hubtree.pipelines.probex import load_probex_model

SETTINGS = ProbexSettings(r_u=4, r_v=4, r_t=8, epochs=30, lr=1e-2, folds=2, repeats=2)


def _family(n: int = 16, seed: int = 0):
    """Members = base + (their labels' directions + noise) at a random scale: the scale says nothing."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(8, 6, generator=g)
    directions = torch.randn(2, 8, 6, generator=g)
    y = (torch.rand(n, 2, generator=g) < 0.5).float()
    y[0], y[1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    scale = torch.exp(torch.rand(n, generator=g) * 3)[:, None, None]
    update = torch.einsum("nl,lhw->nhw", y, directions) + 0.3 * torch.randn(n, 8, 6, generator=g)
    layers = {"signal": base + scale * update, "noise": base + torch.randn(n, 8, 6, generator=g)}
    return layers, y, {"signal": base, "noise": base}


def test_expert_averages_its_nets_and_survives_the_round_trip():
    layers, y, base = _family()
    text = F.normalize(torch.randn(2, 12, generator=torch.Generator().manual_seed(1)), dim=-1)
    expert, tried = fit_expert(layers, y, ["a", "b"], ["text a", "text b"], text, base, SETTINGS)
    assert set(tried) == {"signal", "noise"} and expert.layer == "signal" and len(expert.nets) == 2
    z = expert.responses(layers["signal"])
    scores, reps = expert.predict(z)
    each = [torch.sigmoid(net.head(net.represent(part))) for net, part in zip(expert.nets, z.chunk(2, dim=1))]
    assert torch.allclose(scores, torch.stack(each).mean(0).detach())
    assert ((scores >= 0.5).float() == y).float().mean() >= 0.9  # its training members
    q = expert.query(text)
    assert torch.allclose(reps.norm(dim=1), torch.ones(len(y))) and torch.allclose(q.norm(dim=1), torch.ones(2))
    arrays = {k: np.array(v) for k, v in expert.to_arrays("family3/").items()}
    again = ProbexExpert.from_arrays(arrays, "family3/")
    assert again.layer == "signal" and again.epochs == expert.epochs and len(again.nets) == 2
    assert torch.allclose(again.predict(again.responses(layers["signal"]))[0], scores)
    assert torch.allclose(again.query(text), q)


def test_a_model_fitted_by_an_older_hubtree_is_refused_with_what_to_do(tmp_path):
    buf = io.BytesIO()  # the previous layout: one net per expert, its keys straight under the family
    np.savez(buf, families=np.array([0]), **{"family0/text_map.weight": np.zeros((8, 12), np.float32)})
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("probex-fit", "run1", {"blobs": [lake.write_blob("probex", "old", "run1", buf.getvalue(), ".npz")]})
    with pytest.raises(LakeError, match="older hubtree.*probex fit"):
        load_probex_model(lake)
