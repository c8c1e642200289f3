"""The one lake writer: Parquet tables under a root, committed atomically.

Layout: ``ROOT/<table>/crawl_date=YYYY-MM-DD/part-<batch_id>.parquet``. A commit
writes every table's part to ``ROOT/_staging/<batch_id>/`` first, renames each into
place, and only then writes its row to ``lake_commits``. Readers (the DuckDB views)
see a batch only once that row exists, so a process killed anywhere in a commit
leaves nothing visible, and the next run's ``vacuum`` removes what it left.

The root is any fsspec URL (a local path by default, ``s3://bucket/prefix`` too);
nothing here knows what the rows mean.
"""
from __future__ import annotations

import posixpath
import uuid
from datetime import date, datetime, timezone

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from hubtree.errors import LakeError
from hubtree.schemas.tables import LAKE_COMMITS, SCHEMAS
from hubtree.schemas.views import create_views

STAGING = "_staging"


class Lake:
    """A Parquet lake at ``url``: ``commit`` writes, ``connect`` queries."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    # -- writing ---------------------------------------------------------------
    def commit(self, stage: str, run_id: str, tables: dict[str, pa.Table], day: date | None = None) -> str:
        """Write ``tables`` as one atomic batch; returns its ``batch_id``.

        Each table must match its schema in ``schemas.tables`` (``batch_id`` is filled
        in here). Empty tables write no file but the commit is still recorded, so a
        batch that found nothing is distinguishable from one that never finished.
        """
        batch_id = uuid.uuid4().hex
        day = day or datetime.now(timezone.utc).date()
        staged: list[tuple[str, str]] = []
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            table = _with_batch(table, SCHEMAS[name], batch_id)
            staged.append((self._stage(batch_id, name, table), self._part_path(name, day, batch_id)))
        for tmp, final in staged:
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            self.fs.mv(tmp, final)
        commit_row = pa.Table.from_pylist(
            [
                {
                    "batch_id": batch_id,
                    "run_id": run_id,
                    "stage": stage,
                    "tables": sorted(tables),
                    "rows": sum(t.num_rows for t in tables.values()),
                    "committed_at": datetime.now(timezone.utc),
                }
            ],
            schema=LAKE_COMMITS,
        )
        tmp = self._stage(batch_id, "lake_commits", commit_row)
        final = self._part_path("lake_commits", day, batch_id)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.mv(tmp, final)  # the commit point
        self._remove(posixpath.join(self.root, STAGING, batch_id))
        return batch_id

    def vacuum(self) -> int:
        """Delete parts of batches that never committed (a killed run's leftovers); returns how many.

        Assumes one writer per lake at a time, as the flows guarantee by running stages in order.
        """
        committed = self.committed_batches()
        removed = 0
        for table in SCHEMAS:
            for path in self._parts(table):
                if _batch_of(path) not in committed:
                    self._remove(path)
                    removed += 1
        self._remove(posixpath.join(self.root, STAGING))
        return removed

    def committed_batches(self) -> set[str]:
        return {_batch_of(p) for p in self._parts("lake_commits")}

    # -- reading ---------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with one view per table (see ``schemas.views``)."""
        con = duckdb.connect()
        if not self.is_local:
            con.register_filesystem(self.fs)
        create_views(con, {t: self.glob(t) for t in SCHEMAS})
        return con

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """Run one SQL statement over the views and return an Arrow table."""
        with self.connect() as con:
            return con.sql(sql, params=params).to_arrow_table()

    def glob(self, table: str) -> str | None:
        """The read_parquet glob for a table, or None while it has no parts."""
        if not self._parts(table):
            return None
        prefix = "" if self.is_local else f"{self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol}://"
        return f"{prefix}{self.root}/{table}/*/*.parquet"

    def exists(self) -> bool:
        return self.fs.exists(posixpath.join(self.root, "lake_commits"))

    def require(self) -> None:
        if not self.exists():
            raise LakeError(f"no lake at {self.url}: run `hubtree crawl --hub HUB --lake {self.url}` first")

    # -- helpers ---------------------------------------------------------------
    def _part_path(self, table: str, day: date, batch_id: str) -> str:
        return f"{self.root}/{table}/crawl_date={day.isoformat()}/part-{batch_id}.parquet"

    def _stage(self, batch_id: str, name: str, table: pa.Table) -> str:
        path = f"{self.root}/{STAGING}/{batch_id}/{name}.parquet"
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
        return path

    def _parts(self, table: str) -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/{table}/*/part-*.parquet"))

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _with_batch(table: pa.Table, schema: pa.Schema, batch_id: str) -> pa.Table:
    if "batch_id" in table.column_names:
        table = table.drop_columns(["batch_id"])
    table = table.append_column("batch_id", pa.array([batch_id] * table.num_rows, pa.string()))
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise LakeError(f"rows do not match the table schema: {err}") from err


def _batch_of(path: str) -> str:
    return posixpath.basename(path).removeprefix("part-").removesuffix(".parquet")
