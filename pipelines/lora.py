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
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from tqdm import tqdm

from hubtree.errors import HubtreeError, LakeError, LoraSetError
from hubtree.lake import Lake
from hubtree.ops.hub.catalog import CrawlError
from hubtree.ops.hub.source import RepoRef
from hubtree.ops.lora import groups
from hubtree.ops.lora.dsire import DsireModel, adapter_spectra
from hubtree.ops.lora.groups import DetuneUnit, GroupCheck, GroupPlan, LayerResult, RepoLoc, detune_units
from hubtree.ops.weights.row_sample import RowSample, read_blocks
from hubtree.ops.weights.safetensors_reader import FLOAT_DTYPES, FLOAT_STORAGE, as_float_tensor, entries_for
from hubtree.pipelines.ray_runtime import HubConnections, WorkerPool, actor_device, actor_options, actor_pool
from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run, run_status, traffic_columns

ADAPTER_FILE = "adapter_model.safetensors"


def read_layers(
    hubs: HubConnections, loc: RepoLoc, names: list[str], rows: Mapping[str, RowSample], hub_override: str | None = None
) -> dict[str, torch.Tensor]:
    """The named tensors of ``loc`` (only their sampled ``rows`` where given), by range, each file's header
    read again and checked (float32)."""
    ref = RepoRef(loc.repo_id, loc.revision)
    by_file: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_file[loc.files[name]].append(name)
    out = {}
    for file, wanted in by_file.items():
        with hubs.open_file(hub_override or loc.hub, ref, file) as handle:
            blocks = read_blocks(handle, entries_for(handle, wanted, f"{loc.repo_id}/{file}"), rows)
        out |= {name: as_float_tensor(block) for name, block in blocks.items()}
    return out


@task(cache_policy=NONE)
def plan_groups(lake: Lake, layers: str | None) -> list[GroupPlan]:
    """Attack-set candidates from the lake (``ops.lora.groups.plan_groups`` on its rows)."""
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
    return groups.plan_groups(repos, tensors, edges, layers)


@ray.remote
class LoraWorker:
    """Owns a device and a connection per hub; checks attack sets and detunes layers (``ops.lora.groups``)."""

    def __init__(self, hub_override: str | None):
        self.hub_override = hub_override
        self.device = actor_device()
        self.hubs = HubConnections()
        self.probes = groups.ProbeCache()  # for this run: the pool lives as long as the flow

    def _read(self, loc: RepoLoc, names: list[str], rows: Mapping[str, RowSample]) -> dict[str, torch.Tensor]:
        return read_layers(self.hubs, loc, names, rows, self.hub_override)

    def traffic(self) -> dict[str, int]:
        return self.hubs.traffic()

    def check(self, plan: GroupPlan) -> GroupCheck:
        return groups.check_group(plan, self._read, self.probes)

    def detune(self, unit: DetuneUnit) -> list[LayerResult]:
        return groups.detune(unit, self._read, self.device)


def _row(base_repo: str, layer: str, sources: list[str], confidence: str, **rest) -> dict:
    return {
        "base_repo": base_repo, "layer": layer, "n_sources": len(sources), "sources": sources, "rank": rest.get("rank"),
        "iterations": rest.get("iterations"), "final_loss": rest.get("final_loss"), "confidence": confidence,
        "w_error": rest.get("w_error"), "weights_path": rest.get("weights_path"),
    }


