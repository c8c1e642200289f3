"""The LoRA flows: Spectral DeTuning over attack sets found in the lake, and DSiRe over its adapters.

``lora_flow`` groups the lake's full-weight repos by the parent they declare (the parent may be
absent from the hub, like an unpublished base). Repos that declare no parent at all join a group
when they differ from its reference member at low rank in every candidate layer (a LoRA merge
whose card says nothing). Each group is checked with ``check_attack_set`` on a pool of Ray
actors (which members are LoRA merges of one base, which layers were targeted, at what rank),
then its targeted layers are detuned, same-shape layers of one rank batched into one
``spectral_detuning_batch`` call. Recovered layers go to one safetensors file per base, written
through the lake (``blobs``, committed with the recoveries); every group, recovered or not, leaves ``lora_recoveries`` rows, with
``confidence = "low: <why>"`` where it could not be attacked.

``dsire_fit_flow`` / ``dsire_predict_flow``: spectra of every adapter in the lake (``lora_spectra``),
a DSiRe classifier fitted on labelled adapters and stored through the lake (``blobs``, kind ``dsire``), and
``dataset_size_estimates`` for every other adapter.
"""
from __future__ import annotations

import csv
import io
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import ray
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from ray.util import ActorPool
from tqdm import tqdm

from hubtree.errors import HubtreeError, LakeError, LoraSetError
from hubtree.lake import Lake
from hubtree.ops.lora.dsire import DsireModel, adapter_spectra
from hubtree.ops.hub.source import RepoRef
from hubtree.ops.hub.connect import open_hub
from hubtree.ops.lora.attack_sets import MIN_MERGES, check_attack_set
from hubtree.ops.weights.safetensors_reader import as_float_tensor, entries_for, read_tensor
from hubtree.ops.lora.spectral_detuning import spectral_detuning_batch, w_error
from hubtree.pipelines.ray_runtime import actor_options, ensure_ray, worker_count
from hubtree.pipelines.run_log import begin_run, record_run
from hubtree.schemas.tables import BLOBS, DATASET_SIZE_ESTIMATES, LORA_RECOVERIES, LORA_SPECTRA

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
STORAGE = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_CANDIDATES = 64  # undeclared repos tried per group (each costs one pairwise rank test per layer)
UNIT_BYTES = 256 * 1024 * 1024  # float64 stack of one detuning unit: (L, n, m, d) * 8 bytes
ADAPTER_FILE = "adapter_model.safetensors"


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RepoLoc:
    """Where one repo revision's layers are: ``files`` maps layer name -> file in the repo."""

    repo_id: str
    revision: str
    hub: str
    files: dict[str, str]
    dtypes: dict[str, str]


def read_layers(hubs: dict, loc: RepoLoc, names: list[str], hub_override: str | None = None) -> dict[str, torch.Tensor]:
    """The named tensors of ``loc``, by range, each file's header read again and checked (float32)."""
    url = hub_override or loc.hub
    if url not in hubs:
        hubs[url] = open_hub(url, budget_share=1 / max(1, worker_count()) if ray.is_initialized() else 1.0)
    source, ref = hubs[url], RepoRef(loc.repo_id, loc.revision)
    by_file: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_file[loc.files[name]].append(name)
    out = {}
    for file, wanted in by_file.items():
        handle = source.open_file(ref, file)
        for entry in entries_for(handle, wanted, f"{loc.repo_id}/{file}"):
            out[entry.name] = as_float_tensor(read_tensor(handle, entry))
    return out


def _eps(locs: list[RepoLoc], names: list[str]) -> float:
    """The coarsest storage rounding among the layers read (they are upcast to float32)."""
    return max(torch.finfo(STORAGE.get(loc.dtypes[n], torch.float32)).eps for loc in locs for n in names)


# ----------------------------------------------------------------------------- plan


@dataclass
class GroupPlan:
    """One declared parent: its declaring members, undeclared candidates, and the candidate layers."""

    base_repo: str
    members: list[RepoLoc]
    candidates: list[RepoLoc]
    layers: list[str]
    shapes: dict[str, tuple]  # layer -> (m, d)
    base: RepoLoc | None  # the base itself, when it is in the lake (for W-Error)
    excluded: dict[str, str] = field(default_factory=dict)  # declaring repo left out -> why


