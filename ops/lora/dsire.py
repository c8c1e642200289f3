"""DSiRe (Salama, Kahana, Horwitz, Hoshen; 2024): how many samples a LoRA adapter was trained on.

Training on more samples moves the adapter further and more evenly along its r directions, which
shows in the spectra. Per adapted layer l, three voters each see one spectrum

    f_{l,A} = sigma(A_l),   f_{l,B} = sigma(B_l),   f_{l,BA} = sigma(B_l A_l),

min-max normalised per dimension on the training adapters only. Each voter names the size of
its nearest training adapter (L2, 1-NN):  v(x) = y_{argmin_j ||f_v(x) - f_v(x_j)||_2};
the prediction is the majority over voters, ``y(x) = mode_v v(x)``, and the winner's vote share
says how sure it is.

Example:
    >>> model = DsireModel.fit([adapter_spectra(a) for a in train], sizes)     # doctest: +SKIP
    >>> estimate, share = model.predict([adapter_spectra(a) for a in test])   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hubtree.errors import ShapeMismatchError

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"  # PEFT's names: A (r, in), B (out, r)


def lora_pairs(adapter: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Module path -> (A, B) from a PEFT adapter's tensors; other tensors (biases, embeddings) are ignored."""
    modules = sorted(name.removesuffix(LORA_A) for name in adapter if name.endswith(LORA_A))
    return {m: (adapter[m + LORA_A].to(torch.float64), adapter[m + LORA_B].to(torch.float64)) for m in modules}


def adapter_spectra(adapter: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Voter name (``<module>/A``, ``/B``, ``/BA``) -> its singular values, descending, float64.

    ``sigma(B A)`` comes from the (r, r) core: with ``B = Q_B R_B`` and ``A^T = Q_A R_A``,
    ``B A = Q_B (R_B R_A^T) Q_A^T``, so no (out, in) matrix is ever formed.
    """
    spectra = {}
    for module, (a, b) in lora_pairs(adapter).items():
        spectra[f"{module}/A"] = torch.linalg.svdvals(a)
        spectra[f"{module}/B"] = torch.linalg.svdvals(b)
        spectra[f"{module}/BA"] = torch.linalg.svdvals(torch.linalg.qr(b).R @ torch.linalg.qr(a.mT).R.mT)
    return spectra


def _stack(features: Sequence[Mapping[str, Tensor]], voters: Sequence[str]) -> dict[str, np.ndarray]:
    """Voter -> (N, k) array over adapters, refusing adapters with other layers or ranks."""
    out = {}
    for voter in voters:
        rows = [f.get(voter) for f in features]
        if any(r is None for r in rows) or len({tuple(r.shape) for r in rows}) > 1:
            raise ShapeMismatchError(
                f"adapters disagree on voter {voter!r} (missing, or another rank): DSiRe compares adapters "
                "of one base and one LoRA config"
            )
        out[voter] = torch.stack(rows).cpu().numpy()
    return out


@dataclass
class DsireModel:
    """A fitted DSiRe classifier: plain arrays only, so a fit can be stored as lake rows (``to_arrays``)."""

    sizes: np.ndarray  # (N,) training labels: samples each training adapter saw
    lo: dict[str, np.ndarray]  # voter -> (k,) per-dimension min over training adapters
    span: dict[str, np.ndarray]  # voter -> (k,) max - min (1 where constant)
    train: dict[str, np.ndarray]  # voter -> (N, k) normalised training features

    @classmethod
    def fit(cls, features: Sequence[Mapping[str, Tensor]], sizes: Sequence[int]) -> DsireModel:
        """Min-max statistics come from these training adapters only, never from the ones predicted."""
        raw = _stack(features, sorted(features[0]))
        lo = {v: x.min(0) for v, x in raw.items()}
        span = {v: np.where(x.max(0) > lo[v], x.max(0) - lo[v], 1.0) for v, x in raw.items()}
        return cls(np.asarray(sizes), lo, span, {v: (x - lo[v]) / span[v] for v, x in raw.items()})

    def predict(self, features: Sequence[Mapping[str, Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """(estimates, vote shares), one per adapter: each voter's 1-NN label, then the majority (ties: the smaller size)."""
        raw = _stack(features, list(self.train))
        votes = np.stack(
            [self.sizes[_nearest((x - self.lo[v]) / self.span[v], self.train[v])] for v, x in raw.items()], axis=1
        )
        estimates, shares = [], []
        for row in votes:
            labels, counts = np.unique(row, return_counts=True)
            estimates.append(labels[counts.argmax()])
            shares.append(counts.max() / len(row))
        return np.asarray(estimates), np.asarray(shares)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{name: array}``: ``sizes`` and ``<voter>:lo|span|train``."""
        arrays = {"sizes": self.sizes}
        for v in self.train:
            arrays |= {f"{v}:lo": self.lo[v], f"{v}:span": self.span[v], f"{v}:train": self.train[v]}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> DsireModel:
        voters = sorted(k.removesuffix(":train") for k in arrays if k.endswith(":train"))
        part = {p: {v: np.asarray(arrays[f"{v}:{p}"]) for v in voters} for p in ("lo", "span", "train")}
        return cls(np.asarray(arrays["sizes"]), part["lo"], part["span"], part["train"])


def _nearest(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Index of each query's nearest training row (L2): ``argmin_j ||q - t_j||``."""
    return ((queries[:, None, :] - train[None, :, :]) ** 2).sum(-1).argmin(1)


def frobenius_nn_baseline(
    train: Sequence[Mapping[str, Tensor]], sizes: Sequence[int], test: Sequence[Mapping[str, Tensor]]
) -> np.ndarray:
    """The paper's baseline: 1-NN on the vector of per-layer ``||B_l A_l||_F``, given ``adapter_spectra`` features.

    ``||B A||_F`` is the norm of the BA spectrum, so the baseline reads the same features as DSiRe.
    """
    voters = [v for v in sorted(train[0]) if v.endswith("/BA")]
    norms = [np.linalg.norm(np.stack(list(_stack(f, voters).values()), axis=1), axis=-1) for f in (train, test)]
    return np.asarray(sizes)[_nearest(norms[1], norms[0])]