def _save_weights(lake: Lake, base_repo: str, run_id: str, tensors: dict[str, torch.Tensor]) -> dict:
    """One safetensors file per base, written through the lake; returns its ``blobs`` row (commit it with the recoveries)."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in sorted(tensors.items())}, metadata={"format": "pt", "base_repo": base_repo, "run_id": run_id})
    return lake.write_blob("recovered", base_repo, run_id, data, ".safetensors")


@flow(name="hubtree-lora", log_prints=True, on_failure=FAILURE_HOOKS)
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
    Three phases: check every group, detune the targeted layers of the groups that pass,
    write each recovered base and every group's rows.
    """
    logger = get_run_logger()
    params = {"lake": lake, "hub": hub, "layers": layers, "ray_address": ray_address, "iterations": iterations}
    the_lake, run_id, started = begin_run(lake, "lora", params)
    plans = plan_groups(the_lake, layers)
    summary = {"run_id": run_id, "status": "completed", "groups": len(plans), "recovered": 0, "layers": 0, "low": 0, "failed": 0, "files": []}
    rows: list[dict] = []
    blobs: list[dict] = []
    traffic: Counter = Counter()
    if plans:
        with actor_pool(lambda n: LoraWorker.options(**actor_options()).remote(hub), len(plans), ray_address) as pool:
            checks = sorted(pool.map_unordered(lambda a, p: a.check.remote(p), plans), key=lambda c: c.plan.base_repo)
            rows, units = _checked(checks, iterations, logger)
            summary["failed"] = sum(c.failed for c in checks)
            summary["low"] = sum(c.problem is not None and not c.failed for c in checks)
            summary["status"] = run_status(summary["failed"], len(checks))
            results = _detune(pool, units, progress)
            traffic = pool.traffic()
        recovered, blobs = _recovered_rows(the_lake, run_id, checks, results, summary)
        rows += recovered
    the_lake.commit("lora", run_id, {"lora_recoveries": rows, "blobs": blobs}, day=started.date())
    record_run(the_lake, "lora", run_id, params, started, summary["status"],
               {"repos_crawled": summary["recovered"], "repos_skipped": summary["low"], "repos_failed": summary["failed"],
                **traffic_columns(traffic)})
    logger.info("lora %s: %d groups, %d bases recovered (%d layers), %d low-confidence, %d failed", run_id,
                summary["groups"], summary["recovered"], summary["layers"], summary["low"], summary["failed"])
    return summary


def _checked(checks: list[GroupCheck], iterations: int, logger: logging.Logger | logging.LoggerAdapter) -> tuple[list[dict], list[DetuneUnit]]:
    """Phase 1: rows for the groups that cannot be attacked, and the detuning units of the rest."""
    rows, units = [], []
    for check in checks:
        sources = [m.repo_id for m in check.members] or [m.repo_id for m in check.plan.members]
        if check.plan.excluded:
            logger.info("%s: left out %s", check.plan.base_repo, "; ".join(f"{r} ({why})" for r, why in check.plan.excluded.items()))
        if check.problem:
            for name in sorted(check.layers) or ["*"]:
                rows.append(_row(check.plan.base_repo, name, sources, check.problem, rank=check.layers.get(name)))
            logger.info("%s: %s", check.plan.base_repo, check.problem)
            continue
        units += detune_units(check, iterations)
    return rows, units


def _detune(pool: WorkerPool, units: list[DetuneUnit], progress: bool) -> dict[str, list[LayerResult]]:
    """Phase 2: every unit detuned on the pool; results by base."""
    results: dict[str, list[LayerResult]] = defaultdict(list)
    with tqdm(total=len(units), unit="unit", desc="detune", disable=not progress) as bar:
        for out in pool.map_unordered(lambda a, u: a.detune.remote(u), units):
            for res in out:
                results[res.base_repo].append(res)
            bar.update(1)
    return results


