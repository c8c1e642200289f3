"""ProbeX: learned probes of one weight matrix, what a model was trained on, in a space shared with text.

methods.md §7. One expert per model tree (family); each reads one layer X (d_H x d_W) of
every member. The untrained fingerprint (``probes.probe_features``) fixes U and V; here
they are learned:

    Z = ReLU(V^T X~ U)                      r_V x r_U responses to learned probes U (d_W x r_U),
                                            V (d_H x r_V) a shared projection, no bias
    h = W_e vec(Z) + b_e                    the representation (width r_T)
    p = sigmoid(W_c h + b_c)                multi-label scores (binary cross-entropy)
    s_l = cos(h, W_t t_l) / tau             alignment with the frozen text embedding t_l of
                                            each label's text (cross-entropy over labels)

X~ = sqrt(d_H d_W) (X - B) / ||X - B||_F keeps only the direction of a model's update from
its family's base B (the tree's root where the lake has it, else the members' mean): the
weights the family shares do not drown the update, and how far a fine-tune went (its
learning rate and length, the nuisance of a hub) does not count, only where it went.

The label scores come from a closed-form ridge head on the learned responses Z of the
expert's m nets, side by side, rather than from each net's gradient-trained head ``W_c``:

    r = (Z - mu) w + y_bar,  w = Z_c^T (K + lam tr(K)/n I)^-1 (Y - y_bar),  K = Z_c Z_c^T
    p = sigmoid(8 (r - 1/2))                a monotone squash of the 0/1 regression into [0, 1]

because a family has ~20 labelled members: a head fitted by gradient on so few labels
held-out members worse than the exact ridge on the same learned responses (mean per-label
accuracy on the labelled zoos of tuning seeds 0 / 3, 32 probes: 0.955 / 0.935 against
0.993 / 0.976; with 64 probes the ridge gives 1.000 / 0.983).
The probes U and projection V are still ProbeX's, learned with both losses above.

The layer is chosen before any net is trained: the same ridge on a fixed k x k Gaussian
sketch S = R_V^T X~ R_U of each candidate layer's direction, scored by k-fold
cross-validation repeated over ``repeats`` fold splits (``fit_expert``). E[<S_1, S_2>] is
proportional to <X~_1, X~_2>, so the sketch ranks layers as a dense linear probe of the
update would, at k^2 numbers a model; picking among a dozen layers by the nets' noisy
validation curves overfits the choice. The nets are then trained on that layer for the
epoch count best in the same cross-validation, once per repeat. A query's embedding q
reaches each net's space through its W_t; the representation is the nets' unit h
concatenated and scaled by 1/sqrt(m), so ``h . q`` is the mean of their cosines, ranks
models by text, and a model never labelled is found by its weights.
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
    """Sizes and training of one expert: 64 probes (r_u = r_v), where the paper uses 128."""

    r_u: int = 64
    r_v: int = 64
    r_t: int = 128
    epochs: int = 150  # at most; the count is chosen by cross-validation
    repeats: int = 2  # fold splits and initialisations averaged: the layer choice, and the expert's nets
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128
    temperature: float = 0.1
    align_weight: float = 1.0
    folds: int = 4  # cross-validation folds for the layer and epoch choice
    seed: int = 0
    sketch: int = 64  # k: the layer choice reads k x k numbers of each model's candidate layers
    ridge: float = 1e-3  # lam of the ridges, relative to the mean eigenvalue of the kernel


class ProbexNet(nn.Module):
    """The learned part of an expert: probes, projection, encoder, label head, text map."""

    def __init__(self, d_h: int, d_w: int, n_labels: int, text_dim: int, s: ProbexSettings):
        super().__init__()
        g = torch.Generator().manual_seed(s.seed)
        self.probes = nn.Parameter(torch.randn(d_w, s.r_u, generator=g) / math.sqrt(d_w))
        self.projection = nn.Parameter(torch.randn(d_h, s.r_v, generator=g) / math.sqrt(d_h))
        self.encoder = nn.Linear(s.r_v * s.r_u, s.r_t)
        self.head = nn.Linear(s.r_t, n_labels)
        self.text_map = nn.Linear(text_dim, s.r_t, bias=False)

    def responses(self, x: Tensor) -> Tensor:
        """Z = ReLU(V^T X U) for a batch (n, d_H, d_W) of centred layers, flattened to (n, r_V r_U)."""
        return torch.relu(self.projection.T @ x @ self.probes).flatten(1)

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


def sketches(d_h: int, d_w: int, s: ProbexSettings) -> tuple[Tensor, Tensor]:
    """R_V (d_H, k) and R_U (d_W, k), fixed Gaussian, for the layer choice."""
    g = torch.Generator().manual_seed(s.seed)
    return torch.randn(d_h, s.sketch, generator=g) / math.sqrt(d_h), torch.randn(d_w, s.sketch, generator=g) / math.sqrt(d_w)


def sketch(x: Tensor, v: Tensor, u: Tensor) -> Tensor:
    """S = R_V^T X R_U of each layer of a batch (n, d_H, d_W), flattened to (n, k^2)."""
    return (v.T @ x.float() @ u).flatten(1)


RIDGE_ARRAYS = ("mean", "weight", "y_mean")  # the head's arrays in a stored expert


@dataclass
class ProbexExpert:
    """A fitted expert of one family: its layer, the centring, its nets, the ridge head on their
    responses (the label scores), its labels and their texts."""

    layer: str
    shape: tuple[int, int]
    labels: list[str]
    texts: list[str]
    center: Tensor  # B, (d_H, d_W)
    nets: list[ProbexNet]
    head: RidgeHead
    settings: ProbexSettings
    val_accuracy: float
    epochs: int

    def normalise(self, x: Tensor) -> Tensor:
        return direction(x, self.center)

    def responses(self, layers: Tensor) -> Tensor:
        """Every net's probe responses Z of raw layers (n, d_H, d_W), side by side (n, m r_V r_U):
        what a worker computes next to the weights."""
        with torch.no_grad():
            x = self.normalise(layers)
            return torch.cat([net.responses(x) for net in self.nets], dim=1)

    def predict(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(scores in [0, 1] per label (n, L) from the ridge head, representations (n, m r_T) of unit norm) from responses."""
        with torch.no_grad():
            hs = [net.represent(part) for net, part in zip(self.nets, z.chunk(len(self.nets), dim=1))]
            return self.head.scores(z), torch.cat([F.normalize(h, dim=-1) for h in hs], dim=1) / math.sqrt(len(hs))

    def query(self, text_embeddings: Tensor) -> Tensor:
        """Text embeddings (n, 384) mapped into the space of ``predict``'s representations (their dot = mean cosine)."""
        with torch.no_grad():
            return torch.cat([net.text_space(text_embeddings.float()) for net in self.nets], dim=1) / math.sqrt(len(self.nets))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}net{i}/{k}": v.detach().numpy() for i, net in enumerate(self.nets) for k, v in net.state_dict().items()}
        head = {f"{prefix}ridge/{k}": getattr(self.head, k).numpy() for k in RIDGE_ARRAYS}
        return arrays | head | {
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
        head = RidgeHead(*(torch.from_numpy(arrays[f"{prefix}ridge/{k}"]) for k in RIDGE_ARRAYS))
        settings = ProbexSettings(r_u=int(r_u), r_v=int(r_v), r_t=int(r_t), temperature=temperature, repeats=int(m))
        center = torch.from_numpy(arrays[f"{prefix}center"])
        text_dim = arrays[f"{prefix}net0/text_map.weight"].shape[1]
        nets = []
        for i in range(int(m)):
            net = ProbexNet(*center.shape, len(labels), text_dim, settings)
            net.load_state_dict({k: torch.from_numpy(arrays[f"{prefix}net{i}/{k}"]) for k in net.state_dict()})
            nets.append(net)
        return cls(layer, tuple(center.shape), labels, [str(t) for t in arrays[f"{prefix}texts"]], center, nets,
                   head, settings, val_accuracy, int(epochs))


# ----------------------------------------------------------------------------- fitting


def train_net(x: Tensor, y: Tensor, text: Tensor, s: ProbexSettings, epochs: int,
              x_val: Tensor | None = None, y_val: Tensor | None = None) -> tuple[ProbexNet, list[float]]:
    """Adam on BCE(head) + align_weight * CE(cosine logits over label texts), for ``epochs`` epochs.

    Returns the net after the last epoch and, when a validation set is given, its mean
    per-label accuracy after each epoch (the caller picks the best epoch count).
    """
    torch.manual_seed(s.seed)
    net = ProbexNet(x.shape[1], x.shape[2], y.shape[1], text.shape[1], s)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    target = y / y.sum(1, keepdim=True).clamp(min=1)  # a model with k labels: 1/k on each
    history = []
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(s.batch_size):
            h = net.represent(net.responses(x[rows]))
            logits = F.normalize(h, dim=-1) @ net.text_space(text).T / s.temperature
            align = -(target[rows] * logits.log_softmax(-1)).sum(-1)[y[rows].sum(1) > 0].mean().nan_to_num()
            loss = F.binary_cross_entropy_with_logits(net.head(h), y[rows]) + s.align_weight * align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if x_val is not None:
            with torch.no_grad():
                history.append(label_accuracy(torch.sigmoid(net.head(net.represent(net.responses(x_val)))), y_val))
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
    """The family's expert. Each candidate layer (name -> (n, d_H, d_W)) is scored by the ridge
    on its sketch, in k-fold cross-validation over the labelled members repeated over
    ``s.repeats`` fold splits (a family has few labelled members, and one split picks layers by
    chance). The nets are trained on the best layer: their epoch count is the best of the same
    repeated cross-validation, and each repeat's seed gives one net refitted on all members.
    The head is the ridge on the nets' responses. ``base`` holds the family base's layers (else
    the labelled members' mean stands in for it).

    Returns the expert and every candidate's cross-validated accuracy (the layer choice, shown).
    """
    centers = {name: base[name].float() if base else x.float().mean(0) for name, x in layers.items()}
    seeds = [replace(s, seed=s.seed + i) for i in range(s.repeats)]
    splits = [split for r in seeds for split in folds(len(y), r.folds, r.seed)]
    scores = {}
    for name, x in layers.items():
        z = sketch(direction(x, centers[name]), *sketches(x.shape[1], x.shape[2], s))
        scores[name] = sum(label_accuracy(RidgeHead.fit(z[tr], y[tr], s.ridge).scores(z[va]), y[va]) * len(va)
                           for tr, va in splits) / (len(y) * len(seeds))
    layer = max(scores, key=lambda n: (scores[n], -list(layers).index(n)))
    x = direction(layers[layer], centers[layer])
    curves = [np.array(train_net(x[tr], y[tr], text, r, r.epochs, x[va], y[va])[1]) * len(va)
              for r in seeds for tr, va in folds(len(y), r.folds, r.seed)]
    epochs = int(np.argmax(sum(curves))) + 1  # the first epoch count at the best mean accuracy
    nets = [train_net(x, y, text, r, epochs)[0] for r in seeds]
    with torch.no_grad():
        z = torch.cat([net.responses(x) for net in nets], dim=1)
    expert = ProbexExpert(layer, tuple(x.shape[1:]), list(labels), list(texts), centers[layer], nets, RidgeHead.fit(z, y, s.ridge),
                          s, scores[layer], epochs)
    return expert, scores
