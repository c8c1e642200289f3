"""ProbeX: probes of one weight matrix, what a model was trained on, in a space shared with text.

methods.md §7. One expert per model tree (family); each reads one layer X (d_H x d_W) of
every member. The untrained fingerprint (``probes.probe_features``) uses random U and V; here
they are learned from the family's labelled members:

    Z = ReLU(V^T X~ U)                      r_V x r_U responses to the probes U (d_W x r_U) and the
                                            projection V = [V_0, -V_0] (d_H x r_V), no bias
    V_0: top r_V/2 left singular vectors of the updates side by side [X~_1 ... X~_n]  (d_H x n d_W)
    U:   top r_U right singular vectors of the updates stacked [X~_1; ...; X~_n]       (n d_H x d_W)
    A = Z[:r_V/2] - Z[r_V/2:] = V_0^T X~ U  because ReLU(a) - ReLU(-a) = a

    r = (A - mu) w + y_bar,  w = A_c^T (K + lam tr(K)/n I)^-1 (Y - y_bar),  K = A_c A_c^T
    p = sigmoid(8 (r - 1/2))                label scores: a ridge head on Z whose weights on the
                                            pair ReLU(a), ReLU(-a) are w and -w

    h = W_e vec(Z) + b_e                    the representation (width r_T) of each of m nets,
    s_l = cos(h, W_t t_l) / tau             trained on BCE(W_c h + b_c) plus cross-entropy over the
                                            frozen text embeddings t_l of the labels' texts

X~ = sqrt(d_H d_W) (X - B) / ||X - B||_F keeps only the direction of a model's update from
its family's base B (the tree's root where the lake has it, else the members' mean): the
weights the family shares do not drown the update, and how far a fine-tune went (its
learning rate and length, the nuisance of a hub) does not count, only where it went.

Why these probes and this head. A linear model of the whole update, w = sum_i alpha_i X~_i,
lies in the column and row spaces of the labelled updates; probes spanning them keep all
such a model can read. A layer whose labelled updates span at most r_V/2 x r_U directions
is held whole in A, and the head is then the dense ridge on the update; a larger layer
keeps its top directions. A family has ~20 labelled members, too few for gradients to find
better probes: on the labelled zoos of tuning seeds 0 and 3 (48 family-layers), the ridge on
A at r = 128 fell below the dense ridge on 1 and rose above it on 2 (at r = 64: below on
11), where a ridge on all of Z, on random probes or on probes trained 150 epochs by
gradient fell below it on 16-38. So the probes are learned by the SVD of the labelled
updates, not by gradient; the nets learn the encoder, label head and text map on the
fixed Z, and give the text space.

The layer is the candidate whose head (probes from the fold's training members) labels the
held-out fold best, in k-fold cross-validation repeated over ``repeats`` fold splits
(``fit_expert``); the nets' epoch count is the best of the same cross-validation, and each
repeat's seed gives one net. A query's embedding q reaches each net's space through its
W_t; the representation is the nets' unit h concatenated and scaled by 1/sqrt(m), so
``h . q`` is the mean of their cosines, ranks models by text, and a model never labelled is
found by its weights.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ProbexSettings:
    """Sizes and training of one expert: 128 probes (r_u = r_v), the paper's size."""

    r_u: int = 128
    r_v: int = 128  # even: V is r_v / 2 directions and their negatives
    r_t: int = 128
    epochs: int = 150  # at most; the count is chosen by cross-validation
    repeats: int = 2  # fold splits averaged for the layer and epoch choice; one net per repeat
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128
    temperature: float = 0.1
    align_weight: float = 1.0
    folds: int = 4  # cross-validation folds for the layer and epoch choice
    seed: int = 0
    ridge: float = 1e-3  # lam of the ridge head, relative to the mean eigenvalue of the kernel


