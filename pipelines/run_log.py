"""Every flow run leaves rows in ``crawl_runs``: one when it starts, one when it ends.

A run killed in between keeps its ``running`` row, which is how a user tells an
interrupted run from a finished one.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from prefect import get_run_logger

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


def _flow_run_ids() -> dict:
    """Prefect's ids for the flow run writing this row, so a row can be matched to Prefect's run."""
    from prefect.runtime import flow_run

    own = flow_run.get_id()
    return {"flow_run_id": own, "root_flow_run_id": flow_run.get_root_flow_run_id() if own else None}


def begin_run(
    lake: Lake | str, flow: str, params: dict, require: bool = True, counts: dict | None = None
) -> tuple[Lake, str, datetime]:
    """What every stage does first: check the lake (unless ``require`` is False: a first crawl
    makes it), drop a killed run's uncommitted parts, and commit this run's ``running`` row
    (with ``counts``, if given). Returns (lake, run_id, started)."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    if require:
        lake.require()
    run_id, started = uuid.uuid4().hex, datetime.now(timezone.utc)
    removed = lake.vacuum()
    if removed:
        get_run_logger().info("removed %d parts left by an interrupted run", removed)
    record_run(lake, flow, run_id, params, started, "running", counts)
    return lake, run_id, started
