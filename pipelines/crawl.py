"""The crawl flow: hub -> catalog (repos, declared parents, files, tensor headers) -> lake.

The flow lists the hub, drops every (repo_id, revision) already committed to the
lake (an unchanged repo costs one listing entry, and a listing page holds up to
1,000), and fans the rest out over a pool of Ray actors in batches; each batch is one
atomic lake commit. Killed at any point and run again, it commits exactly the
batches that were missing. Weights files whose sha256 is already in the lake are
recognised by their resolve alone; their tensors are copied from the lake's copy.
Every request is counted by bucket (API calls, resolves, CDN requests) in ``crawl_runs``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date

import ray
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from tqdm import tqdm

from hubtree.errors import HubtreeError
from hubtree.lake import Lake
from hubtree.ops.hub.catalog import CrawlError, RepoCatalog, catalog_repo, copy_name, split_copy
from hubtree.ops.hub.source import RepoQuery, RepoRef
from hubtree.ops.hub.connect import open_hub
from hubtree.ops.weights.safetensors_reader import TensorEntry
from hubtree.pipelines.catalog_rows import catalog_rows
from hubtree.pipelines.ray_runtime import WorkerPool, actor_pool, source_traffic
from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run, request_counts, run_status


@dataclass
class CrawlSummary:
    """What one crawl did; also its final ``crawl_runs`` row."""

    run_id: str
    status: str
    repos_listed: int = 0
    repos_skipped: int = 0
    repos_crawled: int = 0
    repos_failed: int = 0
    requests: int = 0
    api_calls: int = 0
    resolves: int = 0
    cdn_requests: int = 0
    bytes_fetched: int = 0
    weights_bytes: int = 0
    message: str = ""


@ray.remote(num_cpus=1)
class CatalogWorker:
    """Holds one hub connection (its request budget shared with every worker) and catalogs repos sent to it.

    ``known``: sha256 -> "repo_id@revision:path" of the weights files already in the lake.
    """

    def __init__(self, hub: str, known: dict[str, str]):
        self.source = open_hub(hub)
        self.known = known

    def catalog(self, ref: RepoRef) -> RepoCatalog:
        return catalog_repo(self.source, ref, self.known)  # never raises: one repo's data costs that repo only

    def traffic(self) -> dict[str, int]:
        return source_traffic(self.source)


def _add_traffic(summary: CrawlSummary, counts: Mapping[str, int]) -> None:
    for name, n in request_counts(counts).items():
        setattr(summary, name, getattr(summary, name) + n)


@task(cache_policy=NONE)
def list_new_repos(hub: str, lake: Lake, query: RepoQuery) -> tuple[list[RepoRef], int, dict[str, int]]:
    """The hub's listing minus what the lake already holds; returns (todo, listed, the listing's requests)."""
    source = open_hub(hub)
    listed = list(source.list_repos(query))
    done = set()
    if lake.exists():
        done = {tuple(r.values()) for r in lake.query("SELECT repo_id, revision FROM repos_all").to_pylist()}
    todo = [ref for ref in dict.fromkeys(listed) if (ref.repo_id, ref.revision) not in done]
    return todo, len(listed), source_traffic(source)


WEIGHTS_KINDS = ("weights", "adapter_weights")


def known_weights(lake: Lake) -> dict[str, str]:
    """sha256 -> "repo_id@revision:path" of every weights file in the lake read in full (not itself a duplicate)."""
    if not lake.exists():
        return {}
    rows = lake.query(
        "SELECT sha256, min(repo_id || '@' || revision || ':' || path) AS copy FROM files "
        f"WHERE sha256 IS NOT NULL AND duplicate_of IS NULL AND kind IN {WEIGHTS_KINDS} GROUP BY sha256"
    ).to_pylist()
    return {r["sha256"]: r["copy"] for r in rows}


def copy_duplicate_tensors(lake: Lake, catalogs: list[RepoCatalog]) -> None:
    """Give each duplicate file the tensors of the copy it duplicates (same bytes, so the same header)."""
    wanted = {copy for cat in catalogs for copy in cat.duplicates.values()}
    if not wanted:
        return
    where = " OR ".join("(repo_id = ? AND revision = ? AND file = ?)" for _ in wanted)
    params = [part for copy in sorted(wanted) for part in split_copy(copy)]
    rows = lake.query(f"SELECT repo_id, revision, file, name, dtype, shape, data_begin, data_end FROM tensors WHERE {where}", params).to_pylist()
    by_copy: dict[str, list[dict]] = {}
    for r in rows:
        by_copy.setdefault(copy_name(r["repo_id"], r["revision"], r["file"]), []).append(r)
    for cat in catalogs:
        for path, copy in cat.duplicates.items():
            cat.tensors += [TensorEntry(r["name"], r["dtype"], tuple(r["shape"]), path, r["data_begin"], r["data_end"]) for r in by_copy.get(copy, [])]


def first_copies(catalogs: list[RepoCatalog], known: dict[str, str]) -> dict[str, str]:
    """sha256 -> "repo_id@revision:path" of the weights files read in full by ``catalogs`` (cleanly) and not in ``known``."""
    found: dict[str, str] = {}
    for cat in catalogs:
        for f in cat.record.files if cat.ok and cat.record else []:
            if cat.file_kinds.get(f.path) in WEIGHTS_KINDS and f.sha256 and f.path not in cat.duplicates:
                found.setdefault(f.sha256, copy_name(cat.ref.repo_id, cat.ref.revision, f.path))
    return {sha: copy for sha, copy in found.items() if sha not in known}


def mark_copies(catalogs: list[RepoCatalog], known: dict[str, str]) -> None:
    """Weights files of this run whose sha256 an earlier file of the run or batch has: name them copies of it.

    Workers know only the lake's files (``known`` when the run began), so two repos of one
    run sharing a file both read its header; the later is marked here, before its commit,
    and later stages never read its data.
    """
    known = dict(known)
    for cat in catalogs:
        for f in cat.record.files if cat.record else []:
            copy = known.get(f.sha256) if f.sha256 else None
            if cat.file_kinds.get(f.path) in WEIGHTS_KINDS and copy and f.path not in cat.duplicates:
                cat.duplicates[f.path] = copy
        known |= first_copies([cat], known)


@task(cache_policy=NONE)
def catalog_batch(pool: WorkerPool, refs: list[RepoRef], lake: Lake, run_id: str, hub: str, day: date, known: dict[str, str]) -> list[RepoCatalog]:
    """Catalog one batch over the actor pool and commit it to the lake as one unit (``known``: the run's weights files so far)."""
    catalogs = sorted(pool.map_unordered(lambda actor, ref: actor.catalog.remote(ref), refs), key=lambda c: c.ref.repo_id)
    copy_duplicate_tensors(lake, catalogs)
    mark_copies(catalogs, known)
    lake.commit("crawl", run_id, catalog_rows(catalogs, hub), day=day)
    return catalogs


@flow(name="hubtree-crawl", log_prints=True, on_failure=FAILURE_HOOKS)
def crawl_flow(
    hub: str,
    lake: str,
    author: str | None = None,
    search: str | None = None,
    filter: list[str] | None = None,
    sort: str | None = None,
    limit: int | None = None,
    family: str | None = None,
    batch_size: int = 32,
    ray_address: str | None = None,
    progress: bool = True,
) -> dict:
    """Crawl ``hub`` into ``lake``; returns the run summary (also written to ``crawl_runs``)."""
    logger = get_run_logger()
    query = RepoQuery(author, search, tuple(filter or ()), sort, limit, family)
    params = {"hub": hub, "lake": lake, **asdict(query), "batch_size": batch_size, "ray_address": ray_address}
    summary = CrawlSummary(run_id="", status="running")
    the_lake, summary.run_id, started = begin_run(lake, "crawl", params, require=False, counts=asdict(summary))

    try:
        todo, summary.repos_listed, listing_traffic = list_new_repos(hub, the_lake, query)
        _add_traffic(summary, listing_traffic)
    except HubtreeError as err:
        summary.status, summary.message = "failed", str(err)
        error = CrawlError.of(err, None, "list")
        the_lake.commit("crawl", summary.run_id, {"crawl_errors": [asdict(error)]}, day=started.date())
        record_run(the_lake, "crawl", summary.run_id, params, started, summary.status, asdict(summary))
        logger.error("listing %s failed: %s", hub, err)
        return asdict(summary)
    summary.repos_skipped = summary.repos_listed - len(todo)
    logger.info("%d repos listed, %d already in the lake, %d to crawl", summary.repos_listed, summary.repos_skipped, len(todo))

    if todo:
        known = known_weights(the_lake)
        with actor_pool(lambda n: CatalogWorker.remote(hub, known), len(todo), ray_address) as pool:
            with tqdm(total=len(todo), unit="repo", desc="crawl", disable=not progress) as bar:
                for start in range(0, len(todo), batch_size):
                    batch = catalog_batch(pool, todo[start : start + batch_size], the_lake, summary.run_id, hub, started.date(), known)
                    known |= first_copies(batch, known)
                    for cat in batch:
                        summary.repos_crawled += cat.ok
                        summary.repos_failed += not cat.ok
                        summary.bytes_fetched += cat.bytes_fetched
                        summary.weights_bytes += sum(
                            f.size or 0 for f in (cat.record.files if cat.record else []) if cat.file_kinds[f.path] in ("weights", "adapter_weights")
                        )
                        bar.update(1)
                        bar.set_postfix(fetched=f"{summary.bytes_fetched / 1e6:.1f}MB", failed=summary.repos_failed)
            _add_traffic(summary, pool.traffic())
    summary.status = run_status(summary.repos_failed, summary.repos_crawled + summary.repos_failed)
    record_run(the_lake, "crawl", summary.run_id, params, started, summary.status, asdict(summary))
    logger.info(
        "crawl %s: %d crawled, %d failed, %d skipped; fetched %.2f MB of %.2f MB of weights files",
        summary.run_id, summary.repos_crawled, summary.repos_failed, summary.repos_skipped,
        summary.bytes_fetched / 1e6, summary.weights_bytes / 1e6,
    )
    return asdict(summary)