@dataclass
class GroupCheck:
    plan: GroupPlan
    members: list[RepoLoc] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)  # targeted layer -> rank
    problem: str | None = None  # None: ready to detune


@dataclass
class DetuneUnit:
    base_repo: str
    layers: list[str]
    rank: int
    members: list[RepoLoc]
    base: RepoLoc | None
    iterations: int


@dataclass
class LayerResult:
    base_repo: str
    layer: str
    rank: int
    iterations: int
    final_loss: float
    w_error: float | None
    weights: torch.Tensor
    error: str | None = None


@task(cache_policy=NONE)
def plan_groups(lake: Lake, layers: str | None) -> list[GroupPlan]:
    """Attack-set candidates from the lake: full-weight repos grouped by declared parent."""
    repos = lake.query(
        """
        SELECT r.repo_id, r.revision, r.hub FROM repos r
        WHERE EXISTS (SELECT 1 FROM files f WHERE f.repo_id = r.repo_id AND f.revision = r.revision AND f.kind = 'weights')
          AND NOT EXISTS (SELECT 1 FROM adapters a WHERE a.repo_id = r.repo_id AND a.revision = r.revision)
        ORDER BY r.repo_id
        """
    ).to_pylist()
    tensors = lake.query(
        f"SELECT repo_id, revision, file, name, shape, dtype FROM tensors WHERE len(shape) = 2 AND dtype IN {FLOAT_DTYPES}"
    ).to_pylist()
    edges = lake.query("SELECT DISTINCT repo_id, parent_repo_id, relation FROM declared_edges").to_pylist()
    pattern = re.compile(layers) if layers else None
    shapes: dict[str, dict[str, tuple]] = defaultdict(dict)
    locs = {}
    info = {r["repo_id"]: r for r in repos}
    per_repo: dict[str, list[dict]] = defaultdict(list)
    for t in tensors:
        if t["repo_id"] in info and t["revision"] == info[t["repo_id"]]["revision"] and (not pattern or pattern.search(t["name"])):
            per_repo[t["repo_id"]].append(t)
    for repo_id, rows in per_repo.items():
        r = info[repo_id]
        locs[repo_id] = RepoLoc(repo_id, r["revision"], r["hub"], {t["name"]: t["file"] for t in rows}, {t["name"]: t["dtype"] for t in rows})
        shapes[repo_id] = {t["name"]: tuple(t["shape"]) for t in rows}
    parents: dict[str, set[str]] = defaultdict(set)
    declares = set()
    for e in edges:
        declares.add(e["repo_id"])
        if e["repo_id"] in locs and e["relation"] not in ("adapter", "quantized") and e["parent_repo_id"] != e["repo_id"]:
            parents[e["parent_repo_id"]].add(e["repo_id"])
    undeclared = [r for r in sorted(locs) if r not in declares]
    plans = []
    for base_repo, children in sorted(parents.items()):
        members, excluded = _one_architecture(sorted(children), shapes)
        common = set(shapes[members[0]].items())
        for m in members[1:]:
            common &= set(shapes[m].items())
        names = sorted(n for n, _ in common)
        sig = {n: s for n, s in common}
        candidates = [
            locs[c] for c in undeclared
            if c != base_repo and names and all(shapes[c].get(n) == s for n, s in sig.items())
        ][:MAX_CANDIDATES]
        base = locs.get(base_repo)
        if base and not all(shapes[base_repo].get(n) == s for n, s in sig.items()):
            base = None
        plans.append(GroupPlan(base_repo, [locs[m] for m in members], candidates, names, sig, base, excluded))
    return plans


