"""Start-up of each ``hubtree`` verb: wall and CPU seconds, and which heavy libraries it imported.

Each verb runs as its own process, the way a user or cron runs it, on a lake made by
``hubtree demo`` (``--lake``; its hub folder from the lake's ``repos.hub``). Verbs that
change nothing (a recrawl of an unchanged hub, stats on an unchanged lake) are what
"start-up" means here: the cost of answering when there is (almost) nothing to do. The
lake is copied first, so the benchmark never changes the user's lake.

With ``--server`` hubtree's local Prefect server (``hubtree server``) is started first, under
a throwaway HUBTREE_HOME, as the issue asks for ``hubtree trees``; without it, verbs that run
a flow start Prefect's temporary API of their own.

Wall time depends on what else runs on the machine, so the table also gives CPU seconds
(user + sys of the process and its children) and the load average before each verb.
Run: ``python benchmarks/startup.py --lake hubtree-demo/lake --server [--repeat 3]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HEAVY = ("torch", "prefect", "ray", "pandas", "scipy", "duckdb")


@dataclass
class Timing:
    verb: str
    wall_s: float
    cpu_s: float
    load: float
    exit_code: int
    imported: tuple[str, ...]


def hubtree_argv() -> list[str]:
    """The ``hubtree`` of this interpreter's environment, run through ``-X importtime``."""
    return [sys.executable, "-X", "importtime", "-c", "import sys; from hubtree.cli import main; sys.argv[0] = 'hubtree'; main()"]


def run_verb(name: str, args: list[str], env: dict, stdin: str | None = None) -> Timing:
    """One verb in a fresh process: wall clock, CPU of it and its children, heavy top-level imports."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(hubtree_argv() + args, env=env, input=stdin, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    packages = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\w+)$", done.stderr, flags=re.M))
    imported = tuple(m for m in HEAVY if m in packages)
    return Timing(name, wall, cpu, load, done.returncode, imported)


def verbs(lake: Path, hub: str, out: Path) -> list[tuple[str, list[str], str | None]]:
    """(label, argv, stdin) of each verb on the lake copy; those that write go to ``out``."""
    from hubtree.lake import Lake

    one_repo = Lake(str(lake)).query("SELECT min(child_repo_id) AS r FROM tree_edges").column("r")[0].as_py()
    return [
        ("--help", ["--help"], None),
        ("sql", ["sql", "--lake", str(lake), "select count(*) from repos"], None),
        ("sql -f - (stdin)", ["sql", "--lake", str(lake), "-f", "-"], "select count(*) from tree_edges"),
        ("lineage", ["lineage", one_repo, "--lake", str(lake)], None),
        ("tree --repo", ["tree", "--lake", str(lake), "--repo", one_repo, "--out", str(out / "tree.html")], None),
        ("report", ["report", "--lake", str(lake), "--out", str(out / "report")], None),
        ("snapshots", ["snapshots", "--lake", str(lake)], None),
        ("trees", ["trees", "--lake", str(lake)], None),
        ("stats (nothing new)", ["stats", "--lake", str(lake)], None),
        ("crawl (nothing new)", ["crawl", "--hub", hub, "--lake", str(lake)], None),
        ("schedules", ["schedules"], None),
        ("error: no lake", ["trees", "--lake", str(out / "no-lake")], None),
        ("error: bad cron", ["schedule", "--hub", hub, "--lake", str(lake), "--cron", "61 * * * *"], None),
        ("error: missing hub folder", ["crawl", "--hub", str(out / "no-hub"), "--lake", str(out / "new-lake")], None),
    ]


def start_server(env: dict) -> subprocess.Popen:
    """``hubtree server`` in the background; returns once its API answers."""
    server = subprocess.Popen([sys.executable, "-m", "hubtree.cli", "server"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    state = Path(env["HUBTREE_HOME"]) / "prefect" / "server.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if state.exists():
            from hubtree.prefect_local import healthy

            if healthy(json.loads(state.read_text())["api_url"]):
                return server
        time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("the local Prefect server did not start in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", type=Path, default=Path("hubtree-demo/lake"), help="A lake made by `hubtree demo` (copied, never changed).")
    parser.add_argument("--server", action="store_true", help="Start hubtree's local Prefect server first (the issue's setting).")
    parser.add_argument("--repeat", type=int, default=2, help="Runs per verb; the table shows the fastest and the first.")
    parser.add_argument("--only", default=None, help="Only verbs whose label contains this text.")
    args = parser.parse_args()
    if not (args.lake / "catalog.sqlite").exists():
        raise SystemExit(f"no lake at {args.lake}: run `hubtree demo` first (it writes hubtree-demo/lake)")
    scratch = Path(tempfile.mkdtemp(prefix="hubtree-startup-"))
    lake = scratch / "lake"
    shutil.copytree(args.lake, lake)
    env = {**os.environ, "HUBTREE_HOME": str(scratch / "home")}
    env.pop("PREFECT_API_URL", None)
    from hubtree.lake import Lake

    hub = Lake(str(lake)).query("SELECT any_value(hub) AS hub FROM repos").column("hub")[0].as_py()
    server = start_server(env) if args.server else None
    try:
        rows = []
        for label, argv, stdin in verbs(lake, hub, scratch):
            if args.only and args.only not in label:
                continue
            runs = [run_verb(label, argv, env, stdin) for _ in range(args.repeat)]
            rows.append((runs[0], min(runs, key=lambda t: t.wall_s)))
            print(f"  {label}: {runs[0].wall_s:.2f} s", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nhubtree start-up per verb ({os.cpu_count()} CPUs; local Prefect server {'running' if args.server else 'not running'}; "
          f"best of {args.repeat}; cpu = user+sys incl. children)")
    print(f"{'verb':28} {'wall s':>7} {'cpu s':>6} {'first':>6} {'load':>5} {'exit':>4}  imports")
    for first, best in rows:
        print(f"{best.verb:28} {best.wall_s:7.2f} {best.cpu_s:6.2f} {first.wall_s:6.2f} {best.load:5.1f} {best.exit_code:4d}  "
              f"{' '.join(best.imported) or '-'}")


if __name__ == "__main__":
    main()
