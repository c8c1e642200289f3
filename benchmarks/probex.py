"""ProbeX on labelled zoos: what fine-tunes were trained on, against three baselines, and search by paraphrase.

Each zoo (``hubtree zoo --labelled``, seed S) is crawled into a lake and run through stats and
trees. The fine-tunes whose cards name their datasets are the labelled models (``probex fit
--labels`` gets them with the datasets' descriptions); the others are held out: their cards say
nothing, and every score below is on them. Baselines get the same split and choose their layer
by the same cross-validation folds of the labelled models, among every 2-D layer (ProbeX too,
unless ``--max-layers`` caps its candidates as ``probex fit`` does by default):
  - fingerprint: untrained probe features of each layer (fixed random U, V; the stats stage's
    ``probe_features``) + a logistic head;
  - dense: ridge regression on the flattened layer (centred on the labelled models' mean),
    threshold 0.5; also the best layer on the held-out models themselves (an oracle);
  - dense on the direction: the same ridge on ProbeX's input, each layer's update from the
    family's base scaled to unit norm (``direction``), the whole layer where ProbeX's head
    reads its coordinates along the probes (the top 64 x 128 directions of the labelled updates);
    the base is the one ProbeX has, the trees stage's root in the lake (else the labelled
    models' mean), never the zoo's truth;
  - stats: every layer's statistics (layer_stats) + a logistic head.
Search: each dataset's paraphrase (never its description) as the query; precision@5 over all
models, and over the held-out models only (found by what their weights predict).

    python benchmarks/probex.py                    # tuning seeds 0 and 3, held-out seeds 1, 2, 4-16
    python benchmarks/probex.py --seeds 6 --tune-seeds
    python benchmarks/probex.py --wide --tune-seeds --seeds 30 31   # layers wider than the probes
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from hubtree.lake import Lake
from hubtree.ops.weights.layer_stats import batch_layer_stats
from hubtree.ops.weights.probes import probe_features
from hubtree.ops.weights.probex import ProbexSettings, RidgeHead, direction, folds
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor
from hubtree.ops.zoo.build import load_truth
from hubtree.ops.zoo.labelled import DATA_ORG, LabelledSpec, build_labelled_zoo, labels_csv

EVERY_LAYER = 10**6  # as ProbeX's --max-layers: more than any model has, so every shared 2-D layer is a candidate
STAT_COLUMNS = ("mean", "std", "skewness", "kurtosis", "frobenius_norm", "spectral_norm", "stable_rank",
                "entropy_effective_rank", "log_norm", "log_spectral_norm", "alpha", "alpha_weighted")


# ----------------------------------------------------------------------------- metrics


def metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean per-label accuracy at 0.5, mAP (mean over labels of average precision), macro-F1."""
    pred = scores >= 0.5
    acc = (pred == y).mean(0).mean()
    aps, f1s = [], []
    for j in range(y.shape[1]):
        order = np.argsort(-scores[:, j], kind="stable")
        hits = y[order, j]
        if hits.sum():
            aps.append((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits == 1].mean())
        tp, fp, fn = (pred[:, j] & (y[:, j] == 1)).sum(), (pred[:, j] & (y[:, j] == 0)).sum(), (~pred[:, j] & (y[:, j] == 1)).sum()
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"acc": float(acc), "map": float(np.mean(aps)), "f1": float(np.mean(f1s))}


# ----------------------------------------------------------------------------- baselines


