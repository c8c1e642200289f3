"""The CLI: help on every verb, SQL output formats, errors as one line without a traceback."""
import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.lake import Lake


def verbs(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from verbs(command, (*prefix, name))


def _command(verb):
    command = main
    for name in verb:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("verb", [(), *verbs(main)], ids=lambda v: " ".join(v) or "hubtree")
def test_every_verb_has_help(verb):
    result = CliRunner().invoke(main, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


@pytest.mark.parametrize("verb", [v for v in verbs(main) if "--hub" in [p.opts[0] for p in _command(v).params]], ids=" ".join)
def test_every_verb_that_reads_a_hub_can_trust_it_with_the_token(verb):
    assert "--token-for-hub" in [p.opts[0] for p in _command(verb).params]


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "hubtree.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in ("zoo", "crawl", "sql", "demo"):
        assert verb in out.stdout


@pytest.fixture
def lake(tmp_path):
    rows = [{"repo_id": f"org/m{i}", "revision": "s", "author": "org", "crawled_at": datetime.now(timezone.utc)} for i in range(3)]
    Lake(str(tmp_path)).commit("crawl", "r", {"repos": rows})
    return str(tmp_path)


def test_sql_prints_table_csv_and_json(lake):
    query = "SELECT repo_id FROM repos ORDER BY repo_id"
    table = CliRunner().invoke(main, ["sql", "--lake", lake, query]).output.splitlines()
    assert table[0] == "repo_id" and table[2:] == ["org/m0", "org/m1", "org/m2"]
    csv_out = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "csv", query]).output
    assert csv_out.splitlines() == ["repo_id", "org/m0", "org/m1", "org/m2"]
    json_out = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "json", query]).output
    assert [r["repo_id"] for r in json.loads(json_out)] == ["org/m0", "org/m1", "org/m2"]  # one JSON array
    jsonl_out = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "jsonl", query]).output
    assert [json.loads(line)["repo_id"] for line in jsonl_out.splitlines()] == ["org/m0", "org/m1", "org/m2"]


def test_lists_and_structs_stay_structured(lake):
    query = "SELECT [1, 2] AS shape, {'a': 1, 'b': 'x'} AS info"
    (row,) = json.loads(CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "json", query]).output)
    assert row == {"shape": [1, 2], "info": {"a": 1, "b": "x"}}
    csv_out = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "csv", query]).output
    assert csv_out.splitlines()[1] == '"[1, 2]","{""a"": 1, ""b"": ""x""}"'


def test_sql_to_parquet_and_from_a_file_or_stdin(lake, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "repos.parquet"
    result = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "parquet", "--out", str(out), "SELECT repo_id FROM repos ORDER BY repo_id"])
    assert result.exit_code == 0 and pq.read_table(out).column("repo_id").to_pylist() == ["org/m0", "org/m1", "org/m2"]
    no_out = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "parquet", "SELECT 1"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    query_file = tmp_path / "q.sql"
    query_file.write_text("SELECT count(*) AS n\nFROM repos\n")
    from_file = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "csv", "-f", str(query_file)])
    assert from_file.output.splitlines() == ["n", "3"]
    from_stdin = CliRunner().invoke(main, ["sql", "--lake", lake, "--format", "csv", "-"], input="SELECT count(*) AS n FROM repos")
    assert from_stdin.output.splitlines() == ["n", "3"]


def test_sql_on_a_missing_lake_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["sql", "--lake", str(tmp_path / "nope"), "select 1"])
    assert result.exit_code == 1
    assert "no lake at" in result.output and "hubtree crawl" in result.output
    assert "Traceback" not in result.output


def test_bad_sql_is_one_clear_line(lake):
    result = CliRunner().invoke(main, ["sql", "--lake", lake, "select nope from repos"])
    assert result.exit_code == 1 and "SQL failed" in result.output and "Traceback" not in result.output
