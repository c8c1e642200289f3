"""The lake writer: atomic commits, invisible leftovers, schema checks, latest-revision views."""
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.schemas.tables import DECLARED_EDGES, REPOS


def repo_rows(repo_id: str, revision: str, when: datetime) -> pa.Table:
    return pa.Table.from_pylist(
        [{"repo_id": repo_id, "revision": revision, "crawled_at": when, "run_id": "r", "batch_id": ""}], schema=REPOS
    )


def edge_rows(repo_id: str, revision: str, parent: str) -> pa.Table:
    return pa.Table.from_pylist(
        [{"repo_id": repo_id, "revision": revision, "parent_repo_id": parent, "source": "card", "run_id": "r", "batch_id": ""}],
        schema=DECLARED_EDGES,
    )


def test_empty_lake_has_every_view_and_no_rows(tmp_path):
    lake = Lake(str(tmp_path))
    for table in ("repos", "tensors", "crawl_errors", "crawl_runs", "declared_edges_all"):
        assert lake.query(f"SELECT count(*) AS n FROM {table}").to_pylist() == [{"n": 0}]


def test_views_keep_the_latest_revision_per_repo(tmp_path):
    lake = Lake(str(tmp_path))
    old, new = datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 2, 1, tzinfo=timezone.utc)
    lake.commit("crawl", "r1", {"repos": repo_rows("a/m", "sha1", old), "declared_edges": edge_rows("a/m", "sha1", "a/old")})
    lake.commit("crawl", "r2", {"repos": repo_rows("a/m", "sha2", new), "declared_edges": edge_rows("a/m", "sha2", "a/new")})
    assert lake.query("SELECT revision FROM repos").to_pylist() == [{"revision": "sha2"}]
    assert lake.query("SELECT parent_repo_id FROM declared_edges").to_pylist() == [{"parent_repo_id": "a/new"}]
    assert lake.query("SELECT count(*) AS n FROM repos_all").to_pylist() == [{"n": 2}]


def test_parts_without_a_commit_are_invisible_and_vacuumed(tmp_path):
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r1", {"repos": repo_rows("a/m", "sha1", datetime.now(timezone.utc))})
    # A run killed between renaming its parts and writing its commit row leaves this:
    orphan = tmp_path / "repos" / "crawl_date=2025-01-01" / "part-deadbeef.parquet"
    orphan.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    table = repo_rows("a/ghost", "sha9", datetime.now(timezone.utc)).set_column(
        REPOS.get_field_index("batch_id"), "batch_id", pa.array(["deadbeef"])
    )
    pq.write_table(table, orphan)
    assert [r["repo_id"] for r in lake.query("SELECT repo_id FROM repos_all").to_pylist()] == ["a/m"]
    assert lake.vacuum() == 1
    assert not orphan.exists()


def test_rows_that_do_not_match_the_schema_are_refused(tmp_path):
    with pytest.raises(LakeError, match="schema"):
        Lake(str(tmp_path)).commit("crawl", "r", {"repos": pa.table({"repo_id": ["x"]})})


def test_partitions_are_by_crawl_date(tmp_path):
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))}, day=datetime(2025, 3, 4).date())
    assert (tmp_path / "repos" / "crawl_date=2025-03-04").is_dir()
    assert str(lake.query("SELECT crawl_date FROM repos").column(0)[0]) == "2025-03-04"
