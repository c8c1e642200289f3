"""Every flow run leaves rows in ``crawl_runs``: one when it starts, one when it ends.

The final status says how it ended: ``completed`` (every unit done), ``partial``
(finished, but some units, repos or models, failed: their ``crawl_errors`` rows say
why, and a rerun retries them), or ``failed`` (the run raised, or no unit succeeded;
an error row with the run's id and the flow as its stage holds the error). A run
killed in between keeps its ``running`` row, which is how a user tells an interrupted
run from a finished one. Every flow names ``FAILURE_HOOKS`` as its Prefect
``on_failure`` hooks, so a flow that raises can never be left ``running``.
"""
from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone

from prefect.context import FlowRunContext

from hubtree.lake import Lake
from hubtree.schemas.tables import BOOKKEEPING, CRAWL_RUNS


def record_run(
    lake: Lake, flow: str, run_id: str, params: dict, started: datetime, status: str, counts: dict | None = None
) -> None:
    """Commit the run's current state; ``counts`` fills whichever count columns it names."""
    row = {
        **{k: v for k, v in (counts or {}).items() if k in CRAWL_RUNS.names and k not in BOOKKEEPING},
        "flow": flow,
        "status": status,
        "hub": params.get("hub"),
        "lake": lake.url,
        "parameters": json.dumps(params, sort_keys=True, default=str),
        "started_at": started,
        "finished_at": None if status == "running" else datetime.now(timezone.utc),
        **_flow_run_ids(),
    }
    lake.commit("runs", run_id, {"crawl_runs": [row]}, day=started.date())
    if (flow_run := _flow_run_id()) is not None:
        if status == "running":
            _ACTIVE[flow_run] = (lake, flow, run_id, params, started)
        else:
            _ACTIVE.pop(flow_run, None)


def request_counts(traffic: Mapping[str, int]) -> dict[str, int]:
    """``crawl_runs``' request columns from a run's traffic by bucket (see ``ray_runtime.source_traffic``)."""
    buckets = {name: traffic.get(name, 0) for name in ("api_calls", "resolves", "cdn_requests")}
    return {"requests": sum(buckets.values()), **buckets}


def traffic_columns(traffic: Mapping[str, int]) -> dict[str, int]:
    """``crawl_runs``' request columns and ``bytes_fetched`` from a run's traffic (``WorkerPool.traffic``)."""
    return {"bytes_fetched": traffic.get("bytes", 0), **request_counts(traffic)}


def run_status(failed: int, total: int) -> str:
    """``completed``, ``partial`` (some of ``total`` units failed) or ``failed`` (all of them)."""
    if failed and failed >= total:
        return "failed"
    return "partial" if failed else "completed"


# The run each Prefect flow run of this process recorded as running, by flow run id.
_ACTIVE: dict[str, tuple[Lake, str, str, dict, datetime]] = {}


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


def record_failed_run(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` hook: the run this flow recorded as running ends ``failed``, its error a crawl_errors row."""
    active = _ACTIVE.pop(str(flow_run.id), None)
    if active is None:
        return
    lake, name, run_id, params, started = active
    from hubtree.ops.hub.catalog import CrawlError  # the error row every stage writes

    err = state.result(raise_on_failure=False)
    if not isinstance(err, BaseException):
        err = RuntimeError(state.message or "the flow failed")
    try:
        lake.commit(name, run_id, {"crawl_errors": [asdict(CrawlError.of(err, None, name))]}, day=started.date())
    finally:
        record_run(lake, name, run_id, params, started, "failed")


FAILURE_HOOKS = [record_failed_run]


def _flow_run_ids() -> dict:
    """Prefect's ids for the flow run writing this row, so a row can be matched to Prefect's run."""
    from prefect.runtime import flow_run

    own = flow_run.get_id()
    return {"flow_run_id": own, "root_flow_run_id": _root_flow_run_id(own) if own else None}


@functools.lru_cache(maxsize=64)
def _root_flow_run_id(own: str) -> str:
    """The root of the flow run ``own`` (a subflow asks the API twice): once per run, not per row."""
    from prefect.runtime import flow_run

    return flow_run.get_root_flow_run_id()


def begin_run(
    lake: Lake | str, flow: str, params: dict, require: bool = True, counts: dict | None = None
) -> tuple[Lake, str, datetime]:
    """What every stage does first: check the lake (unless ``require`` is False: a first crawl
    makes it) and commit this run's ``running`` row (with ``counts``, if given). Returns
    (lake, run_id, started). A killed run left nothing to clean: its open transaction never
    committed."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    if require:
        lake.require()
    run_id, started = uuid.uuid4().hex, datetime.now(timezone.utc)
    record_run(lake, flow, run_id, params, started, "running", counts)
    return lake, run_id, started
