"""The lake writer: one transaction per commit, keys never doubled, schema checks, latest-revision views, snapshots, compaction, blobs."""
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hubtree.errors import LakeError
from hubtree.lake import Lake


def repo_rows(repo_id: str, revision: str, when: datetime) -> list[dict]:
    return [{"repo_id": repo_id, "revision": revision, "crawled_at": when}]


def edge_rows(repo_id: str, revision: str, parent: str) -> list[dict]:
    return [{"repo_id": repo_id, "revision": revision, "parent_repo_id": parent, "source": "card"}]


def test_empty_lake_has_every_view_and_no_rows(tmp_path):
    lake = Lake(str(tmp_path))
    lake.create()
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


def test_rows_that_do_not_match_the_schema_are_refused(tmp_path):
    with pytest.raises(LakeError, match="schema"):
        Lake(str(tmp_path)).commit("crawl", "r", {"repos": [{"repo_id": "x"}]})


def test_crawl_date_is_the_day_of_the_run(tmp_path):
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))}, day=datetime(2025, 3, 4).date())
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


def test_a_key_the_lake_holds_is_never_written_twice(tmp_path):
    lake = Lake(str(tmp_path))
    when = datetime.now(timezone.utc)
    lake.commit("crawl", "r1", {"repos": repo_rows("a/m", "s", when), "declared_edges": edge_rows("a/m", "s", "a/p")})
    doubled = repo_rows("a/m", "s", when) + repo_rows("b/m", "s", when) + repo_rows("b/m", "s", when)
    lake.commit("crawl", "r2", {"repos": doubled, "declared_edges": edge_rows("a/m", "s", "a/p")})
    assert lake.query("SELECT repo_id, run_id FROM repos_all ORDER BY 1").to_pylist() == [
        {"repo_id": "a/m", "run_id": "r1"}, {"repo_id": "b/m", "run_id": "r2"}]
    assert lake.query("SELECT count(*) AS n FROM declared_edges_all").to_pylist() == [{"n": 1}]


def test_a_lake_made_before_a_column_was_added_gets_it_and_keeps_its_rows(tmp_path, monkeypatch):
    import hubtree.lake

    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r1", {"repos": repo_rows("a/old", "s", datetime.now(timezone.utc))})
    with lake.connect() as con:  # as an older hubtree made it: repos without pipeline_tag
        con.execute("ALTER TABLE repos_all DROP COLUMN pipeline_tag")
    monkeypatch.setattr(hubtree.lake, "_READY", set())  # a new process: it checks the lake's tables again
    lake.commit("crawl", "r2", {"repos": [{**repo_rows("a/new", "s", datetime.now(timezone.utc))[0], "pipeline_tag": "fill-mask"}]})
    assert lake.query("SELECT repo_id, pipeline_tag FROM repos ORDER BY 1").to_pylist() == [
        {"repo_id": "a/new", "pipeline_tag": "fill-mask"}, {"repo_id": "a/old", "pipeline_tag": None}]


def test_as_of_an_earlier_snapshot_gives_the_earlier_answer(tmp_path):
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r1", {"repos": repo_rows("a/m", "s1", datetime(2025, 1, 1, tzinfo=timezone.utc))})
    first = lake.snapshots().column("snapshot_id").to_pylist()[-1]
    lake.commit("crawl", "r2", {"repos": repo_rows("a/m", "s2", datetime(2025, 2, 1, tzinfo=timezone.utc))})
    assert lake.query("SELECT revision FROM repos").to_pylist() == [{"revision": "s2"}]
    assert lake.query("SELECT revision FROM repos", as_of=first).to_pylist() == [{"revision": "s1"}]
    stages = [(r["stage"], r["run_id"]) for r in lake.snapshots().to_pylist()]
    assert stages[-2:] == [("crawl", "r1"), ("crawl", "r2")]


def test_compaction_keeps_every_answer_and_leaves_fewer_files(tmp_path):
    lake = Lake(str(tmp_path))
    for i in range(6):  # over the inlining limit, so each commit writes its own small file
        rows = [r for j in range(12) for r in repo_rows(f"o/m{i}-{j}", "s", datetime(2025, 1, 1 + i, tzinfo=timezone.utc))]
        lake.commit("crawl", f"r{i}", {"repos": rows})
    answer = lambda: lake.query("SELECT repo_id, revision, run_id, crawled_at FROM repos ORDER BY repo_id").to_pylist()
    before, files_before = answer(), _parquet_files(tmp_path)
    counts = lake.compact(retention_s=0)
    assert answer() == before and len(before) == 72
    assert counts["files_after"] < counts["files_before"]
    assert len(_parquet_files(tmp_path)) < len(files_before)


def test_blob_paths_of_two_ids_never_collide(tmp_path):
    lake = Lake(str(tmp_path))
    one, two = lake.write_blob("recovered", "a/b__c", "r", b"one", ".bin"), lake.write_blob("recovered", "a__b/c", "r", b"two", ".bin")
    assert one["path"] != two["path"]
    assert (lake.read_blob(one["path"]), lake.read_blob(two["path"])) == (b"one", b"two")


def test_an_unreferenced_blob_is_removed_by_compaction_and_a_committed_one_kept(tmp_path):
    lake = Lake(str(tmp_path))
    kept, orphan = lake.write_blob("dsire", "m1", "r", b"x", ".npz"), lake.write_blob("dsire", "m2", "r", b"y", ".npz")
    lake.commit("dsire-fit", "r", {"blobs": [kept]})
    assert lake.compact(retention_s=0)["blobs_removed"] == 1
    assert lake.read_blob(kept["path"]) == b"x"
    assert lake.blobs("dsire") == {"m1": kept["path"]} and lake.blobs("recovered") == {}
    with pytest.raises(FileNotFoundError):
        lake.read_blob(orphan["path"])


def test_export_writes_plain_parquet_of_a_view(tmp_path):
    import pyarrow.parquet as pq

    lake = Lake(str(tmp_path / "lake"))
    lake.commit("crawl", "r", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))})
    path = lake.export("repos", str(tmp_path / "out"))
    assert pq.read_table(path).column("repo_id").to_pylist() == ["a/m"]


def test_the_duckdb_cli_attaches_the_lake_with_the_readme_statement(tmp_path):
    import shutil
    import subprocess

    cli = shutil.which("duckdb") or str(Path(sys.executable).parent / "duckdb")
    if not Path(cli).exists():
        pytest.skip("the DuckDB CLI is not installed: pip install duckdb-cli (in the test extra)")
    lake = Lake(str(tmp_path))
    lake.commit("crawl", "r", {"repos": repo_rows("a/m", "s", datetime.now(timezone.utc))})
    script = ";\n".join([*lake.load_sql(), lake.attach_sql(), "USE lake", "SELECT repo_id FROM repos"]) + ";"
    out = subprocess.run([cli, "-csv", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["repo_id", "a/m"]


def _parquet_files(root) -> list:
    return sorted((root / "data").rglob("*.parquet"))
