"""`hubtree lake migrate`: a lake made by the writer before DuckLake keeps every committed row.

tests/fixtures/old_lake was made by that writer (a 4-repo crawl with one broken header,
a recovered base and a DSiRe model as the LoRA flows stored them, and one part of a batch
whose commit never landed). The expected rows are read here with pyarrow alone.
"""
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.lake import Lake
from hubtree.schemas.tables import SCHEMAS

FIXTURE = Path(__file__).parent / "fixtures" / "old_lake"
TABLES = ("repos", "declared_edges", "files", "tensors", "crawl_errors", "crawl_runs", "lora_recoveries", "lake_commits")


def committed_rows(root: Path, table: str) -> list[str]:
    """The old layout's visible rows of ``table``: parts of batches with a lake_commits part.
    Columns added to the table since the old writer are null."""
    committed = {p.stem.removeprefix("part-") for p in (root / "lake_commits").rglob("part-*.parquet")}
    rows = []
    for part in sorted((root / table).rglob("part-*.parquet")):
        if part.stem.removeprefix("part-") in committed:
            day = part.parent.name.removeprefix("crawl_date=")
            rows += [_canon({**dict.fromkeys(SCHEMAS[table].names), **r, "crawl_date": day}) for r in pq.read_table(part).to_pylist()]
    return sorted(rows)


def _canon(row: dict) -> str:
    return str({k: (str(v) if v is not None else None) for k, v in sorted(row.items()) if k != "weights_path"})


def test_migration_keeps_every_committed_row_and_the_blobs(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(FIXTURE, old)
    result = CliRunner().invoke(main, ["lake", "migrate", "--from", str(old), "--lake", str(new)])
    assert result.exit_code == 0, result.output
    lake = Lake(str(new))
    for table in TABLES:
        expected = committed_rows(old, table)
        got = lake.query(f"SELECT * FROM {table}_all WHERE stage IS DISTINCT FROM 'migrate'" if table == "lake_commits" else f"SELECT * FROM {table}_all")
        assert sorted(_canon(r) for r in got.to_pylist()) == expected, table
        assert expected or table == "lake_commits"
    assert lake.query("SELECT count(*) AS n FROM repos_all WHERE repo_id = 'ghost/never'").to_pylist() == [{"n": 0}]
    path = lake.query("SELECT weights_path FROM lora_recoveries").column(0)[0].as_py()
    assert lake.read_blob(path) == (old / "recovered" / "org__base" / "run1.safetensors").read_bytes()
    assert lake.query("SELECT kind, key FROM blobs ORDER BY kind").to_pylist() == [
        {"kind": "dsire", "key": "20260101T000000-abcd1234"}, {"kind": "recovered", "key": "org/base"}]
    again = CliRunner().invoke(main, ["lake", "migrate", "--from", str(old), "--lake", str(new)])
    assert again.exit_code != 0 and "already holds a lake" in again.output
    assert lake.query("SELECT count(*) AS n FROM tensors_all").to_pylist() == [{"n": 9}]
