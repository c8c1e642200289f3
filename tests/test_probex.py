"""The ProbeX expert on its own: probes from the SVD of the labelled updates, a ridge head on their responses labels models, the nets give the text space."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.ops.weights.probex import Probes, ProbexExpert, ProbexSettings, direction, fit_expert
from hubtree.pipelines.probex import load_probex_model

SETTINGS = ProbexSettings(r_u=4, r_v=8, r_t=8, epochs=30, lr=1e-2, folds=2, repeats=2)


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


def test_the_ridge_head_on_the_probe_responses_labels_unseen_members_and_the_nets_give_the_text_space():
    layers, y, base = _family(n=40)
    train = {name: x[:16] for name, x in layers.items()}
    text = F.normalize(torch.randn(2, 12, generator=torch.Generator().manual_seed(1)), dim=-1)
    expert, tried = fit_expert(train, y[:16], ["a", "b"], ["text a", "text b"], text, base, SETTINGS)
    assert set(tried) == {"signal", "noise"} and expert.layer == "signal" and tried["signal"] > tried["noise"]
    z = expert.responses(layers["signal"])  # ReLU(V^T X~ U), r_V x r_U a model
    assert len(expert.nets) == 2 and z.shape[1] == SETTINGS.r_v * SETTINGS.r_u and (z >= 0).all()
    assert expert.head.weight.shape == (z.shape[1] // 2, 2)  # the ridge reads A = V_0^T X~ U
    scores, reps = expert.predict(z)
    assert torch.allclose(scores, expert.head.scores(expert.probes.linear(z)))
    assert ((scores[16:] >= 0.5).float() == y[16:]).float().mean() >= 0.9  # 24 members it never saw
    q = expert.query(text)
    assert torch.allclose(reps.norm(dim=1), torch.ones(len(y))) and torch.allclose(q.norm(dim=1), torch.ones(2))
    arrays = {k: np.array(v) for k, v in expert.to_arrays("family3/").items()}
    again = ProbexExpert.from_arrays(arrays, "family3/")
    assert again.layer == "signal" and again.epochs == expert.epochs and len(again.nets) == 2
    assert torch.allclose(again.predict(again.responses(layers["signal"]))[0], scores)
    assert torch.allclose(again.predict(again.responses(layers["signal"]))[1], reps)
    assert torch.allclose(again.query(text), q)


def test_the_probes_are_the_principal_directions_of_the_updates_and_their_pairs_give_the_update_back():
    layers, y, base = _family(n=16)
    x = direction(layers["signal"], base["signal"])  # (16, 8, 6)
    probes = Probes.fit(x, ProbexSettings(r_v=20, r_u=8))  # more than the d_H = 8 and d_W = 6 directions there are
    v0, u = probes.projection[:, :8], probes.probes
    assert probes.projection.shape == (8, 16) and u.shape == (6, 6) and torch.allclose(probes.projection[:, 8:], -v0)
    assert torch.allclose(v0.T @ v0, torch.eye(8), atol=1e-5) and torch.allclose(u.T @ u, torch.eye(6), atol=1e-5)
    a = probes.linear(probes.responses(x)).view(16, 8, 6)  # ReLU(a) - ReLU(-a) = a = V_0^T X~ U: the update whole
    assert torch.allclose(v0 @ a @ u.T, x, atol=1e-4)
    few = Probes.fit(x, ProbexSettings(r_v=4, r_u=3))  # the top 2 x 3 directions: the most of the updates 2 x 3 can hold
    kept = few.linear(few.responses(x)).norm() ** 2 / x.norm() ** 2
    g = torch.Generator().manual_seed(2)
    rand = torch.linalg.qr(torch.randn(8, 2, generator=g))[0], torch.linalg.qr(torch.randn(6, 3, generator=g))[0]
    assert kept > (rand[0].T @ x @ rand[1]).norm() ** 2 / x.norm() ** 2


def test_large_layers_take_the_randomized_svd_and_keep_what_the_exact_one_keeps(monkeypatch):
    """Above EXACT_SVD_NUMEL the probes come from torch.svd_lowrank: updates of rank 4 each (6 models,
    rank 24 in all, within the 32 x 40 probes) are held whole either way."""
    from hubtree.ops.weights import probex

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 200, 4, generator=g) @ torch.randn(6, 4, 150, generator=g)
    s = ProbexSettings(r_v=64, r_u=40)
    exact = Probes.fit(x, s)
    monkeypatch.setattr(probex, "EXACT_SVD_NUMEL", 1000)
    randomized = Probes.fit(x, s)
    for probes in (exact, randomized):
        a = probes.linear(probes.responses(x))
        assert torch.allclose(a @ a.T, x.flatten(1) @ x.flatten(1).T, rtol=1e-3, atol=1e-2)  # the dense kernel
    assert randomized.projection.shape[1] <= 64 and randomized.probes.shape[1] <= 40


def test_the_expert_sees_where_an_update_went_not_how_far():
    layers, y, base = _family(n=16)
    expert, _ = fit_expert(layers, y, ["a", "b"], ["text a", "text b"], torch.eye(2, 12), base, SETTINGS)
    far = base["signal"] + 10 * (layers["signal"] - base["signal"])
    scores = expert.predict(expert.responses(layers["signal"]))[0]
    assert torch.allclose(expert.predict(expert.responses(far))[0], scores, atol=1e-5)
    assert ((scores >= 0.5).float() == y).all()


def test_a_model_fitted_by_an_older_hubtree_is_refused_with_what_to_do(tmp_path):
    buf = io.BytesIO()  # the previous layout: a ridge on the responses of gradient-trained probes
    np.savez(buf, families=np.array([0]), **{"family0/net0/text_map.weight": np.zeros((8, 12), np.float32),
                                              "family0/ridge/weight": np.zeros((32, 2), np.float32)})
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("probex-fit", "run1", {"blobs": [lake.write_blob("probex", "old", "run1", buf.getvalue(), ".npz")]})
    with pytest.raises(LakeError, match="older hubtree.*probex fit"):
        load_probex_model(lake)