def _one_architecture(children: list[str], shapes: Mapping[str, Mapping[str, tuple]]) -> tuple[list[str], dict[str, str]]:
    """The declaring repos that have every layer of the most common architecture among them, and the rest with why.

    One model of another architecture that names the same base (a card's mistake, or a
    distillation) must not empty the layers the others share; it is left out, and said so.
    Ties go to the architecture with more layers, then to the first repo's in id order.
    """
    counts = Counter(frozenset(shapes[c].items()) for c in children)
    layout = max(counts, key=lambda sig: (counts[sig], len(sig)))
    keep = [c for c in children if layout <= set(shapes[c].items())]
    why = "has other tensor names or shapes than the other models declaring this base"
    return keep, {c: why for c in children if c not in keep}


# ----------------------------------------------------------------------------- work


@ray.remote
class LoraWorker:
    """Owns a device and a connection per hub; checks attack sets and detunes layers."""

    def __init__(self, hub_override: str | None):
        self.hub_override = hub_override
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.hubs: dict = {}

    def _read(self, loc: RepoLoc, names: list[str]) -> dict[str, torch.Tensor]:
        return read_layers(self.hubs, loc, names, self.hub_override)

    def check(self, plan: GroupPlan) -> GroupCheck:
        """Which declared members and undeclared candidates are LoRA merges of one base, and where."""
        out = GroupCheck(plan)
        names = plan.layers
        if not names:
            out.problem = "low: the members share no 2-D floating tensor of one shape"
            return out
        try:
            weights = {loc.repo_id: self._read(loc, names) for loc in plan.members}
            declared = [loc.repo_id for loc in plan.members]
            eps = _eps(plan.members, names)
            ref = declared[0]
            if len(declared) >= 2:
                ref = check_attack_set(weights, eps=eps).members[0]
            joined = []
            for cand in plan.candidates:
                w = self._read(cand, names)
                pair = check_attack_set({ref: weights[ref], cand.repo_id: w}, eps=max(eps, _eps([cand], names)))
                if len(pair.members) == 2 and pair.layers:
                    weights[cand.repo_id] = w
                    joined.append(cand)
            locs = {loc.repo_id: loc for loc in [*plan.members, *joined]}
            if len(weights) < 2:
                out.members = list(locs.values())
                out.problem = (
                    f"low: only 1 full-weight model ({ref}) declares {plan.base_repo} as its parent and no undeclared "
                    f"model differs from it at low rank; Spectral DeTuning needs at least {MIN_MERGES} LoRA merges of one base"
                )
                return out
            found = check_attack_set(weights, eps=_eps(list(locs.values()), names))
        except HubtreeError as err:
            out.problem = f"low: {type(err).__name__}: {err}"
            return out
        out.members = [locs[m] for m in found.members]
        out.layers = dict(found.layers)
        reasons = list(found.problems)
        if found.excluded:
            reasons.append("excluded: " + "; ".join(f"{m} {why}" for m, why in found.excluded.items() if m in declared))
        if found.problems:
            out.problem = "low: " + " ".join(reasons)
        return out

    def detune(self, unit: DetuneUnit) -> list[LayerResult]:
        """Spectral DeTuning of same-shape layers of one rank, in one batch."""
        try:
            per_member = [self._read(loc, unit.layers) for loc in unit.members]
            stack = torch.stack([torch.stack([m[name] for m in per_member]) for name in unit.layers]).to(self.device)
            results = spectral_detuning_batch(stack, unit.rank, unit.iterations)
            truth = self._read(unit.base, unit.layers) if unit.base else {}
        except HubtreeError as err:
            return [LayerResult(unit.base_repo, name, unit.rank, 0, float("nan"), None, torch.empty(0), f"{type(err).__name__}: {err}")
                    for name in unit.layers]
        out = []
        for name, res in zip(unit.layers, results):
            weights = res.weights.cpu()
            err = w_error(weights, truth[name]) if name in truth else None
            out.append(LayerResult(unit.base_repo, name, unit.rank, res.iterations, res.loss_history[-1], err, weights))
        return out


