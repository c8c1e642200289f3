"""The lake writer: atomic commits, invisible leftovers, schema checks, latest-revision views."""
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.schemas.tables import REPOS


def repo_rows(repo_id: str, revision: str, when: datetime) -> list[dict]:
    return [{"repo_id": repo_id, "revision": revision, "crawled_at": when}]


def edge_rows(repo_id: str, revision: str, parent: str) -> list[dict]:
    return [{"repo_id": repo_id, "revision": revision, "parent_repo_id": parent, "source": "card"}]


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

    table = pa.Table.from_pylist(
        [{**row, "run_id": "r", "batch_id": "deadbeef"} for row in repo_rows("a/ghost", "sha9", datetime.now(timezone.utc))], schema=REPOS
    )
    pq.write_table(table, orphan)
    assert [r["repo_id"] for r in lake.query("SELECT repo_id FROM repos_all").to_pylist()] == ["a/m"]
    assert lake.vacuum() == 1
    assert not orphan.exists()


def test_rows_that_do_not_match_the_schema_are_refused(tmp_path):
    with pytest.raises(LakeError, match="schema"):
        Lake(str(tmp_path)).commit("crawl", "r", {"repos": [{"repo_id": "x"}]})


def test_partitions_are_by_crawl_date(tmp_path):
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))}, day=datetime(2025, 3, 4).date())
    assert (tmp_path / "repos" / "crawl_date=2025-03-04").is_dir()
    assert str(lake.query("SELECT crawl_date FROM repos").column(0)[0]) == "2025-03-04"


def test_the_lake_fills_run_id_and_batch_id(tmp_path):
    lake = Lake(str(tmp_path))
    batch = lake.commit("crawl", "run-7", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))})
    assert lake.query("SELECT run_id, batch_id FROM repos").to_pylist() == [{"run_id": "run-7", "batch_id": batch}]


@pytest.mark.parametrize("row", [
    {"repo_id": "a/m", "revision": "s", "run_id": "r"},  # bookkeeping is the lake's, not the row's
    {"repo_id": "a/m", "revision": "s", "no_such_column": 1},  # a typo must not become a null column
    {"repo_id": "a/m", "revision": None},  # a required column left empty
])
def test_rows_outside_their_schema_are_refused_before_anything_is_written(tmp_path, row):
    lake = Lake(str(tmp_path))
    with pytest.raises(LakeError, match="schema"):
        lake.commit("crawl", "r", {"repos": [row]})
    assert not lake.exists()


def test_blobs_are_staged_then_put_in_place(tmp_path):
    lake = Lake(str(tmp_path))
    path = lake.write_blob("models/x/one.npz", b"abc")
    assert path == f"{tmp_path}/models/x/one.npz" and lake.read_blob("models/x/one.npz") == b"abc"
    assert lake.blobs("models/x", ".npz") == ["one.npz"] and lake.blobs("models/none") == []
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())
