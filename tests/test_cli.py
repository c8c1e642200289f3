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


@pytest.mark.parametrize("verb", [(), *verbs(main)], ids=lambda v: " ".join(v) or "hubtree")
def test_every_verb_has_help(verb):
    result = CliRunner().invoke(main, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


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
    assert [json.loads(line)["repo_id"] for line in json_out.splitlines()] == ["org/m0", "org/m1", "org/m2"]


def test_sql_on_a_missing_lake_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["sql", "--lake", str(tmp_path / "nope"), "select 1"])
    assert result.exit_code == 1
    assert "no lake at" in result.output and "hubtree crawl" in result.output
    assert "Traceback" not in result.output


def test_bad_sql_is_one_clear_line(lake):
    result = CliRunner().invoke(main, ["sql", "--lake", lake, "select nope from repos"])
    assert result.exit_code == 1 and "SQL failed" in result.output and "Traceback" not in result.output
