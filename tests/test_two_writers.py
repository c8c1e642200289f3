"""Two writers on one lake: crawls started together, and a stats run while they commit, end
with exactly one crawl's rows, every run completed, and no error; with the SQLite catalog
and with a real PostgreSQL server as the catalog."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubtree.lake import Lake
from tests.test_crawl_resume import CONTENT, hub, reference, snapshot  # noqa: F401  (module fixtures)


def _command(*args: str) -> list[str]:
    """Each process starts its own Ray, as two users' runs do: flows that share one small
    Ray cluster can each hold an actor the other waits for."""
    return [sys.executable, "-m", "hubtree.cli", *args]


def _env(**extra: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; returns their stderr, failing with it on a non-zero exit."""
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        errors.append(err)
    return errors


@pytest.mark.slow
def test_two_crawls_and_a_stats_run_together_end_with_one_crawls_rows(hub, reference, tmp_path, flows):
    lake = tmp_path / "lake"
    crawl = _command("crawl", "--hub", str(hub), "--lake", str(lake), "--batch-size", "2")
    procs = [subprocess.Popen(crawl, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 300
    while not _committed(lake) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    stats = subprocess.Popen(_command("stats", "--lake", str(lake)), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = _finish([*procs, stats])
    assert not [line for err in stderr for line in err.splitlines() if "Traceback" in line or "Error:" in line]

    assert snapshot(lake) == reference  # every key once: not doubled, not lost
    the_lake = Lake(str(lake))
    runs = the_lake.query("SELECT flow, status FROM crawl_runs ORDER BY flow").to_pylist()
    assert runs == [{"flow": "crawl", "status": "completed"}] * 2 + [{"flow": "stats", "status": "completed"}]
    doubled = the_lake.query("SELECT count(*) AS n FROM (SELECT repo_id, revision, tensor FROM layer_stats_all GROUP BY ALL HAVING count(*) > 1)")
    assert doubled.to_pylist() == [{"n": 0}]


@pytest.mark.slow
def test_two_crawls_with_a_postgresql_catalog(hub, reference, tmp_path, flows, postgres):
    lake = tmp_path / "lake"
    env = _env(HUBTREE_CATALOG=postgres)
    crawl = _command("crawl", "--hub", str(hub), "--lake", str(lake), "--batch-size", "2")
    _finish([subprocess.Popen(crawl, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)])
    the_lake = Lake(str(lake), catalog=postgres)
    assert {t: sorted(map(str, the_lake.query(f"SELECT {c} FROM {t}_all").to_pylist())) for t, c in CONTENT.items()} == reference
    assert the_lake.query("SELECT status FROM crawl_runs").column(0).to_pylist() == ["completed"] * 2
    assert not (lake / "catalog.sqlite").exists()


def _committed(lake: Path) -> bool:
    import sqlite3

    if not (lake / "catalog.sqlite").exists():
        return False
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("SELECT count(*) FROM ducklake_snapshot_changes WHERE commit_message = 'crawl'").fetchone()[0] > 0
        except sqlite3.OperationalError:
            return False


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server of Debian's packages in a temp dir (as the postgres user when run as root); its DuckLake catalog string."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").exists() else []
    initdb = Path(shutil.which("initdb") or (found[-1] if found else "/nonexistent"))
    if not initdb.exists():
        print("PostgreSQL is not installed (apt-get install postgresql): skipping the PostgreSQL catalog test")
        pytest.skip("PostgreSQL binaries not found: apt-get install postgresql")
    bin_dir = initdb.resolve().parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(f"/tmp/hubtree-pg-{os.getpid()}-{tmp_path.name}")
    home.mkdir(mode=0o755)
    if as_user:
        shutil.chown(home, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(bin_dir / "initdb", "-D", home / "data", "-A", "trust", "-U", "postgres")
    run(bin_dir / "pg_ctl", "-D", home / "data", "-l", home / "log", "-w", "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start")
    try:
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "lake")
        yield f"postgres:dbname=lake host=127.0.0.1 port={port} user=postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", home / "data", "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
