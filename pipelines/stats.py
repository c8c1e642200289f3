"""The stats flow: lake tensors -> weights by range -> layer_stats, layer_sketches, probe_features.

By default it reads, of the tensors the tree stage uses (the square attention matrices),
one block of consecutive rows each within ``budget_bytes`` per model (``ops/weights/row_sample``:
one byte range per tensor, at rows fixed by seed, name and shape, so every model is sampled
alike): a Llama-2-7B costs 0.06% of its bytes, a small model is read whole. ``full=True``
reads whole tensors, of ``layers`` (a regex) or of every floating tensor; ``layers``
without ``full`` samples the tensors it matches.

Work goes to a pool of Ray actors, each owning one device (a GPU where the cluster
has them, else a CPU). One work unit is one model revision: its tensors are read
file by file (byte ranges from a remote hub, ``pread`` from a local folder), after the
file's header is read again and checked, and the layers of the unit are handled in
batches so same-shaped matrices share one batched eigen-decomposition. A tensor whose
(repo, revision, name, rows) already has statistics in the lake is never read again, and
a file the crawl found to be a byte-for-byte copy of another (``files.duplicate_of``, by
sha256) is not read at all: its rows are its original's, once the original has them.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date

import ray
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from tqdm import tqdm

from hubtree.errors import HubtreeError
from hubtree.lake import Lake
from hubtree.ops.hub.catalog import CrawlError, split_copy
from hubtree.ops.hub.source import RepoRef
from hubtree.ops.weights.layer_stats import batch_layer_stats
from hubtree.ops.weights.probes import probe_features
from hubtree.ops.trees.families import square_attention_layers
from hubtree.ops.weights.row_sample import DEFAULT_BUDGET, RowSample, plan_samples, read_blocks
from hubtree.ops.weights.safetensors_reader import FLOAT_DTYPES, as_float_tensor, entries_for
from hubtree.ops.weights.sketch import sketch
from hubtree.pipelines.ray_runtime import HubConnections, WorkerPool, actor_device, actor_options, actor_pool
from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run, run_status, traffic_columns

STATS_TABLES = ("layer_stats", "layer_sketches", "probe_features")  # what the stage writes per tensor
# Tensors of one unit are decoded and handled in chunks of at most this many bytes (float32).
CHUNK_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class StatsSettings:
    """What every worker computes; stored beside the sketches and probes so they stay comparable."""

    sketch_width: int = 512
    sketch_seed: int = 0
    n_probes: int = 32
    probe_dim: int = 32
    budget_bytes: int | None = DEFAULT_BUDGET  # sampled bytes per model; None: whole tensors
    sample_seed: int = 0  # names where the rows are


@dataclass
class ModelUnit:
    """One model revision's tensors still missing statistics."""

    repo_id: str
    revision: str
    hub: str
    files: dict[str, list[str]]  # file -> tensor names
    nbytes: int
    samples: dict[str, RowSample] = field(default_factory=dict)  # tensor -> rows read; absent: all of it


@dataclass
class CopiedFile:
    """A weights file the crawl found to be an exact copy (same sha256) of one in the lake: its rows are the copy's."""

    repo_id: str
    revision: str
    file: str
    hub: str
    of: tuple[str, str, str]  # (repo_id, revision, path) of the file it copies
    samples: dict[str, RowSample | None]  # tensor -> rows wanted; None: all of it


@dataclass
class UnitResult:
    unit: ModelUnit
    rows: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    errors: list[CrawlError] = field(default_factory=list)