@dataclass
class Probes:
    """V (d_H, r_V) and U (d_W, r_U) of the module docstring, and the responses they give."""

    projection: Tensor
    probes: Tensor

    @classmethod
    def fit(cls, x: Tensor, s: ProbexSettings) -> Probes:
        """V = [V_0, -V_0] and U from the SVDs of the updates x (n, d_H, d_W): r_V / 2 and r_U directions,
        or as many as the updates have where that is fewer (then A holds each update whole)."""
        n, d_h, d_w = x.shape
        v0 = _top_left(x.permute(1, 0, 2).reshape(d_h, n * d_w), s.r_v // 2)
        return cls(torch.cat([v0, -v0], dim=1), _top_left(x.reshape(n * d_h, d_w).T, s.r_u))

    def responses(self, x: Tensor) -> Tensor:
        """Z = ReLU(V^T X~ U) for a batch (n, d_H, d_W) of directions, flattened to (n, r_V r_U) (r: the probes' count)."""
        return torch.relu(self.projection.T @ x.float() @ self.probes).flatten(1)

    def linear(self, z: Tensor) -> Tensor:
        """A = Z[:r_V/2] - Z[r_V/2:] = V_0^T X~ U from flattened responses (n, r_V r_U), flattened (n, r_V r_U / 2)."""
        z = z.view(len(z), self.projection.shape[1], -1)
        half = z.shape[1] // 2
        return (z[:, :half] - z[:, half:]).flatten(1)


EXACT_SVD_NUMEL = 1 << 24  # numbers in the updates up to which their SVD is exact (a 384 x 384 layer of 100 models)


def _top_left(m: Tensor, k: int) -> Tensor:
    """The top ``k`` left singular vectors of ``m`` (float32), or as many as its numerical rank where that is fewer.

    Exact in float64 up to ``EXACT_SVD_NUMEL`` numbers; above, a randomized SVD (``torch.svd_lowrank``,
    k + 10 columns, 4 power iterations) in float32, since the exact one of a 4096-row layer of
    20 models (4096 x 81920) costs minutes per cross-validation fold and its float64 copy 2.7 GB.
    """
    if m.numel() <= EXACT_SVD_NUMEL:
        left, sv, _ = torch.linalg.svd(m.double(), full_matrices=False)
    else:
        left, sv, _ = torch.svd_lowrank(m.float(), q=min(k + 10, *m.shape), niter=4)
    return left[:, : min(k, _rank(sv))].float()


def _rank(singular_values: Tensor) -> int:
    return max(1, int((singular_values > singular_values[0] * 1e-6).sum()))


class ProbexNet(nn.Module):
    """The trained part of an expert, on fixed responses Z: encoder, label head, text map."""

    def __init__(self, n_responses: int, n_labels: int, text_dim: int, s: ProbexSettings):
        super().__init__()
        self.encoder = nn.Linear(n_responses, s.r_t)
        self.head = nn.Linear(s.r_t, n_labels)
        self.text_map = nn.Linear(text_dim, s.r_t, bias=False)

    def represent(self, z: Tensor) -> Tensor:
        return self.encoder(z)

    def text_space(self, text: Tensor) -> Tensor:
        return F.normalize(self.text_map(text), dim=-1)


@dataclass
class RidgeHead:
    """Label scores from features z (n, F): the dual-form ridge of the module docstring."""

    mean: Tensor  # mu (F,)
    weight: Tensor  # w (F, L)
    y_mean: Tensor  # y_bar (L,)

    @classmethod
    def fit(cls, z: Tensor, y: Tensor, lam: float) -> RidgeHead:
        """w = Z_c^T (K + lam tr(K)/n I)^-1 (Y - y_bar) for features z (n, F) and labels y (n, L)."""
        z, y = z.double(), y.double()
        mean, y_mean = z.mean(0), y.mean(0)
        zc = z - mean
        k = zc @ zc.T
        alpha = torch.linalg.solve(k + lam * k.trace() / len(k) * torch.eye(len(k), dtype=k.dtype), y - y_mean)
        return cls(mean.float(), (zc.T @ alpha).float(), y_mean.float())

    def scores(self, z: Tensor) -> Tensor:
        """p = sigmoid(8 (r - 1/2)) for features z (n, F)."""
        return torch.sigmoid(8 * ((z - self.mean) @ self.weight + self.y_mean - 0.5))


HEAD_ARRAYS = ("mean", "weight", "y_mean")  # the ridge head's arrays in a stored expert, under head/


@dataclass
class ProbexExpert:
    """A fitted expert of one family: its layer, the centring, its probes, the ridge head on their
    responses (the label scores), its nets (the text space), its labels and their texts."""

    layer: str
    shape: tuple[int, int]
    labels: list[str]
    texts: list[str]
    center: Tensor  # B, (d_H, d_W)
    probes: Probes
    nets: list[ProbexNet]
    head: RidgeHead
    settings: ProbexSettings
    val_accuracy: float
    epochs: int

    def normalise(self, x: Tensor) -> Tensor:
        return direction(x, self.center)

    def responses(self, layers: Tensor) -> Tensor:
        """The probe responses Z (n, r_V r_U) of raw layers (n, d_H, d_W): what a worker computes next to the weights."""
        with torch.no_grad():
            return self.probes.responses(self.normalise(layers))

    def predict(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(scores in [0, 1] per label (n, L) from the ridge head, representations (n, m r_T) of unit norm) from responses."""
        with torch.no_grad():
            hs = [F.normalize(net.represent(z), dim=-1) for net in self.nets]
            return self.head.scores(self.probes.linear(z)), torch.cat(hs, dim=1) / math.sqrt(len(hs))

    def query(self, text_embeddings: Tensor) -> Tensor:
        """Text embeddings (n, 384) mapped into the space of ``predict``'s representations (their dot = mean cosine)."""
        with torch.no_grad():
            return torch.cat([net.text_space(text_embeddings.float()) for net in self.nets], dim=1) / math.sqrt(len(self.nets))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}net{i}/{k}": v.detach().numpy() for i, net in enumerate(self.nets) for k, v in net.state_dict().items()}
        head = {f"{prefix}head/{k}": getattr(self.head, k).numpy() for k in HEAD_ARRAYS}
        return arrays | head | {
            f"{prefix}probes/projection": self.probes.projection.numpy(),
            f"{prefix}probes/probes": self.probes.probes.numpy(),
            f"{prefix}center": self.center.numpy(),
            f"{prefix}meta": np.array([self.layer, *self.labels]),
            f"{prefix}texts": np.array(self.texts),
            f"{prefix}numbers": np.array([self.val_accuracy, self.epochs, self.settings.r_u, self.settings.r_v,
                                          self.settings.r_t, self.settings.temperature, len(self.nets)]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ProbexExpert:
        layer, *labels = (str(v) for v in arrays[f"{prefix}meta"])
        val_accuracy, epochs, r_u, r_v, r_t, temperature, m = arrays[f"{prefix}numbers"].tolist()
        head = RidgeHead(*(torch.from_numpy(arrays[f"{prefix}head/{k}"]) for k in HEAD_ARRAYS))
        probes = Probes(torch.from_numpy(arrays[f"{prefix}probes/projection"]), torch.from_numpy(arrays[f"{prefix}probes/probes"]))
        settings = ProbexSettings(r_u=int(r_u), r_v=int(r_v), r_t=int(r_t), temperature=temperature, repeats=int(m))
        center = torch.from_numpy(arrays[f"{prefix}center"])
        text_dim = arrays[f"{prefix}net0/text_map.weight"].shape[1]
        nets = []
        for i in range(int(m)):
            net = ProbexNet(probes.projection.shape[1] * probes.probes.shape[1], len(labels), text_dim, settings)
            net.load_state_dict({k: torch.from_numpy(arrays[f"{prefix}net{i}/{k}"]) for k in net.state_dict()})
            nets.append(net)
        return cls(layer, tuple(center.shape), labels, [str(t) for t in arrays[f"{prefix}texts"]], center, probes, nets,
                   head, settings, val_accuracy, int(epochs))


# ----------------------------------------------------------------------------- fitting


def train_net(z: Tensor, y: Tensor, text: Tensor, s: ProbexSettings, epochs: int,
              z_val: Tensor | None = None, y_val: Tensor | None = None) -> tuple[ProbexNet, list[float]]:
    """Adam on BCE(head) + align_weight * CE(cosine logits over label texts) on fixed responses z, for ``epochs`` epochs.

    Returns the net after the last epoch and, when a validation set is given, its head's mean
    per-label accuracy after each epoch (the caller picks the best epoch count).
    """
    torch.manual_seed(s.seed)
    net = ProbexNet(z.shape[1], y.shape[1], text.shape[1], s)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, weight_decay=s.weight_decay, fused=True)  # one kernel a step: 2M weights
    target = y / y.sum(1, keepdim=True).clamp(min=1)  # a model with k labels: 1/k on each
    history = []
    for _ in range(epochs):
        for rows in torch.randperm(len(z)).split(s.batch_size):
            h = net.represent(z[rows])
            logits = F.normalize(h, dim=-1) @ net.text_space(text).T / s.temperature
            align = -(target[rows] * logits.log_softmax(-1)).sum(-1)[y[rows].sum(1) > 0].mean().nan_to_num()
            loss = F.binary_cross_entropy_with_logits(net.head(h), y[rows]) + s.align_weight * align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if z_val is not None:
            with torch.no_grad():
                history.append(label_accuracy(torch.sigmoid(net.head(net.represent(z_val))), y_val))
    return net, history


def label_accuracy(scores: Tensor, y: Tensor) -> float:
    """Mean over labels of the accuracy of ``score >= 0.5`` (Model-J's metric)."""
    return ((scores >= 0.5).float() == y).float().mean(0).mean().item()


def folds(n: int, k: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """A seeded k-fold split of n rows: (train, validation) pairs whose validation rows cover all n once."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = [p for p in order.tensor_split(min(k, n)) if len(p)]
    return [(torch.cat([q for j, q in enumerate(parts) if j != i]), p) for i, p in enumerate(parts)]


def direction(x: Tensor, center: Tensor) -> Tensor:
    """sqrt(d_H d_W) (X - B) / ||X - B||_F for each layer of a batch (n, d_H, d_W): entries of order 1."""
    d = x.float() - center
    return d * math.sqrt(center.numel()) / d.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def fit_expert(layers: dict[str, Tensor], y: Tensor, labels: Sequence[str], texts: Sequence[str], text: Tensor,
               base: dict[str, Tensor] | None = None, s: ProbexSettings = ProbexSettings()) -> tuple[ProbexExpert, dict[str, float]]:
    """The family's expert. Each candidate layer (name -> (n, d_H, d_W)) is scored by its label
    head, probes and ridge fitted on a fold's training members, in k-fold cross-validation over
    the labelled members repeated over ``s.repeats`` fold splits (a family has few labelled
    members, and one split picks layers by chance). On the best layer the probes and the head
    are fitted on all members; the nets' epoch count is the best of the same repeated
    cross-validation, and each repeat's seed gives one net. ``base`` holds the family base's
    layers (else the labelled members' mean stands in for it).

    Returns the expert and every candidate's cross-validated accuracy (the layer choice, shown).
    """
    centers = {name: base[name].float() if base else x.float().mean(0) for name, x in layers.items()}
    seeds = [replace(s, seed=s.seed + i) for i in range(s.repeats)]
    runs = [(r, tr, va) for r in seeds for tr, va in folds(len(y), r.folds, r.seed)]

    def fold_responses(x: Tensor, train: Tensor) -> tuple[Probes, Tensor]:
        probes = Probes.fit(x[train], s)
        return probes, probes.responses(x)

    scores = {}
    for name, x in layers.items():
        x = direction(x, centers[name])
        correct = 0.0
        for _, tr, va in runs:
            probes, z = fold_responses(x, tr)
            a = probes.linear(z)
            correct += label_accuracy(RidgeHead.fit(a[tr], y[tr], s.ridge).scores(a[va]), y[va]) * len(va)
        scores[name] = correct / (len(y) * len(seeds))
    layer = max(scores, key=lambda n: (scores[n], -list(layers).index(n)))
    x = direction(layers[layer], centers[layer])
    curves = []
    for r, tr, va in runs:
        z = fold_responses(x, tr)[1]
        curves.append(np.array(train_net(z[tr], y[tr], text, r, r.epochs, z[va], y[va])[1]) * len(va))
    epochs = int(np.argmax(sum(curves))) + 1  # the first epoch count at the best mean accuracy
    probes, z = fold_responses(x, torch.arange(len(y)))
    nets = [train_net(z, y, text, r, epochs)[0] for r in seeds]
    head = RidgeHead.fit(probes.linear(z), y, s.ridge)
    expert = ProbexExpert(layer, tuple(x.shape[1:]), list(labels), list(texts), centers[layer], probes, nets, head, s, scores[layer], epochs)
    return expert, scores