def detune_units(check: GroupCheck, iterations: int) -> list[DetuneUnit]:
    """Targeted layers of one checked group, same shape and rank batched (each unit within ``UNIT_BYTES``)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, rank in sorted(check.layers.items()):
        groups[(rank, check.plan.shapes[name])].append(name)
    units = []
    for (rank, (m, d)), names in groups.items():
        per = max(1, UNIT_BYTES // (8 * m * d * len(check.members)))
        for start in range(0, len(names), per):
            units.append(DetuneUnit(check.plan.base_repo, names[start : start + per], rank, check.members, check.plan.base, iterations))
    return units


def _row(base_repo: str, layer: str, sources: list[str], run_id: str, confidence: str, **rest) -> dict:
    return {
        "base_repo": base_repo, "layer": layer, "n_sources": len(sources), "sources": sources, "rank": rest.get("rank"),
        "iterations": rest.get("iterations"), "final_loss": rest.get("final_loss"), "confidence": confidence,
        "w_error": rest.get("w_error"), "weights_path": rest.get("weights_path"), "run_id": run_id, "batch_id": "",
    }


def _save_weights(lake: Lake, base_repo: str, run_id: str, tensors: dict[str, torch.Tensor]) -> dict:
    """One safetensors file per base, written through the lake; returns its ``blobs`` row (commit it with the recoveries)."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in sorted(tensors.items())}, metadata={"format": "pt", "base_repo": base_repo, "run_id": run_id})
    return lake.write_blob("recovered", base_repo, run_id, data, ".safetensors")


@flow(name="hubtree-lora", log_prints=True)
def lora_flow(
    lake: str,
    hub: str | None = None,
    layers: str | None = None,
    ray_address: str | None = None,
    iterations: int = 300,
    progress: bool = True,
) -> dict:
    """Spectral DeTuning of every LoRA attack set in ``lake``: recovered bases and ``lora_recoveries`` rows.

    ``hub`` overrides where weights are read from; ``layers`` is a regex on tensor names.
    """
    logger = get_run_logger()
    params = {"lake": lake, "hub": hub, "layers": layers, "ray_address": ray_address, "iterations": iterations}
    the_lake, run_id, started = begin_run(lake, "lora", params)
    plans = plan_groups(the_lake, layers)
    summary = {"run_id": run_id, "status": "completed", "groups": len(plans), "recovered": 0, "layers": 0, "low": 0, "files": []}
    rows: list[dict] = []
    blobs: list[dict] = []
    if plans:
        ensure_ray(ray_address)
        actors = [LoraWorker.options(**actor_options()).remote(hub) for _ in range(min(worker_count(), len(plans)))]
        pool = ActorPool(actors)
        checks = sorted(pool.map_unordered(lambda a, p: a.check.remote(p), plans), key=lambda c: c.plan.base_repo)
        units = []
        for check in checks:
            sources = [m.repo_id for m in check.members] or [m.repo_id for m in check.plan.members]
            if check.plan.excluded:
                logger.info("%s: left out %s", check.plan.base_repo, "; ".join(f"{r} ({why})" for r, why in check.plan.excluded.items()))
            if check.problem:
                summary["low"] += 1
                for name in sorted(check.layers) or ["*"]:
                    rows.append(_row(check.plan.base_repo, name, sources, run_id, check.problem, rank=check.layers.get(name)))
                logger.info("%s: %s", check.plan.base_repo, check.problem)
                continue
            units += detune_units(check, iterations)
        results: dict[str, list[LayerResult]] = defaultdict(list)
        with tqdm(total=len(units), unit="unit", desc="detune", disable=not progress) as bar:
            for out in pool.map_unordered(lambda a, u: a.detune.remote(u), units):
                for res in out:
                    results[res.base_repo].append(res)
                bar.update(1)
        for actor in actors:
            ray.kill(actor)
        by_base = {c.plan.base_repo: c for c in checks}
        for base_repo, layer_results in sorted(results.items()):
            check = by_base[base_repo]
            sources = [m.repo_id for m in check.members]
            good = {r.layer: r for r in layer_results if r.error is None}
            dtypes = check.members[0].dtypes
            path = None
            if good:
                blobs.append(_save_weights(the_lake, base_repo, run_id, {n: r.weights.to(STORAGE.get(dtypes[n], torch.float32)) for n, r in good.items()}))
                path = blobs[-1]["path"]
                summary["recovered"] += 1
                summary["files"].append(path)
            for r in sorted(layer_results, key=lambda r: r.layer):
                if r.error:
                    rows.append(_row(base_repo, r.layer, sources, run_id, f"low: {r.error}", rank=r.rank))
                    continue
                summary["layers"] += 1
                rows.append(_row(base_repo, r.layer, sources, run_id, "ok", rank=r.rank, iterations=r.iterations,
                                 final_loss=r.final_loss, w_error=r.w_error, weights_path=path))
    tables = {"lora_recoveries": pa.Table.from_pylist(rows, schema=LORA_RECOVERIES), "blobs": pa.Table.from_pylist(blobs, schema=BLOBS)}
    the_lake.commit("lora", run_id, tables, day=started.date())
    record_run(the_lake, "lora", run_id, params, started, summary["status"],
               {"repos_crawled": summary["recovered"], "repos_failed": summary["low"]})
    logger.info("lora %s: %d groups, %d bases recovered (%d layers), %d low-confidence", run_id,
                summary["groups"], summary["recovered"], summary["layers"], summary["low"])
    return summary


