"""Every flow run leaves rows in ``crawl_runs``: one when it starts, one when it ends.

A run killed in between keeps its ``running`` row, which is how a user tells an
interrupted run from a finished one.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pyarrow as pa

from hubtree.lake import Lake
from hubtree.schemas.tables import CRAWL_RUNS


def record_run(
    lake: Lake, flow: str, run_id: str, params: dict, started: datetime, status: str, counts: dict | None = None
) -> None:
    """Commit the run's current state; ``counts`` fills whichever count columns it names."""
    row = {
        **{k: v for k, v in (counts or {}).items() if k in CRAWL_RUNS.names},
        "flow": flow,
        "status": status,
        "hub": params.get("hub"),
        "lake": lake.url,
        "parameters": json.dumps(params, sort_keys=True, default=str),
        "started_at": started,
        "finished_at": None if status == "running" else datetime.now(timezone.utc),
        "run_id": run_id,
        "batch_id": "",
    }
    lake.commit("runs", run_id, {"crawl_runs": pa.Table.from_pylist([row], schema=CRAWL_RUNS)}, day=started.date())


def begin_run(lake_url: str, flow: str, params: dict) -> tuple[Lake, str, datetime]:
    """What every stage over an existing lake does first: check the lake and commit this
    run's ``running`` row. Returns (lake, run_id, started). A killed run left nothing to
    clean: its open transaction never committed."""
    lake = Lake(lake_url)
    lake.require()
    run_id, started = uuid.uuid4().hex, datetime.now(timezone.utc)
    record_run(lake, flow, run_id, params, started, "running")
    return lake, run_id, started
