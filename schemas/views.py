"""The views users query, stored in the lake's catalog so any DuckDB that attaches it sees them.

For every table ``T`` the lake holds the table ``T_all`` (every committed row: all
revisions, all runs, with ``crawl_date``) and the view ``T``, what a user means by the
table. Repo-keyed tables keep the latest crawled revision of each repo; ``crawl_errors``
keeps each distinct error once and drops errors of repos that have since been crawled;
``crawl_runs`` keeps the last state of each run; tables a stage rewrites whole (trees,
LoRA recoveries, size estimates) keep the rows of that stage's latest run; ``blobs``
keeps the latest file per (kind, key). Uncommitted rows are never visible: the lake
is transactional.
"""
from __future__ import annotations

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
    "blobs": (
        "SELECT b.* FROM blobs_all b JOIN lake_commits_all c ON b.batch_id = c.batch_id "
        "QUALIFY row_number() OVER (PARTITION BY b.kind, b.key ORDER BY c.committed_at DESC) = 1"
    ),
    "lake_commits": "SELECT * FROM lake_commits_all",
}


def _body(table: str) -> str:
    if table in _LATEST:
        return _LATEST[table]
    if table in LATEST_RUN:
        return (
            f"SELECT * FROM {table}_all WHERE run_id = (SELECT run_id FROM lake_commits_all "
            f"WHERE stage = '{LATEST_RUN[table]}' ORDER BY committed_at DESC LIMIT 1)"
        )
    if table in REPO_KEYED:
        return f"SELECT t.* FROM {table}_all t SEMI JOIN repos r ON t.repo_id = r.repo_id AND t.revision = r.revision"
    return f"SELECT * FROM {table}_all"


# View name -> body; ``repos`` first, since other views read it.
VIEWS: dict[str, str] = {table: _body(table) for table in sorted(SCHEMAS, key=lambda t: t != "repos")}