@ray.remote
class StatsWorker:
    """Owns a device and a connection per hub; turns units into rows."""

    def __init__(self, settings: StatsSettings, hub_override: str | None):
        self.settings = settings
        self.hub_override = hub_override
        self.device = actor_device()
        self.hubs = HubConnections()

    def process(self, unit: ModelUnit) -> UnitResult:
        result = UnitResult(unit)
        ref = RepoRef(unit.repo_id, unit.revision)
        url = self.hub_override or unit.hub
        try:
            self.hubs.get(url)
        except HubtreeError as err:
            result.errors.append(CrawlError.of(err, ref, "stats"))
            return result
        for file, names in unit.files.items():
            try:
                with self.hubs.open_file(url, ref, file) as handle:
                    for chunk in _chunks(entries_for(handle, names, file)):
                        tensors = {name: as_float_tensor(a) for name, a in read_blocks(handle, chunk, unit.samples).items()}
                        self._rows(file, {e.name: e for e in chunk}, tensors, result)
            except HubtreeError as err:
                result.errors.append(CrawlError.of(err, ref, "stats", file))
        return result

    def traffic(self) -> dict[str, int]:
        return self.hubs.traffic()

    def map_tensors(self, unit: ModelUnit, fn: Callable[[dict[str, torch.Tensor]], object]) -> tuple[ModelUnit, object, str | None]:
        """``fn`` of the unit's tensors (float32, read by range): (unit, result, error or None); what it read, in ``traffic()``.

        Other stages (ProbeX) read chosen layers here and send back only what ``fn`` makes of them.
        """
        ref = RepoRef(unit.repo_id, unit.revision)
        tensors = {}
        try:
            for file, names in unit.files.items():
                with self.hubs.open_file(self.hub_override or unit.hub, ref, file) as handle:
                    tensors |= {name: as_float_tensor(a) for name, a in read_blocks(handle, entries_for(handle, names, file), {}).items()}
            return unit, fn(tensors), None
        except HubtreeError as err:
            return unit, None, f"{type(err).__name__}: {err}"

    def _rows(self, file: str, entries: dict, tensors: dict[str, torch.Tensor], out: UnitResult) -> None:
        s = self.settings
        stats = batch_layer_stats(tensors, self.device)
        for name, t in tensors.items():
            e = entries[name]
            sample = out.unit.samples.get(name)
            key = {"repo_id": out.unit.repo_id, "revision": out.unit.revision, "tensor": name, "file": file,
                   "dtype": e.dtype, "shape": list(e.shape), "row_begin": sample and sample.begin,
                   "row_end": sample and sample.end}
            out.rows["layer_stats"].append({**key, **asdict(stats[name]), "device": self.device.type})
            if t.ndim == 2:
                t = t.to(self.device)
                out.rows["layer_sketches"].append(
                    {**key, "seed": s.sketch_seed, "width": s.sketch_width, "sketch": sketch(t, s.sketch_width, s.sketch_seed).cpu().tolist()}
                )
                out.rows["probe_features"].append(
                    {**key, "seed": s.sketch_seed, "n_probes": s.n_probes, "out_dim": s.probe_dim,
                     "features": probe_features(t, s.n_probes, s.probe_dim, s.sketch_seed).cpu().tolist()}
                )


def _chunks(entries: list) -> list[list]:
    """Consecutive groups of tensors of at most CHUNK_BYTES as float32 (a huge tensor goes alone)."""
    chunks, current, size = [], [], 0
    for entry in entries:
        nbytes = entry.numel * 4
        if current and size + nbytes > CHUNK_BYTES:
            chunks.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    return chunks + ([current] if current else [])


