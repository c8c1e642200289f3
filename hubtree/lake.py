"""The one lake writer: Parquet tables under a root, committed atomically.

Layout: ``ROOT/<table>/crawl_date=YYYY-MM-DD/part-<batch_id>.parquet``. A commit
writes every table's part to ``ROOT/_staging/<batch_id>/`` first, renames each into
place, and only then writes its row to ``lake_commits``. Readers (the DuckDB views)
see a batch only once that row exists, so a process killed anywhere in a commit
leaves nothing visible, and the next run's ``vacuum`` removes what it left.

The root is any fsspec URL (a local path by default, ``s3://bucket/prefix`` too);
nothing here knows what the rows mean: a commit takes plain rows per table, builds
them by the table's schema (``schemas.tables.arrow_rows``) and fills ``run_id`` and
``batch_id``, the two columns every row carries and no caller writes. Files that are
not rows (recovered weights, fitted models) go in with ``write_blob``, staged and
renamed alike.
"""
from __future__ import annotations

import posixpath
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from hubtree.errors import LakeError
from hubtree.schemas.tables import LAKE_COMMITS, SCHEMAS, arrow_rows
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
    def commit(self, stage: str, run_id: str, rows: Mapping[str, Sequence[Mapping[str, Any]]], day: date | None = None) -> str:
        """Write ``rows`` (table name -> its rows) as one atomic batch of run ``run_id``; returns its ``batch_id``.

        Rows name their table's columns (see ``schemas.tables``) but not ``run_id`` or
        ``batch_id``: those are filled in here. Rows that do not fit the schema raise
        LakeError before anything is written. Empty tables write no file but the commit
        is still recorded, so a batch that found nothing is distinguishable from one
        that never finished.
        """
        batch_id = uuid.uuid4().hex
        day = day or datetime.now(timezone.utc).date()
        try:
            tables = {name: arrow_rows(name, table_rows, run_id, batch_id) for name, table_rows in rows.items()}
        except (KeyError, ValueError, pa.ArrowTypeError) as err:
            raise LakeError(f"rows do not match the table schema: {err}") from err
        staged: list[tuple[str, str]] = []
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
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

    def write_blob(self, path: str, data: bytes) -> str:
        """Put ``data`` at ``path`` under the root, staged then renamed into place; returns its full path or URL."""
        staged = f"{self.root}/{STAGING}/blob-{uuid.uuid4().hex}/{posixpath.basename(path)}"
        self.fs.makedirs(posixpath.dirname(staged), exist_ok=True)
        with self.fs.open(staged, "wb") as handle:
            handle.write(data)
        final = f"{self.root}/{path}"
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.mv(staged, final)
        self._remove(posixpath.dirname(staged))
        return final if self.is_local else f"{self._protocol()}://{final}"

    def read_blob(self, path: str) -> bytes:
        """The bytes of a blob written with ``write_blob`` (``path`` under the root)."""
        with self.fs.open(f"{self.root}/{path}", "rb") as handle:
            return handle.read()

    def blobs(self, folder: str, suffix: str = "") -> list[str]:
        """Names of the blobs in ``folder`` (under the root) ending in ``suffix``, sorted; [] for no folder."""
        full = f"{self.root}/{folder}"
        found = self.fs.glob(f"{full}/*{suffix}") if self.fs.exists(full) else []
        return sorted(posixpath.basename(p) for p in found)

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
        prefix = "" if self.is_local else f"{self._protocol()}://"
        return f"{prefix}{self.root}/{table}/*/*.parquet"

    def exists(self) -> bool:
        return self.fs.exists(posixpath.join(self.root, "lake_commits"))

    def require(self) -> None:
        if not self.exists():
            raise LakeError(f"no lake at {self.url}: run `hubtree crawl --hub HUB --lake {self.url}` first")

    # -- helpers ---------------------------------------------------------------
    def _protocol(self) -> str:
        return self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol

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


def _batch_of(path: str) -> str:
    return posixpath.basename(path).removeprefix("part-").removesuffix(".parquet")