# ----------------------------------------------------------------------------- DSiRe



@task(cache_policy=NONE)
def adapter_features(lake: Lake, hub: str | None, run_id: str) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """repo_id -> (revision, DSiRe spectra) for every adapter in the lake; new spectra go to ``lora_spectra``."""
    adapters = lake.query(
        f"""
        SELECT a.repo_id, a.revision, r.hub, t.file, t.name, t.dtype FROM adapters a
        JOIN repos r USING (repo_id, revision) JOIN tensors t USING (repo_id, revision)
        WHERE t.file = '{ADAPTER_FILE}' AND len(t.shape) = 2 AND t.dtype IN {FLOAT_DTYPES}
        ORDER BY a.repo_id
        """
    ).to_pylist()
    done = {(r["repo_id"], r["revision"]) for r in lake.query("SELECT DISTINCT repo_id, revision FROM lora_spectra_all").to_pylist()}
    locs: dict[str, RepoLoc] = {}
    for a in adapters:
        loc = locs.setdefault(a["repo_id"], RepoLoc(a["repo_id"], a["revision"], a["hub"], {}, {}))
        loc.files[a["name"]] = a["file"]
        loc.dtypes[a["name"]] = a["dtype"]
    hubs: dict = {}
    out, rows = {}, []
    for repo_id, loc in locs.items():
        spectra = adapter_spectra(read_layers(hubs, loc, sorted(loc.files), hub))
        if not spectra:
            continue
        out[repo_id] = (loc.revision, spectra)
        if (repo_id, loc.revision) not in done:
            rows += [{"repo_id": repo_id, "revision": loc.revision, "layer": v, "features": s.float().tolist(), "run_id": run_id, "batch_id": ""}
                     for v, s in spectra.items()]
    if rows:
        lake.commit("dsire-spectra", run_id, {"lora_spectra": pa.Table.from_pylist(rows, schema=LORA_SPECTRA)})
    return out


def _read_labels(labels_csv: str) -> dict[str, int]:
    try:
        with open(labels_csv, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"repo_id", "dataset_size"} <= set(reader.fieldnames):
                raise HubtreeError(f"{labels_csv}: expected a header line 'repo_id,dataset_size'")
            return {row["repo_id"].strip(): int(row["dataset_size"]) for row in reader if row.get("repo_id")}
    except OSError as err:
        raise HubtreeError(f"cannot read labels file {labels_csv}: {err}") from err
    except ValueError as err:
        raise HubtreeError(f"{labels_csv}: dataset_size must be an integer ({err})") from err