@task(cache_policy=NONE)
def pending_units(lake: Lake, layers: str | None, settings: StatsSettings = StatsSettings()) -> tuple[list[ModelUnit], list[CopiedFile]]:
    """Floating, non-empty tensors of the latest revisions without statistics at ``settings``' rows, by model;
    and, apart, those in files that copy another file byte for byte (``files.duplicate_of``), never read.

    Which tensors: those ``layers`` matches; without ``layers``, the tree stage's (square
    attention matrices) when sampling, every floating tensor when reading whole ones. The
    sampled rows are planned over the chosen tensors (``plan_samples``), so the plan is the
    same for every model of an architecture. ``nbytes`` counts what will be read.
    """
    copies = {
        (r["repo_id"], r["revision"], r["path"]): split_copy(r["duplicate_of"])
        for r in lake.query("SELECT repo_id, revision, path, duplicate_of FROM files WHERE duplicate_of IS NOT NULL").to_pylist()
    }
    rows = lake.query(
        f"""
        SELECT t.repo_id, t.revision, r.hub, t.file, t.name, t.shape, t.data_end - t.data_begin AS nbytes
        FROM tensors t JOIN repos r USING (repo_id, revision)
        WHERE t.dtype IN {FLOAT_DTYPES} AND t.numel > 0
        ORDER BY t.repo_id, t.file, t.data_begin
        """
    ).to_pylist()
    done = {
        (r["repo_id"], r["revision"], r["tensor"], r["row_begin"], r["row_end"])
        for r in lake.query("SELECT DISTINCT repo_id, revision, tensor, row_begin, row_end FROM layer_stats_all").to_pylist()
    }
    by_model: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_model.setdefault((row["repo_id"], row["revision"]), []).append(row)
    pattern = re.compile(layers) if layers else None
    units, copied = [], {}
    for (repo_id, revision), tensors in by_model.items():
        if pattern is not None:
            chosen = {t["name"] for t in tensors if pattern.search(t["name"])}
        elif settings.budget_bytes is not None:
            chosen = set(square_attention_layers({t["name"]: t["shape"] for t in tensors}))
        else:
            chosen = {t["name"] for t in tensors}
        picked = [t for t in tensors if t["name"] in chosen]
        plan = {} if settings.budget_bytes is None else plan_samples(
            [(t["name"], t["shape"], t["nbytes"]) for t in picked], settings.budget_bytes, settings.sample_seed)
        unit = ModelUnit(repo_id, revision, tensors[0]["hub"], {}, 0)
        for t in picked:
            sample = plan.get(t["name"])
            if (repo_id, revision, t["name"], sample and sample.begin, sample and sample.end) in done:
                continue
            if (repo_id, revision, t["file"]) in copies:
                copy = copied.setdefault((repo_id, revision, t["file"]), CopiedFile(
                    repo_id, revision, t["file"], t["hub"], copies[(repo_id, revision, t["file"])], {}))
                copy.samples[t["name"]] = sample
                continue
            unit.files.setdefault(t["file"], []).append(t["name"])
            rows = t["shape"][0] if len(t["shape"]) > 1 else 1
            unit.nbytes += t["nbytes"] if sample is None else t["nbytes"] * sample.rows // max(1, rows)
            if sample is not None:
                unit.samples[t["name"]] = sample
        if unit.files:
            units.append(unit)
    return units, list(copied.values())


def copied_rows(lake: Lake, copied: list[CopiedFile]) -> tuple[dict[str, list[dict]], list[CopiedFile]]:
    """The rows of each copied file, taken from the file it copies (same bytes, same rows read, same numbers);
    and the copied files whose original has none of them yet (it failed, or was read at other rows)."""
    originals = sorted({c.of for c in copied})
    where = " OR ".join("(repo_id = ? AND revision = ? AND file = ?)" for _ in originals)
    params = [part for key in originals for part in key]
    found: dict[str, dict[tuple, dict]] = {name: {} for name in STATS_TABLES}
    for name in STATS_TABLES:
        for row in lake.query(f"SELECT * EXCLUDE (run_id, batch_id, crawl_date) FROM {name}_all WHERE {where}", params).to_pylist():
            found[name].setdefault((row["repo_id"], row["revision"], row["file"], row["tensor"], row["row_begin"], row["row_end"]), row)
    out: dict[str, list[dict]] = {name: [] for name in STATS_TABLES}
    missing = []
    for c in copied:
        wanted = [(*c.of, tensor, s and s.begin, s and s.end) for tensor, s in c.samples.items()]
        if not all(key in found["layer_stats"] for key in wanted):
            missing.append(c)
            continue
        for name in STATS_TABLES:
            out[name] += [{**found[name][key], "repo_id": c.repo_id, "revision": c.revision, "file": c.file}
                          for key in wanted if key in found[name]]
    return out, missing


def as_unit(copy: CopiedFile) -> ModelUnit:
    """A copied file whose original has no rows to give, as work to read like any other file."""
    sampled = {name: s for name, s in copy.samples.items() if s is not None}
    return ModelUnit(copy.repo_id, copy.revision, copy.hub, {copy.file: list(copy.samples)}, 0, sampled)