def _recovered_rows(
    lake: Lake, run_id: str, checks: list[GroupCheck], results: dict[str, list[LayerResult]], summary: dict
) -> tuple[list[dict], list[dict]]:
    """Phase 3: each base's recovered layers saved in its storage dtype; one row per layer, and the ``blobs`` rows."""
    rows, blobs = [], []
    by_base = {c.plan.base_repo: c for c in checks}
    for base_repo, layer_results in sorted(results.items()):
        check = by_base[base_repo]
        sources = [m.repo_id for m in check.members]
        good = {r.layer: r for r in layer_results if r.error is None}
        dtypes = check.members[0].dtypes
        path = None
        if good:
            blobs.append(_save_weights(lake, base_repo, run_id, {n: r.weights.to(FLOAT_STORAGE.get(dtypes[n], torch.float32)) for n, r in good.items()}))
            path = blobs[-1]["path"]
            summary["recovered"] += 1
            summary["files"].append(path)
        for r in sorted(layer_results, key=lambda r: r.layer):
            if r.error:
                rows.append(_row(base_repo, r.layer, sources, f"low: {r.error}", rank=r.rank))
                continue
            summary["layers"] += 1
            rows.append(_row(base_repo, r.layer, sources, "ok", rank=r.rank, iterations=r.iterations,
                             final_loss=r.final_loss, w_error=r.w_error, weights_path=path))
    return rows, blobs


# ----------------------------------------------------------------------------- DSiRe



@dataclass
class AdapterFeatures:
    """What DSiRe knows of the lake's adapters this run."""

    spectra: dict[str, tuple[str, dict[str, torch.Tensor]]]  # repo_id -> (revision, voter -> singular values)
    failed: dict[str, str]  # repo_id -> why its adapter could not be read (a crawl_errors row says the same)
    traffic: Counter  # what reading the new ones cost (``HubConnections.traffic``)


@task(cache_policy=NONE)
def adapter_features(lake: Lake, hub: str | None, run_id: str, stage: str) -> AdapterFeatures:
    """DSiRe spectra of every adapter in the lake: from ``lora_spectra`` where an earlier run stored them,
    else read (new spectra go to ``lora_spectra``, unreadable adapters to ``crawl_errors``).

    New spectra are rounded to float32, as stored, so a run that reads them and one that
    finds them in the lake see the same numbers.
    """
    adapters = lake.query(
        f"""
        SELECT a.repo_id, a.revision, r.hub, t.file, t.name, t.dtype FROM adapters a
        JOIN repos r USING (repo_id, revision) JOIN tensors t USING (repo_id, revision)
        WHERE t.file = '{ADAPTER_FILE}' AND len(t.shape) = 2 AND t.dtype IN {FLOAT_DTYPES}
        ORDER BY a.repo_id
        """
    ).to_pylist()
    stored: dict[tuple[str, str], dict[str, torch.Tensor]] = defaultdict(dict)
    for r in lake.query("SELECT repo_id, revision, layer, features FROM lora_spectra_all").to_pylist():
        stored[(r["repo_id"], r["revision"])][r["layer"]] = torch.tensor(r["features"], dtype=torch.float32).double()
    locs: dict[str, RepoLoc] = {}
    for a in adapters:
        loc = locs.setdefault(a["repo_id"], RepoLoc(a["repo_id"], a["revision"], a["hub"], {}, {}))
        loc.files[a["name"]] = a["file"]
        loc.dtypes[a["name"]] = a["dtype"]
    hubs = HubConnections()
    out = AdapterFeatures({}, {}, Counter())
    rows, errors = [], []
    for repo_id, loc in locs.items():
        spectra = stored.get((repo_id, loc.revision))
        if spectra is None:
            try:
                spectra = {v: s.float().double() for v, s in adapter_spectra(read_layers(hubs, loc, sorted(loc.files), {}, hub)).items()}
            except HubtreeError as err:
                out.failed[repo_id] = f"{type(err).__name__}: {err}"
                errors.append(asdict(CrawlError.of(err, RepoRef(repo_id, loc.revision), stage, ADAPTER_FILE)))
                continue
            rows += [{"repo_id": repo_id, "revision": loc.revision, "layer": v, "features": s.tolist()} for v, s in spectra.items()]
        if spectra:
            out.spectra[repo_id] = (loc.revision, spectra)
    if rows or errors:
        lake.commit("dsire-spectra", run_id, {"lora_spectra": rows, "crawl_errors": errors})
    out.traffic = hubs.traffic()
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


