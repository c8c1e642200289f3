"""Each failure a user can cause is one line with what to do, a non-zero exit, no traceback, and fast:
checked before Prefect, Ray, torch or a lake is loaded (asserted on Python's import log, not on a clock)."""
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.lake import Lake
from tests.hubs import add_repo

CLI = [sys.executable, "-m", "hubtree.cli"]


def hubtree(*args, **env):
    """Run the CLI; returns the result and the top-level packages it imported (from -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *CLI[1:], *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    done.stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return done, imported


HEAVY = {"prefect", "ray", "torch"}


def assert_one_clear_line(done, *words):
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("verb", [["trees"], ["stats"], ["lora"], ["sql", "select 1"], ["report", "--out", "R"]])
def test_no_lake(tmp_path, verb):
    args = [verb[0], "--lake", str(tmp_path / "nope"), *verb[1:]]
    done, imported = hubtree(*args)
    assert_one_clear_line(done, "no lake at", "hubtree crawl")
    assert not HEAVY & imported  # neither Prefect, Ray nor torch loaded


def test_a_missing_hub_folder_creates_no_lake(tmp_path):
    done, imported = hubtree("crawl", "--hub", str(tmp_path / "nohub"), "--lake", str(tmp_path / "lake"))
    assert_one_clear_line(done, "no hub folder at", "hubtree zoo")
    assert not (tmp_path / "lake").exists() and not HEAVY & imported


def test_a_refused_connection_says_refused_at_once(tmp_path):
    done, imported = hubtree("crawl", "--hub", f"http://127.0.0.1:{_closed_port()}", "--lake", str(tmp_path / "lake"))
    assert_one_clear_line(done, "connection refused")
    assert not (tmp_path / "lake").exists() and not HEAVY & imported


def test_offline_mode(tmp_path):
    done, imported = hubtree("crawl", "--hub", "http://127.0.0.1:9", "--lake", str(tmp_path / "lake"), HF_HUB_OFFLINE="1")
    assert_one_clear_line(done, "HF_HUB_OFFLINE")
    assert not (tmp_path / "lake").exists() and not HEAVY & imported


def test_a_bad_cron(tmp_path):
    done, imported = hubtree("schedule", "--cron", "0 25 * * *", "--hub", str(tmp_path), "--lake", str(tmp_path / "lake"))
    assert_one_clear_line(done, "bad cron")
    assert not HEAVY & imported


def test_debug_shows_the_traceback(tmp_path):
    done, _ = hubtree("--debug", "trees", "--lake", str(tmp_path / "nope"))
    assert done.returncode == 1 and "Traceback" in done.stderr and "LakeError" in done.stderr


def test_refused_retries_are_short():
    """The retry policy gives up on a refused connection after a few quick tries, and says "refused"."""
    from hubtree.errors import HubUnavailableError
    from hubtree.ops.hub.retry import REFUSED_RETRIES, RetryPolicy

    naps = []
    policy = RetryPolicy(sleep=naps.append, seed=0)
    import httpx2

    def refused():
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(HubUnavailableError, match="connection refused"):
        policy.run("api", refused, what="http://127.0.0.1:1/api/models")
    assert policy.attempts == REFUSED_RETRIES + 1 and sum(naps) < 5


@pytest.fixture
def small_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("runs", "r", {"crawl_runs": [{"flow": "crawl", "status": "completed"}]})
    return lake


def test_dsire_predict_before_fit(small_lake):
    result = CliRunner().invoke(main, ["dsire", "predict", "--lake", small_lake.url])
    assert result.exit_code == 1 and "no DSiRe model" in result.output and "dsire fit" in result.output
    assert result.exc_info[0] is SystemExit


def test_an_unknown_family_in_the_lake(small_lake, tmp_path):
    result = CliRunner().invoke(main, ["tree", "--lake", small_lake.url, "--family", "99", "--out", str(tmp_path / "t.html")])
    assert result.exit_code == 1 and "no family 99" in result.output


def test_crawling_an_unknown_family(tmp_path, flows):
    add_repo(tmp_path / "hub", "org/base", seed=0)
    result = CliRunner().invoke(main, ["crawl", "--hub", str(tmp_path / "hub"), "--lake", str(tmp_path / "lake"), "--family", "org/typo"])
    assert result.exit_code == 1 and "unknown family: no repo org/typo" in result.output


def test_a_verb_runs_its_flow_without_heartbeats_unless_asked(small_lake, flows, monkeypatch):
    # Prefect's heartbeat thread cost every short verb 0.6-0.7 s (joined in 1 s steps, and
    # its first beat opens the events websocket drained at exit); a user's setting still wins.
    import prefect.flow_engine

    seen = []
    real = prefect.flow_engine._send_heartbeats

    def spy(engine, *args, **kwargs):
        seen.append(engine.heartbeat_seconds)
        return real(engine, *args, **kwargs)

    monkeypatch.setattr(prefect.flow_engine, "_send_heartbeats", spy)
    assert CliRunner().invoke(main, ["trees", "--lake", small_lake.url]).exit_code == 0
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    assert CliRunner().invoke(main, ["trees", "--lake", small_lake.url]).exit_code == 0
    assert seen == [None, 180]  # 180: Prefect's setting as this process read it (its default)
