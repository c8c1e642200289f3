"""Header crawl of a zoo through the Hub-compatible server: speed and bytes read.

    python benchmarks/crawl.py [--zoo DIR] [--scale K]

Prints one table: repos/s and requests by bucket (API calls, resolves, CDN requests)
for a crawl through `hubtree hub serve` (HTTP, huggingface_hub client, byte ranges,
302s to its CDN) beside the same crawl of the folder, and the bytes fetched against the
bytes of the weights files.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, help="an existing `hubtree zoo` output (default: build one)")
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from hubtree.hub_server import running
    from hubtree.lake import Lake
    from hubtree.ops.zoo.build import build_zoo
    from hubtree.pipelines.crawl import crawl_flow
    from hubtree.pipelines.ray_runtime import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="hubtree-bench-crawl-"))
    zoo = args.zoo or work / "zoo"
    if args.zoo is None:
        build_zoo(zoo, seed=0, scale=args.scale, progress=False)
    ensure_ray()
    rows = []
    with prefect_test_harness(server_startup_timeout=180):
        for name, hub in (("folder", None), ("http", "server")):
            started = time.perf_counter()
            if hub:
                with running(zoo / "hub") as server:
                    summary = crawl_flow(hub=server.url, lake=str(work / f"lake-{name}"), progress=False)
            else:
                summary = crawl_flow(hub=str(zoo / "hub"), lake=str(work / f"lake-{name}"), progress=False)
            seconds = time.perf_counter() - started
            headers = Lake(str(work / f"lake-{name}")).query(
                "SELECT sum(h) AS n FROM (SELECT min(data_begin) AS h FROM tensors GROUP BY repo_id, file)"
            ).column(0)[0].as_py()
            rows.append((name, summary, seconds, headers))

    print(f"\nheader crawl of {zoo / 'hub'}")
    print(f"{'source':8} {'repos':>6} {'seconds':>8} {'repos/s':>8} {'requests':>9} {'api':>5} {'resolves':>9} {'cdn':>5} "
          f"{'api/repo':>9} {'fetched MB':>11} {'weights MB':>11} {'fetched/weights':>16} {'headers/weights':>16}")
    for name, s, seconds, headers in rows:
        weights = max(1, s["weights_bytes"])
        print(
            f"{name:8} {s['repos_crawled']:6d} {seconds:8.2f} {s['repos_crawled'] / seconds:8.1f} {s['requests']:9d} "
            f"{s['api_calls']:5d} {s['resolves']:9d} {s['cdn_requests']:5d} {s['api_calls'] / max(1, s['repos_listed']):9.3f} "
            f"{s['bytes_fetched'] / 1e6:11.3f} {s['weights_bytes'] / 1e6:11.3f} {s['bytes_fetched'] / weights:15.3%} {headers / weights:15.3%}"
        )
    print("requests = api (listing pages) + resolves (one per weights file, and per file the listing did not describe)\n"
          "+ cdn (ranges sent to the signed URL a resolve redirected to); fetched = each header read, which asks for the\n"
          "first min(100 KB, max(4 KB, 1% of the file)) at once (HttpFile.first_read_bytes); headers = the headers alone")


if __name__ == "__main__":
    main()