def logistic(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Standardised features, one L2-regularised logistic regression per label (L-BFGS)."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xt, xv = torch.tensor((x - mu) / sd, dtype=torch.float64), torch.tensor((x_test - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.sigmoid(xv @ w + b).detach().numpy()


def ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """ProbeX's own ridge head (``RidgeHead``, dual form, centred on the training mean) on a baseline's features."""
    head = RidgeHead.fit(torch.from_numpy(x), torch.from_numpy(y), ProbexSettings.ridge)
    return head.scores(torch.from_numpy(x_test).float()).numpy()


def choose_layer(features: dict[str, tuple[np.ndarray, np.ndarray]], y: np.ndarray, head, seed: int = 0) -> tuple[str, np.ndarray]:
    """The layer whose head labels the labelled models best in ProbeX's cross-validation folds; then refitted on all."""
    splits = [(tr.numpy(), va.numpy()) for tr, va in folds(len(y), ProbexSettings.folds, seed)]

    def cv(n: str) -> float:
        x = features[n][0]
        return sum(metrics(head(x[tr], y[tr], x[va]), y[va])["acc"] * len(va) for tr, va in splits)

    best = max(features, key=cv)
    return best, head(features[best][0], y, features[best][1])


# ----------------------------------------------------------------------------- one zoo


def run_zoo(out: Path, seed: int, epochs: int, max_layers: int, wide: bool = False) -> dict:
    from hubtree.pipelines.crawl import crawl_flow
    from hubtree.pipelines.probex import probex_fit_flow, probex_predict_flow, search_lake
    from hubtree.pipelines.stats import stats_flow
    from hubtree.pipelines.trees import trees_flow

    kind = "wide-" if wide else ""
    zoo, lake_url = out / f"zoo-{kind}s{seed}", str(out / f"lake-{kind}s{seed}")
    if not (zoo / "truth.json").exists():
        build_labelled_zoo(zoo, seed=seed, spec=LabelledSpec.wide() if wide else None)
    truth = load_truth(zoo / "truth.json")
    lake = Lake(lake_url)
    if not lake.exists():
        crawl_flow(hub=str(zoo / "hub"), lake=lake_url, progress=False)
        stats_flow(lake=lake_url, progress=False)
        trees_flow(lake=lake_url)
    cards = {r["repo_id"]: json.loads(r["card_metadata"] or "{}") for r in lake.query("SELECT repo_id, card_metadata FROM repos").to_pylist()}
    labelled = sorted(r for r in truth.labels if cards[r].get("datasets"))
    held_out = sorted(r for r in truth.labels if r not in labelled)
    (out / f"labels-{kind}s{seed}.csv").write_text(labels_csv(truth, labelled))
    load = os.getloadavg()[0]  # the machine may be shared: times mean little without it
    tic = time.perf_counter()
    fit = probex_fit_flow(lake=lake_url, labels_csv=str(out / f"labels-{kind}s{seed}.csv"), epochs=epochs, max_layers=max_layers)
    fit_s = time.perf_counter() - tic
    tic = time.perf_counter()
    predicted = probex_predict_flow(lake=lake_url)
    predict_s = time.perf_counter() - tic
    rows = lake.query("SELECT repo_id, label, score FROM model_labels").to_pylist()
    scored = defaultdict(dict)
    for r in rows:
        scored[r["repo_id"]][r["label"]] = r["score"]

    roots = {r["repo_id"]: r["root"] for r in lake.query(
        "SELECT f.repo_id, t.child_repo_id AS root FROM families f JOIN tree_edges t ON t.family_id = f.family_id AND t.source = 'root'").to_pylist()}
    results: dict[str, list] = defaultdict(list)
    for family, repos in truth.families.items():
        train = [r for r in labelled if r in repos]
        test = [r for r in held_out if r in repos]
        names = sorted({d for r in repos[1:] for d in truth.labels[r]})
        y, y_test = (np.array([[float(n in truth.labels[r]) for n in names] for r in rs]) for rs in (train, test))
        labels = [f"{DATA_ORG}/{n}" for n in names]
        results["probex"].append((np.array([[scored[r].get(l, 0.0) for l in labels] for r in test]), y_test))
        root = roots.get(train[0])  # the family's base as the lake has it (the trees stage's root), as ProbeX centres
        weights = {r: _matrices(zoo / "hub" / r / "model.safetensors") for r in {*filter(None, [root]), *train, *test}}
        layers = sorted(weights[train[0]])
        dense = {n: (np.stack([weights[r][n].ravel() for r in train]), np.stack([weights[r][n].ravel() for r in test])) for n in layers}
        results["dense"].append((choose_layer(dense, y, ridge)[1], y_test))
        base = {n: weights[root][n] if root else np.mean([weights[r][n] for r in train], axis=0) for n in layers}
        centred = {n: tuple(direction(torch.from_numpy(np.stack([weights[r][n] for r in rs])), torch.from_numpy(base[n])).flatten(1).double().numpy()
                            for rs in (train, test)) for n in layers}
        results["dense on the direction"].append((choose_layer(centred, y, ridge)[1], y_test))
        oracle = max((ridge(*dense[n][:1], y, dense[n][1]) for n in layers), key=lambda s: metrics(s, y_test)["acc"])
        results["dense, best layer on test"].append((oracle, y_test))
        # Fingerprints and statistics of every layer, by the stats stage's functions (the stage itself reads
        # only the attention matrices by default).
        fp = {n: tuple(np.stack([probe_features(torch.from_numpy(weights[r][n])).numpy() for r in rs]) for rs in (train, test)) for n in layers}
        results["fingerprint"].append((choose_layer(fp, y, logistic)[1], y_test))
        st = {r: _stats(weights[r]) for r in train + test}
        results["stats"].append((logistic(np.stack([st[r] for r in train]), y, np.stack([st[r] for r in test])), y_test))

    precision, precision_unlabelled = [], []
    for name, d in truth.datasets.items():
        trained = {r for r, ds in truth.labels.items() if name in ds}
        hits = search_lake(lake, d.paraphrase, limit=len(truth.models))
        precision.append(np.mean([h.repo_id in trained for h in hits[:5]]))
        precision_unlabelled.append(np.mean([h.repo_id in trained for h in [h for h in hits if h.repo_id in held_out][:5]]))
    summary = {method: metrics(np.concatenate([s for s, _ in parts]), np.concatenate([y for _, y in parts])) for method, parts in results.items()}
    return {"seed": seed, "methods": summary, "p5": float(np.mean(precision)), "p5_unlabelled": float(np.mean(precision_unlabelled)),
            "fit_s": fit_s, "predict_s": predict_s, "load": (load, os.getloadavg()[0]), "fit": fit, "predict": predicted, "labelled": len(labelled), "held_out": len(held_out)}


def _stats(matrices: dict[str, np.ndarray]) -> np.ndarray:
    stats = batch_layer_stats({n: torch.from_numpy(w) for n, w in matrices.items()}, torch.device("cpu"))
    return np.array([v if v is not None and np.isfinite(v) else 0.0 for n in sorted(stats) for v in (getattr(stats[n], c) for c in STAT_COLUMNS)])


def _matrices(path: Path) -> dict[str, np.ndarray]:
    source = LocalFile(path)
    return {e.name: as_float_tensor(read_tensor(source, e)).numpy() for e in read_header(source).tensors if len(e.shape) == 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hubtree-bench-probex"))
    parser.add_argument("--tune-seeds", type=int, nargs="*", default=[0, 3], help="Seeds the settings were tuned on (reported apart).")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, *range(4, 17)], help="Held-out seeds.")
    parser.add_argument("--epochs", type=int, default=None, help="ProbeX epochs per layer (default: ProbexSettings.epochs).")
    parser.add_argument("--wide", action="store_true",
                        help="Zoos of wider layers (LabelledSpec.wide: 256 and 192 hidden units), where the probes hold only the top directions.")
    parser.add_argument("--max-layers", type=int, default=EVERY_LAYER,
                        help="ProbeX's candidate layers per family (default: every 2-D layer, as the baselines get; `probex fit` takes 12).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hubtree.pipelines.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    epochs = args.epochs or ProbexSettings.epochs
    print("| seed | role | method | per-label acc | mAP | macro-F1 |\n| --- | --- | --- | --- | --- | --- |")
    runs = []
    for seed in [*args.tune_seeds, *args.seeds]:
        role = "tuning" if seed in args.tune_seeds else "held out"
        run = run_zoo(args.out, seed, epochs, args.max_layers, args.wide)
        runs.append((role, run))
        for method, m in run["methods"].items():
            print(f"| {seed} | {role} | {method} | {m['acc']:.3f} | {m['map']:.3f} | {m['f1']:.3f} |", flush=True)
    print("\n| seed | role | labelled / held-out models | experts (layer, validation acc) | search P@5 (all) | P@5 (held-out models only) | fit s | predict s | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for role, run in runs:
        experts = "; ".join(f"{e['layer']} {e['val_accuracy']:.2f}" for e in run["fit"]["experts"].values())
        print(f"| {run['seed']} | {role} | {run['labelled']} / {run['held_out']} | {experts} | {run['p5']:.2f} | {run['p5_unlabelled']:.2f} | "
              f"{run['fit_s']:.0f} (read {run['fit']['seconds']['read']:.0f}, fit {run['fit']['seconds']['fit']:.0f}) | "
              f"{run['predict_s']:.0f} (read {run['predict']['seconds']['read']:.0f}) | {run['load'][0]:.1f} / {run['load'][1]:.1f} |")
    held_out = [run for role, run in runs if role == "held out"]
    if held_out:
        print(summary(held_out))


def summary(runs: list[dict]) -> str:
    """Each method's mean over the held-out seeds, and on how many seeds ProbeX's accuracy is above, equal to
    (within one decision in a thousand) or below it: one seed's gap between two heads on the same layer is
    often one tied layer choice, so the count over seeds says more than any one of them."""
    lines = ["", "| held-out seeds | method | mean acc | mean mAP | mean macro-F1 | ProbeX above / tied / below (acc) |",
             "| --- | --- | --- | --- | --- | --- |"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    for method in runs[0]["methods"]:
        m = {k: np.mean([r["methods"][method][k] for r in runs]) for k in ("acc", "map", "f1")}
        gaps = [r["methods"]["probex"]["acc"] - r["methods"][method]["acc"] for r in runs]
        count = "" if method == "probex" else f"{sum(g > 1e-3 for g in gaps)} / {sum(abs(g) <= 1e-3 for g in gaps)} / {sum(g < -1e-3 for g in gaps)}"
        lines.append(f"| {seeds} | {method} | {m['acc']:.3f} | {m['map']:.3f} | {m['f1']:.3f} | {count} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
