"""Lake upkeep as a flow: merge small files, expire old snapshots, delete what no snapshot needs.

The nightly ``hubtree run`` ends with it; ``hubtree lake compact`` runs it alone.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run

RETENTION_DAYS = 7.0  # time travel reaches this far back; older snapshots and the files only they need go


@flow(name="hubtree-compact", log_prints=True, on_failure=FAILURE_HOOKS)
def compact_flow(lake: str, retention_days: float = RETENTION_DAYS) -> dict:
    """Compact ``lake``; returns the data files before and after and the unreferenced blob files removed."""
    params = {"lake": lake, "retention_days": retention_days}
    the_lake, run_id, started = begin_run(lake, "compact", params)
    counts = the_lake.compact(retention_s=retention_days * 86400)
    record_run(the_lake, "compact", run_id, params, started, "completed")
    get_run_logger().info("compact %s: %d data files -> %d; %d unreferenced blob files removed", run_id,
                          counts["files_before"], counts["files_after"], counts["blobs_removed"])
    return {"run_id": run_id, "status": "completed", **counts}
