"""The whole pipeline as one Prefect flow: each stage a subflow, each rerunnable alone.

Stages read only the lake and the hub, so ``hubtree run`` is the same as running
``hubtree crawl`` and every later verb in order, then ``hubtree lake compact``; the nightly
deployment runs this.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from prefect import flow

from hubtree.lake import Lake
from hubtree.pipelines.compact import compact_flow
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.run_log import FAILURE_HOOKS, record_run
from hubtree.pipelines.lora import lora_flow
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow

STAGES = ("crawl", "stats", "trees", "lora", "compact")


@flow(name="hubtree-run", log_prints=True, on_failure=FAILURE_HOOKS)
def run_flow(
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
    stages: list[str] | None = None,
) -> dict:
    """Run ``stages`` (default: all) against ``hub`` and ``lake``; returns each stage's summary."""
    params = {k: v for k, v in locals().items()}
    the_lake, run_id, started = Lake(lake), uuid.uuid4().hex, datetime.now(timezone.utc)
    record_run(the_lake, "run", run_id, params, started, "running")
    results: dict[str, dict] = {}
    if "crawl" in (stages or STAGES):
        results["crawl"] = crawl_flow(
            hub=hub, lake=lake, author=author, search=search, filter=filter, sort=sort, limit=limit,
            family=family, batch_size=batch_size, ray_address=ray_address, progress=False,
        )
    if "stats" in (stages or STAGES):
        results["stats"] = stats_flow(lake=lake, ray_address=ray_address, progress=False)
    if "trees" in (stages or STAGES):
        results["trees"] = trees_flow(lake=lake)
    if "lora" in (stages or STAGES):
        results["lora"] = lora_flow(lake=lake, ray_address=ray_address, progress=False)
    if "compact" in (stages or STAGES):
        results["compact"] = compact_flow(lake=lake)
    statuses = {r.get("status") for r in results.values()}
    status = next((s for s in ("failed", "partial") if s in statuses), "completed")
    record_run(the_lake, "run", run_id, params, started, status)
    return {"run_id": run_id, "status": status, "stages": results}
