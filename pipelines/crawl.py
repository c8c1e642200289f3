"""The crawl flow: hub -> catalog (repos, declared parents, files, tensor headers) -> lake.

The flow lists the hub, drops every (repo_id, revision) already committed to the
lake (an unchanged repo costs one listing entry), and fans the rest out over a
pool of Ray actors in batches; each batch is one atomic lake commit. Killed at any
point and run again, it commits exactly the batches that were missing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

import ray
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from tqdm import tqdm

from hubtree.errors import HubtreeError
from hubtree.lake import Lake
from hubtree.ops.hub.catalog import CrawlError, RepoCatalog, catalog_repo
from hubtree.ops.hub.source import RepoQuery, RepoRef
from hubtree.ops.hub.connect import open_hub
from hubtree.pipelines.catalog_rows import catalog_rows
from hubtree.pipelines.ray_runtime import WorkerPool, actor_pool
from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run, run_status


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
    bytes_fetched: int = 0
    weights_bytes: int = 0
    message: str = ""


@ray.remote(num_cpus=1)
class CatalogWorker:
    """Holds one hub connection and catalogs repos sent to it."""

    def __init__(self, hub: str, budget_share: float):
        self.source = open_hub(hub, budget_share)

    def catalog(self, ref: RepoRef) -> RepoCatalog:
        return catalog_repo(self.source, ref)  # never raises: one repo's data costs that repo only

    def requests(self) -> int:
        return getattr(self.source, "requests", 0)


@task(cache_policy=NONE)
def list_new_repos(hub: str, lake: Lake, query: RepoQuery) -> tuple[list[RepoRef], int]:
    """The hub's listing minus what the lake already holds; returns (todo, listed)."""
    listed = list(open_hub(hub).list_repos(query))
    done = set()
    if lake.exists():
        done = {tuple(r.values()) for r in lake.query("SELECT repo_id, revision FROM repos_all").to_pylist()}
    todo = [ref for ref in dict.fromkeys(listed) if (ref.repo_id, ref.revision) not in done]
    return todo, len(listed)


@task(cache_policy=NONE)
def catalog_batch(pool: WorkerPool, refs: list[RepoRef], lake: Lake, run_id: str, hub: str, day: date) -> list[RepoCatalog]:
    """Catalog one batch over the actor pool and commit it to the lake as one unit."""
    catalogs = sorted(pool.map_unordered(lambda actor, ref: actor.catalog.remote(ref), refs), key=lambda c: c.ref.repo_id)
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
        todo, summary.repos_listed = list_new_repos(hub, the_lake, query)
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
        with actor_pool(lambda n: CatalogWorker.remote(hub, 1 / n), len(todo), ray_address) as pool:
            with tqdm(total=len(todo), unit="repo", desc="crawl", disable=not progress) as bar:
                for start in range(0, len(todo), batch_size):
                    for cat in catalog_batch(pool, todo[start : start + batch_size], the_lake, summary.run_id, hub, started.date()):
                        summary.repos_crawled += cat.ok
                        summary.repos_failed += not cat.ok
                        summary.bytes_fetched += cat.bytes_fetched
                        summary.weights_bytes += sum(
                            f.size for f in (cat.record.files if cat.record else []) if cat.file_kinds[f.path] in ("weights", "adapter_weights")
                        )
                        bar.update(1)
                        bar.set_postfix(fetched=f"{summary.bytes_fetched / 1e6:.1f}MB", failed=summary.repos_failed)
            summary.requests = sum(ray.get([a.requests.remote() for a in pool.actors]))
    summary.status = run_status(summary.repos_failed, summary.repos_crawled + summary.repos_failed)
    record_run(the_lake, "crawl", summary.run_id, params, started, summary.status, asdict(summary))
    logger.info(
        "crawl %s: %d crawled, %d failed, %d skipped; fetched %.2f MB of %.2f MB of weights files",
        summary.run_id, summary.repos_crawled, summary.repos_failed, summary.repos_skipped,
        summary.bytes_fetched / 1e6, summary.weights_bytes / 1e6,
    )
    return asdict(summary)