@flow(name="hubtree-dsire-fit", log_prints=True)
def dsire_fit_flow(lake: str, labels_csv: str, hub: str | None = None) -> dict:
    """Fit DSiRe on the lake's adapters listed in ``labels_csv`` (``repo_id,dataset_size``); store it in the lake."""
    logger = get_run_logger()
    params = {"lake": lake, "labels_csv": labels_csv, "hub": hub}
    the_lake, run_id, started = begin_run(lake, "dsire-fit", params)
    labels = _read_labels(labels_csv)
    features = adapter_features(the_lake, hub, run_id)
    missing = sorted(set(labels) - set(features))
    if missing:
        raise LakeError(f"{len(missing)} labelled adapters are not in the lake (first: {missing[0]}): crawl them first")
    if len(labels) < 2:
        raise HubtreeError("DSiRe needs at least 2 labelled adapters to fit")
    train = sorted(labels)
    model = DsireModel.fit([features[r][1] for r in train], [labels[r] for r in train])
    model_id = f"{started.strftime('%Y%m%dT%H%M%S')}-{run_id[:8]}"
    arrays = model.to_arrays() | {"train_repos": np.array(train), "train_revisions": np.array([features[r][0] for r in train])}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = the_lake.write_blob("dsire", model_id, run_id, buf.getvalue(), ".npz")
    the_lake.commit("dsire-fit", run_id, {"blobs": pa.Table.from_pylist([blob], schema=BLOBS)}, day=started.date())
    record_run(the_lake, "dsire-fit", run_id, params, started, "completed", {"repos_crawled": len(train)})
    logger.info("dsire model %s fitted on %d adapters", model_id, len(train))
    return {"run_id": run_id, "status": "completed", "model_id": model_id, "n_train": len(train), "path": blob["path"]}


def load_dsire_model(lake: Lake, model_id: str | None = None) -> tuple[str, DsireModel, set[str]]:
    """(id, model, its training adapters): ``model_id`` or the latest fit."""
    found = {r["key"]: r["path"] for r in lake.query("SELECT key, path FROM blobs WHERE kind = 'dsire' ORDER BY key").to_pylist()}
    if not found:
        raise LakeError(f"no DSiRe model in {lake.url}: run `hubtree dsire fit --lake {lake.url} --labels CSV` first")
    model_id = model_id or list(found)[-1]
    if model_id not in found:
        raise LakeError(f"no DSiRe model {model_id!r} in {lake.url} (have: {', '.join(found)})")
    arrays = dict(np.load(io.BytesIO(lake.read_blob(found[model_id])), allow_pickle=False))
    train = {str(r) for r in arrays.pop("train_repos")}
    arrays.pop("train_revisions", None)
    return model_id, DsireModel.from_arrays(arrays), train


@flow(name="hubtree-dsire-predict", log_prints=True)
def dsire_predict_flow(lake: str, model: str | None = None, hub: str | None = None) -> dict:
    """Dataset-size estimates for every adapter in ``lake`` that did not train the model (default: the latest fit)."""
    logger = get_run_logger()
    the_lake = Lake(lake)
    the_lake.require()
    run_id, started = uuid.uuid4().hex, datetime.now(timezone.utc)
    params = {"lake": lake, "model": model, "hub": hub}
    model_id, fitted, train = load_dsire_model(the_lake, model)
    record_run(the_lake, "dsire", run_id, params, started, "running")
    features = adapter_features(the_lake, hub, run_id)
    rows, skipped = [], []
    for repo_id, (revision, spectra) in sorted(features.items()):
        if repo_id in train:
            continue
        try:
            estimate, share = fitted.predict([spectra])
        except LoraSetError:  # another base or LoRA config than the model's
            skipped.append(repo_id)
            continue
        rows.append({"repo_id": repo_id, "revision": revision, "estimate": int(estimate[0]), "vote_share": float(share[0]),
                     "n_layers": len(spectra) // 3, "model_id": model_id, "run_id": run_id, "batch_id": ""})
    the_lake.commit("dsire", run_id, {"dataset_size_estimates": pa.Table.from_pylist(rows, schema=DATASET_SIZE_ESTIMATES)}, day=started.date())
    record_run(the_lake, "dsire", run_id, params, started, "completed", {"repos_crawled": len(rows), "repos_skipped": len(skipped)})
    if skipped:
        logger.info("%d adapters skipped: another base or LoRA config than model %s (first: %s)", len(skipped), model_id, skipped[0])
    return {"run_id": run_id, "status": "completed", "model_id": model_id, "estimated": len(rows), "skipped": skipped}