@task(cache_policy=NONE)
def stats_batch(pool: WorkerPool, units: list[ModelUnit], lake: Lake, run_id: str, day: date) -> list[UnitResult]:
    """Process a batch of models on the pool and commit their rows as one unit."""
    results = sorted(pool.map_unordered(lambda actor, unit: actor.process.remote(unit), units), key=lambda r: r.unit.repo_id)
    rows: dict[str, list[dict]] = {name: [] for name in STATS_TABLES}
    for result in results:
        for name, table_rows in result.rows.items():
            rows[name] += table_rows
    rows["crawl_errors"] = [asdict(e) for r in results for e in r.errors]
    lake.commit("stats", run_id, rows, day=day)
    return results


def _read_units(units: list[ModelUnit], settings: StatsSettings, hub: str | None, ray_address: str | None, lake: Lake,
                run_id: str, day: date, batch_size: int, progress: bool, summary: dict) -> None:
    """Read ``units`` on a pool of workers in batches of ``batch_size`` models, one lake commit each; counts into ``summary``."""
    if not units:
        return
    with (
        actor_pool(lambda n: StatsWorker.options(**actor_options()).remote(settings, hub), len(units), ray_address) as pool,
        tqdm(total=sum(u.nbytes for u in units), unit="B", unit_scale=True, desc=f"stats ({len(units)} models)", disable=not progress) as bar,
    ):
        for start in range(0, len(units), batch_size):
            for result in stats_batch(pool, units[start : start + batch_size], lake, run_id, day):
                summary["tensors"] += len(result.rows["layer_stats"])
                summary["failed"] += bool(result.errors)
                bar.update(result.unit.nbytes)
        summary["traffic"] += pool.traffic()


@flow(name="hubtree-stats", log_prints=True, on_failure=FAILURE_HOOKS)
def stats_flow(
    lake: str,
    hub: str | None = None,
    layers: str | None = None,
    batch_size: int = 8,
    ray_address: str | None = None,
    sketch_width: int = StatsSettings.sketch_width,
    sketch_seed: int = StatsSettings.sketch_seed,
    n_probes: int = StatsSettings.n_probes,
    probe_dim: int = StatsSettings.probe_dim,
    progress: bool = True,
    full: bool = False,
    budget_bytes: int = DEFAULT_BUDGET,
    sample_seed: int = StatsSettings.sample_seed,
) -> dict:
    """Layer statistics, sketches and probe features for every tensor in ``lake`` that lacks them.

    ``hub`` overrides where weights are read from (default: the hub each repo was
    crawled from); ``layers`` is a regex on tensor names (default: the tree stage's
    tensors when sampling, every floating tensor with ``full``); ``budget_bytes`` is what
    the samples of one model may cost; ``full`` reads whole tensors instead.
    """
    logger = get_run_logger()
    settings = StatsSettings(sketch_width, sketch_seed, n_probes, probe_dim, None if full else budget_bytes, sample_seed)
    params = {"lake": lake, "hub": hub, "layers": layers, "batch_size": batch_size, "ray_address": ray_address, **asdict(settings)}
    the_lake, run_id, started = begin_run(lake, "stats", params)
    units, copied = pending_units(the_lake, layers, settings)
    copied_models = {(c.repo_id, c.revision) for c in copied} - {(u.repo_id, u.revision) for u in units}
    summary = {"run_id": run_id, "status": "completed", "models": len(units) + len(copied_models), "tensors": 0, "failed": 0,
               "copied_files": 0, "traffic": Counter()}
    logger.info("%d models have tensors without statistics, %d files copy another file", len(units), len(copied))
    read = lambda work: _read_units(work, settings, hub, ray_address, the_lake, run_id, started.date(), batch_size, progress, summary)
    read(units)
    if copied:  # after the reads: a copy's original may have been read just now
        rows, missing = copied_rows(the_lake, copied)
        the_lake.commit("stats", run_id, rows, day=started.date())
        summary["tensors"] += len(rows["layer_stats"])
        summary["copied_files"] = len(copied) - len(missing)
        read([as_unit(c) for c in missing])
    summary["status"] = run_status(summary["failed"], summary["models"])
    columns = traffic_columns(summary.pop("traffic"))
    summary |= columns
    record_run(the_lake, "stats", run_id, params, started, summary["status"],
               {"repos_crawled": summary["models"] - summary["failed"], "repos_failed": summary["failed"], **columns})
    logger.info("stats %s: %d tensors of %d models, %d models with errors", run_id, summary["tensors"], summary["models"], summary["failed"])
    return summary