@flow(name="hubtree-dsire-fit", log_prints=True, on_failure=FAILURE_HOOKS)
def dsire_fit_flow(lake: str, labels_csv: str, hub: str | None = None) -> dict:
    """Fit DSiRe on the lake's adapters listed in ``labels_csv`` (``repo_id,dataset_size``); store it in the lake."""
    logger = get_run_logger()
    params = {"lake": lake, "labels_csv": labels_csv, "hub": hub}
    the_lake, run_id, started = begin_run(lake, "dsire-fit", params)
    labels = _read_labels(labels_csv)
    found = adapter_features(the_lake, hub, run_id, "dsire-fit")
    features = found.spectra
    if unreadable := sorted(set(labels) & set(found.failed)):
        raise HubtreeError(f"{len(unreadable)} labelled adapters could not be read (first: {unreadable[0]}: "
                           f"{found.failed[unreadable[0]]}); fix or drop them from the labels and fit again")
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
    the_lake.commit("dsire-fit", run_id, {"blobs": [blob]}, day=started.date())
    record_run(the_lake, "dsire-fit", run_id, params, started, "completed",
               {"repos_crawled": len(train), **traffic_columns(found.traffic)})
    logger.info("dsire model %s fitted on %d adapters", model_id, len(train))
    return {"run_id": run_id, "status": "completed", "model_id": model_id, "n_train": len(train), "path": blob["path"]}


def load_dsire_model(lake: Lake, model_id: str | None = None) -> tuple[str, DsireModel, set[str]]:
    """(id, model, its training adapters): ``model_id`` or the latest fit."""
    model_id, data = lake.read_latest_blob("dsire", model_id, "DSiRe model", f"hubtree dsire fit --lake {lake.url} --labels CSV")
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    train = {str(r) for r in arrays.pop("train_repos")}
    arrays.pop("train_revisions", None)
    return model_id, DsireModel.from_arrays(arrays), train


@flow(name="hubtree-dsire-predict", log_prints=True, on_failure=FAILURE_HOOKS)
def dsire_predict_flow(lake: str, model: str | None = None, hub: str | None = None) -> dict:
    """Dataset-size estimates for every adapter in ``lake`` that did not train the model (default: the latest fit)."""
    logger = get_run_logger()
    params = {"lake": lake, "model": model, "hub": hub}
    the_lake = Lake(lake)
    the_lake.require()
    model_id, fitted, train = load_dsire_model(the_lake, model)
    the_lake, run_id, started = begin_run(the_lake, "dsire", params)
    found = adapter_features(the_lake, hub, run_id, "dsire")
    rows, skipped = [], []
    for repo_id, (revision, spectra) in sorted(found.spectra.items()):
        if repo_id in train:
            continue
        try:
            estimate, share = fitted.predict([spectra])
        except LoraSetError:  # another base or LoRA config than the model's
            skipped.append(repo_id)
            continue
        rows.append({"repo_id": repo_id, "revision": revision, "estimate": int(estimate[0]), "vote_share": float(share[0]),
                     "n_layers": len(spectra) // 3, "model_id": model_id})
    the_lake.commit("dsire", run_id, {"dataset_size_estimates": rows}, day=started.date())
    status = run_status(len(found.failed), len(found.failed) + len(rows) + len(skipped))
    record_run(the_lake, "dsire", run_id, params, started, status,
               {"repos_crawled": len(rows), "repos_skipped": len(skipped), "repos_failed": len(found.failed),
                **traffic_columns(found.traffic)})
    if skipped:
        logger.info("%d adapters skipped: another base or LoRA config than model %s (first: %s)", len(skipped), model_id, skipped[0])
    if found.failed:
        logger.error("%d adapters could not be read (crawl_errors has why; first: %s)", len(found.failed), next(iter(found.failed)))
    return {"run_id": run_id, "status": status, "model_id": model_id, "estimated": len(rows), "skipped": skipped, "failed": found.failed}
