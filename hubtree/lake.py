"""The one lake writer: a DuckLake (Parquet data under the lake root, a SQL catalog beside it).

Layout: ``ROOT/data/`` holds the Parquet files DuckLake writes, ``ROOT/catalog.sqlite``
the catalog (or ``HUBTREE_CATALOG=postgres:...`` for many machines), ``ROOT/blobs/``
the files too big for a row (recovered bases, fitted models). The root is a local path
or ``s3://bucket/prefix``; an ``s3://`` root needs ``HUBTREE_CATALOG`` since a SQLite
file cannot live on object storage.

Why DuckLake: the catalog gives every commit ACID across tables, snapshots to time
travel to, and compaction, and any DuckDB can ``ATTACH`` it. One ``commit`` is one
transaction; keys stay unique because each commit inserts only rows whose key the lake
does not hold yet, and bumps one guard row per keyed table it writes, so two writers of
the same table always conflict (DuckLake would otherwise merge two inserts) and the
loser is retried against the winner's rows: never doubled, never lost.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import duckdb
import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from hubtree.errors import LakeError
from hubtree.schemas.tables import KEY_EXEMPT, KEYS, LAKE_COMMITS, SCHEMAS, arrow_rows
from hubtree.schemas.views import VIEWS

ALIAS = "lake"
GUARD = "lake_guard"
CATALOG_ENV = "HUBTREE_CATALOG"
MAX_COMMIT_TRIES = 30

_DB: duckdb.DuckDBPyConnection | None = None
_LOADED: set[str] = set()
_ATTACHED: dict[tuple, str] = {}
_READY: set[str] = set()
_LOCK = threading.RLock()


def _process_db() -> duckdb.DuckDBPyConnection:
    global _DB
    with _LOCK:
        if _DB is None:
            _DB = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        return _DB


def _load(db: duckdb.DuckDBPyConnection, name: str) -> None:
    if name not in _LOADED:
        db.execute(f"LOAD {_literal(extension_path(name))}")
        _LOADED.add(name)


def extension_path(name: str) -> str:
    """The ``.duckdb_extension`` file of the PyPI wheel ``duckdb-extension-<name>``, for ``LOAD`` with no network."""
    try:
        module = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as err:
        raise LakeError(f"the DuckDB extension {name} is missing: pip install duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}") from err
    found = sorted((Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}").glob("*.duckdb_extension"))
    if not found:
        raise LakeError(f"duckdb-extension-{name.replace('_', '-')} is not built for DuckDB {duckdb.__version__}: install the matching version")
    return str(found[0])


class Lake:
    """A DuckLake at ``url``: ``commit`` writes, ``query``/``connect`` read, ``snapshots`` and ``compact`` keep it."""

    def __init__(self, url: str, catalog: str | None = None, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.url = self.root
        self.catalog = catalog or os.environ.get(CATALOG_ENV) or (f"sqlite:{self.root}/catalog.sqlite" if self.is_local else None)
        if self.catalog is None:
            raise LakeError(f"{self.url} is on object storage: name its catalog with {CATALOG_ENV}=postgres:... or a local sqlite:PATH")
        if not self.catalog.startswith(("sqlite:", "postgres:")):
            self.catalog = f"sqlite:{self.catalog}"
        self.data_path = f"{self.url}/data/"

    # -- connections -----------------------------------------------------------
    def attach_sql(self, as_of: str | int | None = None, alias: str = ALIAS) -> str:
        """The ``ATTACH`` statement any DuckDB runs to open this lake (``as_of``: a snapshot id or a timestamp)."""
        options = [f"DATA_PATH {_literal(self.data_path)}"]
        if self.catalog == f"sqlite:{self.root}/catalog.sqlite":
            options.append("OVERRIDE_DATA_PATH true")  # a copied or moved lake folder reads its own data/
        if self.catalog.startswith("postgres:"):
            # PostgreSQL refuses inlined-data tables with a column named like a system column
            # (layer_stats.xmin): keep every row in Parquet there.
            options.append("DATA_INLINING_ROW_LIMIT 0")
        if as_of is not None:
            options.append(f"SNAPSHOT_VERSION {int(as_of)}" if str(as_of).isdigit() else f"SNAPSHOT_TIME {_literal(str(as_of))}")
        return f"ATTACH {_literal('ducklake:' + self.catalog)} AS {alias} ({', '.join(options)})"

    def extensions(self) -> list[str]:
        names = ["ducklake", "sqlite_scanner" if self.catalog.startswith("sqlite:") else "postgres_scanner"]
        return names + ([] if self.is_local else ["httpfs"])

    def load_sql(self) -> list[str]:
        """The ``LOAD`` statements the attach needs, each from its wheel's file."""
        return [f"LOAD {_literal(extension_path(n))}" for n in self.extensions()]

    def cursor(self, as_of: str | int | None = None, create: bool = False) -> duckdb.DuckDBPyConnection:
        """A cursor on this process's DuckDB with the lake attached and in use: the views ``T`` and tables ``T_all``.

        The process keeps one DuckDB with the extensions loaded and each lake attached
        once (loading takes most of a second); every call gets its own cursor, which the
        caller closes (``connect`` does).
        """
        if not create:
            self.require()
        try:
            alias = self._attach(as_of, create)
            con = _process_db().cursor()
            con.execute(f"USE {alias}")
        except duckdb.Error as err:
            raise LakeError(f"lake {self.url}: {err}") from err
        return con

    @contextmanager
    def connect(self, as_of: str | int | None = None, create: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """``cursor`` for one ``with`` block: closed after it, DuckDB errors raised as LakeError."""
        con = self.cursor(as_of, create)
        try:
            yield con
        except duckdb.Error as err:
            raise LakeError(f"lake {self.url}: {err}") from err
        finally:
            con.close()

    def _attach(self, as_of: str | int | None, create: bool) -> str:
        """Attach the lake (at ``as_of``) to the process's DuckDB once; returns its alias."""
        key = (self.url, self.catalog, None if as_of is None else str(as_of))
        with _LOCK:
            alias = _ATTACHED.get(key)
            if alias is None:
                if self.catalog.startswith("sqlite:"):
                    _sqlite_wal(self.catalog.removeprefix("sqlite:"))
                db = _process_db()
                for name in self.extensions():
                    _load(db, name)
                if not self.is_local:
                    db.execute(_s3_secret())
                alias = f"lake_{len(_ATTACHED)}"
                for tries in range(MAX_COMMIT_TRIES):
                    try:
                        db.execute(self.attach_sql(as_of, alias))
                        break
                    except duckdb.Error as err:  # two processes initialising one new server catalog
                        if "already exists" not in str(err) or tries == MAX_COMMIT_TRIES - 1:
                            raise
                        time.sleep(0.2 * (1 + random.random()))
                _ATTACHED[key] = alias
            if create and alias not in _READY:
                con = _process_db().cursor()
                try:
                    con.execute(f"USE {alias}")
                    self._retry(con, lambda c: self._ensure_tables(c, alias), "create the lake's tables")
                finally:
                    con.close()
                _READY.add(alias)
        return alias

    def query(self, sql: str, params: list | None = None, as_of: str | int | None = None) -> pa.Table:
        """Run one SQL statement over the views and return an Arrow table."""
        with self.connect(as_of) as con:
            return con.sql(sql, params=params).to_arrow_table()

    def create(self) -> None:
        """Make the lake's tables and views where they are missing (every write does this too)."""
        with self.connect(create=True):
            pass

    def exists(self) -> bool:
        if self.catalog.startswith("sqlite:"):
            return Path(self.catalog.removeprefix("sqlite:")).exists()
        return True  # a server catalog: the attach says whether it holds a lake

    def require(self) -> None:
        if not self.exists():
            raise LakeError(f"no lake at {self.url}: run `hubtree crawl --hub HUB --lake {self.url}` first")

    # -- writing ---------------------------------------------------------------
    def commit(self, stage: str, run_id: str, rows: Mapping[str, Sequence[Mapping[str, Any]]], day: date | None = None) -> str:
        """Write ``rows`` (table name -> its rows) as one transaction of run ``run_id``; returns its ``batch_id``.

        Rows name their table's columns (see ``schemas.tables``) but not ``run_id``,
        ``batch_id`` or ``crawl_date``: those are filled in here. Rows that do not fit the
        schema raise LakeError before anything is written. Rows whose key
        (``schemas.tables.KEYS``) the lake already holds are skipped: a rerun or a
        concurrent writer never doubles them. Empty tables write nothing but the commit
        is still recorded in ``lake_commits``.
        """
        batch_id = uuid.uuid4().hex
        day = day or datetime.now(timezone.utc).date()
        try:
            tables = {name: arrow_rows(name, table_rows, run_id, batch_id) for name, table_rows in rows.items()}
        except (KeyError, ValueError, pa.ArrowTypeError, pa.ArrowInvalid) as err:
            raise LakeError(f"rows do not match the table schema: {err}") from err
        prepared = {name: _with_day(table, day) for name, table in tables.items()}
        info = {"run_id": run_id, "batch_id": batch_id}

        def write(con: duckdb.DuckDBPyConnection) -> None:
            for name, table in prepared.items():
                if table.num_rows:
                    _insert(con, name, table)
            commit_row = {"batch_id": batch_id, "run_id": run_id, "stage": stage, "tables": sorted(tables),
                          "rows": sum(t.num_rows for t in tables.values()), "committed_at": datetime.now(timezone.utc), "crawl_date": day}
            _insert(con, "lake_commits", pa.Table.from_pylist([commit_row], schema=_with_date(LAKE_COMMITS)))
            guarded = sorted(name for name, t in prepared.items() if t.num_rows and name in KEYS)
            if guarded:
                con.execute(f"UPDATE {GUARD} SET commits = commits + 1 WHERE table_name IN ({', '.join(_literal(g) for g in guarded)})")
            con.execute(f"CALL {_alias(con)}.set_commit_message('hubtree', ?, extra_info => ?)", [stage, json.dumps(info)])

        with self.connect(create=True) as con:
            self._retry(con, write, f"commit a {stage} batch")
        return batch_id

    def import_rows(self, tables: dict[str, pa.Table]) -> None:
        """Insert rows that already carry ``run_id``, ``batch_id`` and ``crawl_date`` (a migration), with
        their ``lake_commits`` rows among ``tables``, as one transaction; keyed rows the lake holds are skipped."""
        for name, table in tables.items():
            if name not in SCHEMAS:
                raise LakeError(f"no table {name!r} in the lake schemas")
        prepared = {name: table.select(_with_date(SCHEMAS[name]).names).cast(_with_date(SCHEMAS[name])) for name, table in tables.items()}

        def write(con: duckdb.DuckDBPyConnection) -> None:
            for name, table in prepared.items():
                _insert(con, name, table)
            guarded = sorted(name for name in prepared if name in KEYS)
            con.execute(f"UPDATE {GUARD} SET commits = commits + 1 WHERE table_name IN ({', '.join(_literal(g) for g in guarded) or 'NULL'})")
            con.execute(f"CALL {_alias(con)}.set_commit_message('hubtree', 'migrate', extra_info => '{{}}')")

        with self.connect(create=True) as con:
            self._retry(con, write, "import the rows")

    def write_blob(self, kind: str, key: str, run_id: str, data: bytes, suffix: str) -> dict:
        """Write one file for ``key`` (a repo id or model id) under ``blobs/``; returns its ``blobs`` row.

        The file is only referenced once the caller commits the row (with the rows that
        use it) in one ``commit``, so a killed run leaves an unreferenced file that
        ``compact`` removes. The path quotes ``key`` whole (``/`` too), so two ids can
        never share a folder: ``a/b__c`` and ``a__b/c`` stay apart.
        """
        path = f"{self.url}/blobs/{kind}/{quote(key, safe='')}/{run_id}{suffix}"
        self.fs.makedirs(f"{self.root}/blobs/{kind}/{quote(key, safe='')}", exist_ok=True)
        local = _fs_path(self, path)
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp if self.is_local else local, "wb") as handle:
            handle.write(data)
        if self.is_local:
            os.replace(tmp, local)  # object stores put whole objects; local disks need the rename
        return {"kind": kind, "key": key, "path": path, "size": len(data)}

    def read_blob(self, path: str) -> bytes:
        with self.fs.open(_fs_path(self, path), "rb") as handle:
            return handle.read()

    def blobs(self, kind: str) -> dict[str, str]:
        """The committed blobs of ``kind``: key -> path, sorted by key (a model id sorts by its fit time)."""
        rows = self.query("SELECT key, path FROM blobs WHERE kind = ? ORDER BY key", [kind]).to_pylist()
        return {r["key"]: r["path"] for r in rows}

    def read_latest_blob(self, kind: str, key: str | None, name: str, fit_hint: str) -> tuple[str, bytes]:
        """(key, bytes) of blob ``key`` of ``kind``, or of the latest; a LakeError that names ``name``
        and says how to make one (``fit_hint``) when there is none, or lists the keys there are."""
        found = self.blobs(kind)
        if not found:
            raise LakeError(f"no {name} in {self.url}: run `{fit_hint}` first")
        key = key or list(found)[-1]
        if key not in found:
            raise LakeError(f"no {name} {key!r} in {self.url} (have: {', '.join(found)})")
        return key, self.read_blob(found[key])

    # -- upkeep ----------------------------------------------------------------
    def snapshots(self) -> pa.Table:
        """Every snapshot, oldest first: id, time, stage, run id."""
        with self.connect() as con:
            return con.sql(
                f"""SELECT snapshot_id, snapshot_time, commit_message AS stage,
                           json_extract_string(commit_extra_info, '$.run_id') AS run_id
                    FROM {_alias(con)}.snapshots() ORDER BY snapshot_id"""
            ).to_arrow_table()

    def compact(self, retention_s: float) -> dict:
        """Flush inlined rows, merge small files, expire snapshots older than ``retention_s``,
        delete the files no remaining snapshot needs and blob files no row references; returns counts."""
        cutoff = datetime.now(timezone.utc).timestamp() - retention_s
        older = f"to_timestamp({cutoff})"
        with self.connect(create=True) as con:
            alias = _alias(con)
            before = self._data_files(con)
            for step in (
                f"CALL ducklake_flush_inlined_data('{alias}')",
                f"CALL ducklake_merge_adjacent_files('{alias}')",
                f"CALL ducklake_expire_snapshots('{alias}', older_than => {older})",
                f"CALL ducklake_cleanup_old_files('{alias}', older_than => {older})",
                f"CALL ducklake_delete_orphaned_files('{alias}', older_than => {older})",
            ):
                self._retry(con, lambda c, s=step: c.execute(s).fetchall(), "compact the lake")
            after = self._data_files(con)
            referenced = {_fs_path(self, p) for (p,) in con.execute("SELECT path FROM blobs_all").fetchall()}
        removed_blobs = 0
        for path in self.fs.glob(f"{self.root}/blobs/*/*/*") if self.fs.exists(f"{self.root}/blobs") else []:
            if path not in referenced and self.fs.modified(path).timestamp() < cutoff:
                self.fs.rm(path)
                removed_blobs += 1
        return {"files_before": before, "files_after": after, "blobs_removed": removed_blobs}

    def export(self, table: str, out: str) -> str:
        """Write the view ``table`` as one plain Parquet file under ``out``, for engines that do not speak DuckLake."""
        if table not in SCHEMAS and table.removesuffix("_all") not in SCHEMAS:
            raise LakeError(f"no table {table!r}: one of {', '.join(sorted(SCHEMAS))} (or T_all)")
        target = f"{out.rstrip('/')}/{table}.parquet"
        fsspec.core.url_to_fs(out)[0].makedirs(out, exist_ok=True)
        with self.connect() as con:
            con.execute(f"COPY (SELECT * FROM {table}) TO {_literal(target)} (FORMAT parquet, COMPRESSION zstd)")
        return target

    # -- helpers ---------------------------------------------------------------
    def _ensure_tables(self, con: duckdb.DuckDBPyConnection, alias: str) -> None:
        """Create what a lake lacks: one ``T_all`` table per schema, columns added since it was made, the guard rows, the views."""
        have = {r[0] for r in con.execute(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{alias}'").fetchall()}
        views = {r[0] for r in con.execute(f"SELECT view_name FROM duckdb_views() WHERE database_name = '{alias}'").fetchall()}
        columns: dict[str, set[str]] = {}
        for table, column in con.execute(f"SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = '{alias}'").fetchall():
            columns.setdefault(table, set()).add(column)
        # A lake made by an older hubtree lacks the columns added since: they are added (null in its old rows).
        added = [(table, field) for table, schema in SCHEMAS.items() if f"{table}_all" in have
                 for field in _with_date(schema) if field.name not in columns.get(f"{table}_all", set())]
        if all(f"{t}_all" in have for t in SCHEMAS) and GUARD in have and set(VIEWS) <= views and not added:
            return
        for table, field in added:
            con.register("_empty", pa.schema([field]).empty_table())
            column_type = con.execute("DESCRIBE SELECT * FROM _empty").fetchone()[1]
            con.unregister("_empty")
            con.execute(f"ALTER TABLE {table}_all ADD COLUMN {field.name} {column_type}")
        for table, schema in SCHEMAS.items():
            if f"{table}_all" not in have:
                con.register("_empty", _with_date(schema).empty_table())
                con.execute(f"CREATE TABLE {table}_all AS SELECT * FROM _empty")
                con.unregister("_empty")
        if GUARD not in have:
            con.execute(f"CREATE TABLE {GUARD} (table_name VARCHAR, commits BIGINT)")
            con.execute(f"INSERT INTO {GUARD} SELECT unnest(?), 0", [sorted(KEYS)])
        for name, body in VIEWS.items():
            if name not in views:
                con.execute(f"CREATE VIEW {name} AS {body}")
        con.execute(f"CALL {alias}.set_commit_message('hubtree', 'create', extra_info => '{{}}')")

    def _retry(self, con: duckdb.DuckDBPyConnection, work, what: str):
        """Run ``work(con)`` in one transaction; on a conflict with another writer, roll back and run it again."""
        for tries in range(MAX_COMMIT_TRIES):
            con.execute("BEGIN TRANSACTION")
            try:
                result = work(con)
                con.execute("COMMIT")
                return result
            except duckdb.Error as err:
                _rollback(con)
                if not _is_conflict(err) or tries == MAX_COMMIT_TRIES - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 1.5**tries) * (0.5 + random.random()))
        raise LakeError(f"could not {what}")  # unreachable: the last try raises

    def _data_files(self, con: duckdb.DuckDBPyConnection) -> int:
        alias = _alias(con)
        tables = con.execute(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{alias}'").fetchall()
        return sum(con.execute(f"SELECT count(*) FROM ducklake_list_files('{alias}', ?)", [t]).fetchone()[0] for (t,) in tables)


def _with_day(table: pa.Table, day: date) -> pa.Table:
    """The rows as the lake stores them: plus ``crawl_date``, the day of the run."""
    return table.append_column("crawl_date", pa.array([day] * table.num_rows, pa.date32()))


def _insert(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Insert the rows whose key is new, each key once."""
    con.register("_incoming", table)
    try:
        keys = KEYS.get(name)
        if keys is None:
            con.execute(f"INSERT INTO {name}_all BY NAME SELECT * FROM _incoming")
            return
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM i.{k}" for k in keys)
        exempt = f"i.{KEY_EXEMPT[name]} OR " if name in KEY_EXEMPT else ""
        con.execute(
            f"""INSERT INTO {name}_all BY NAME SELECT * FROM _incoming i
                WHERE {exempt}NOT EXISTS (SELECT 1 FROM {name}_all t WHERE {match})
                QUALIFY row_number() OVER (PARTITION BY {', '.join(f'i.{k}' for k in keys)}) = 1"""
        )
    finally:
        con.unregister("_incoming")


def _alias(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("SELECT current_database()").fetchone()[0]


def _with_date(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("crawl_date", pa.date32()))


def _is_conflict(err: duckdb.Error) -> bool:
    text = str(err).lower()
    return isinstance(err, duckdb.TransactionException) or "conflict" in text or "database is locked" in text


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # the failed commit already ended the transaction


def _sqlite_wal(path: str) -> None:
    """Create the SQLite catalog in WAL mode (kept in the file): readers then never block a committing writer."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def _s3_secret() -> str:
    """An S3 secret from the usual AWS variables, ``AWS_ENDPOINT_URL`` included (S3-compatible servers)."""
    parts = ["TYPE s3"]
    for option, env in (("KEY_ID", "AWS_ACCESS_KEY_ID"), ("SECRET", "AWS_SECRET_ACCESS_KEY"), ("SESSION_TOKEN", "AWS_SESSION_TOKEN")):
        if os.environ.get(env):
            parts.append(f"{option} {_literal(os.environ[env])}")
    parts.append(f"REGION {_literal(os.environ.get('AWS_REGION') or os.environ.get('AWS_DEFAULT_REGION') or 'us-east-1')}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint)
        parts += [f"ENDPOINT {_literal(url.netloc)}", "URL_STYLE 'path'", f"USE_SSL {'true' if url.scheme == 'https' else 'false'}"]
    return f"CREATE OR REPLACE SECRET hubtree_s3 ({', '.join(parts)})"


def _fs_path(lake: Lake, path: str) -> str:
    return lake.fs._strip_protocol(path)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
