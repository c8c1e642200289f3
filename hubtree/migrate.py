"""Convert a lake in the old layout (Parquet parts plus a ``lake_commits`` log) into a DuckLake.

The old layout, as the writer before DuckLake left it:
``OLD/<table>/crawl_date=YYYY-MM-DD/part-<batch_id>.parquet``, a batch visible only once
its ``lake_commits`` part exists; recovered bases under ``OLD/recovered/<a__b>/<run>.safetensors``
and DSiRe models under ``OLD/models/dsire/<id>.npz``. Every committed row moves in one
transaction (uncommitted parts stay behind, as they were invisible); blob files are copied
through ``Lake.write_blob`` and the rows that name them are pointed at the copies.
"""
from __future__ import annotations

import posixpath
import uuid
from datetime import datetime, timezone

import duckdb
import fsspec
import pyarrow as pa

from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.schemas.tables import BLOBS, LAKE_COMMITS, SCHEMAS

LAKE_COMMITS_DATED = LAKE_COMMITS.append(pa.field("crawl_date", pa.date32()))


def migrate(old_url: str, lake: Lake) -> dict[str, int]:
    """Copy every committed row of ``old_url`` into ``lake`` (one commit); returns rows per table."""
    fs, root = fsspec.core.url_to_fs(old_url)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/lake_commits"):
        raise LakeError(f"no old-layout lake at {old_url}: it has no lake_commits folder")
    if lake.exists() and lake.query("SELECT count(*) AS n FROM lake_commits_all").column(0)[0].as_py():
        raise LakeError(f"{lake.url} already holds a lake: migrate into a new one (a second migration would repeat the runs' rows)")
    con = duckdb.connect()
    if not fs.protocol or "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        con.register_filesystem(fs)
    prefix = old_url.split("://")[0] + "://" if "://" in old_url else ""
    scan = lambda t: (  # noqa: E731
        f"read_parquet('{prefix}{root}/{t}/*/part-*.parquet', hive_partitioning = true, "
        f"hive_types = {{'crawl_date': DATE}}, union_by_name = true)"
    )
    commits = con.sql(f"SELECT * FROM {scan('lake_commits')}").to_arrow_table()
    con.register("commits", commits)
    tables: dict[str, pa.Table] = {}
    for name, schema in SCHEMAS.items():
        if name in ("lake_commits", "blobs") or not fs.glob(f"{root}/{name}/*/part-*.parquet"):
            continue
        present = set(con.sql(f"SELECT * FROM {scan(name)} LIMIT 0").columns)
        columns = ", ".join(f"t.{c}" if c in present else f"NULL AS {c}" for c in schema.names)
        tables[name] = con.sql(
            f"SELECT {columns}, t.crawl_date FROM {scan(name)} t SEMI JOIN commits c ON t.batch_id = c.batch_id"
        ).to_arrow_table()
    blobs = _copy_blobs(fs, root, lake, tables)
    if blobs:
        batch_id, now = uuid.uuid4().hex, datetime.now(timezone.utc)
        tables["blobs"] = pa.Table.from_pylist([{**b, "run_id": "migrate", "batch_id": batch_id, "crawl_date": now.date()} for b in blobs],
                                               schema=BLOBS.append(pa.field("crawl_date", pa.date32())))
        commits = pa.concat_tables([commits.select(LAKE_COMMITS_DATED.names).cast(LAKE_COMMITS_DATED), pa.Table.from_pylist(
            [{"batch_id": batch_id, "run_id": "migrate", "stage": "migrate", "tables": ["blobs"], "rows": len(blobs),
              "committed_at": now, "crawl_date": now.date()}], schema=LAKE_COMMITS_DATED)])
    tables["lake_commits"] = commits
    lake.import_rows(tables)
    return {name: table.num_rows for name, table in tables.items()}


def _copy_blobs(fs, root: str, lake: Lake, tables: dict[str, pa.Table]) -> list[dict]:
    """Copy recovered bases and DSiRe models into ``LAKE/blobs``; repoint ``lora_recoveries.weights_path``."""
    rows, moved = [], {}
    recoveries = tables.get("lora_recoveries")
    if recoveries is not None:
        for row in recoveries.select(["base_repo", "run_id", "weights_path"]).to_pylist():
            old = row["weights_path"]
            source = _old_blob(fs, root, old) if old else None
            if source and old not in moved:
                with fs.open(source, "rb") as handle:
                    blob = lake.write_blob("recovered", row["base_repo"], row["run_id"], handle.read(), ".safetensors")
                rows.append(blob)
                moved[old] = blob["path"]
        paths = [moved.get(p, p) for p in recoveries.column("weights_path").to_pylist()]
        tables["lora_recoveries"] = recoveries.set_column(recoveries.schema.get_field_index("weights_path"), "weights_path", pa.array(paths, pa.string()))
    for path in sorted(fs.glob(f"{root}/models/dsire/*.npz")):
        model_id = posixpath.basename(path).removesuffix(".npz")
        with fs.open(path, "rb") as handle:
            rows.append(lake.write_blob("dsire", model_id, model_id.rsplit("-", 1)[-1], handle.read(), ".npz"))
    return rows


def _old_blob(fs, root: str, path: str) -> str | None:
    """Where a recovered base of the old lake is now: its recorded path, or the same file under ``root`` (a moved lake)."""
    for candidate in (fs._strip_protocol(path), f"{root}/recovered/{path.split('/recovered/', 1)[-1]}"):
        if fs.exists(candidate):
            return candidate
    return None
