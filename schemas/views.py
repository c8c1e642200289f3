"""The DuckDB views users query: committed rows only, latest revision per repo.

For every table ``T`` there are two views:
- ``T_all``: every committed row (all revisions, all runs), with ``crawl_date``;
- ``T``: what a user means by the table. Repo-keyed tables keep the latest crawled
  revision of each repo; ``crawl_errors`` keeps each distinct error once and drops
  errors of repos that have since been crawled; ``crawl_runs`` keeps the last
  state of each run; tables a stage rewrites whole (trees, LoRA recoveries, size
  estimates) keep the rows of that stage's latest run.
Rows of a batch whose commit never landed (a killed run) are never visible.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from hubtree.schemas.tables import LATEST_RUN, REPO_KEYED, SCHEMAS

_LATEST = {
    "repos": "SELECT * FROM repos_all QUALIFY row_number() OVER (PARTITION BY repo_id ORDER BY crawled_at DESC, revision) = 1",
    "crawl_runs": "SELECT * FROM crawl_runs_all QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY finished_at DESC NULLS LAST) = 1",
    "crawl_errors": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT e.*, row_number() OVER (
                PARTITION BY e.repo_id, e.revision, e.path, e.stage, e.error_class, e.message ORDER BY e.at DESC) AS rn
            FROM crawl_errors_all e
            WHERE e.repo_id IS NULL OR e.revision IS NOT NULL
               OR NOT EXISTS (SELECT 1 FROM repos r WHERE r.repo_id = e.repo_id AND r.crawled_at > e.at)
        ) WHERE rn = 1""",
    "lake_commits": "SELECT * FROM lake_commits_all",
}


def create_views(con: duckdb.DuckDBPyConnection, globs: dict[str, str | None]) -> None:
    """Create ``T_all`` and ``T`` for every table; a table with no parts yet is an empty view."""
    for table in sorted(SCHEMAS, key=lambda name: name != "lake_commits"):  # the others filter on it
        schema = SCHEMAS[table]
        con.execute(f"CREATE OR REPLACE VIEW {table}_all AS {_source(con, table, schema, globs.get(table))}")
    for table in SCHEMAS:
        if table in _LATEST:
            body = _LATEST[table]
        elif table in LATEST_RUN:
            body = (
                f"SELECT * FROM {table}_all WHERE run_id = (SELECT run_id FROM lake_commits_all "
                f"WHERE stage = '{LATEST_RUN[table]}' ORDER BY committed_at DESC LIMIT 1)"
            )
        elif table in REPO_KEYED:
            body = f"SELECT t.* FROM {table}_all t SEMI JOIN repos r ON t.repo_id = r.repo_id AND t.revision = r.revision"
        else:
            body = f"SELECT * FROM {table}_all"
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")


def _source(con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, glob: str | None) -> str:
    if glob is None:
        empty = schema.empty_table().append_column("crawl_date", pa.array([], pa.date32()))
        con.register(f"_empty_{table}", empty)
        return f"SELECT * FROM _empty_{table}"
    scan = f"read_parquet('{glob}', hive_partitioning = true, hive_types = {{'crawl_date': DATE}}, union_by_name = true)"
    if table == "lake_commits":
        return f"SELECT * FROM {scan}"
    return f"SELECT * FROM {scan} WHERE batch_id IN (SELECT batch_id FROM lake_commits_all)"
