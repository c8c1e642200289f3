"""Listing a local hub again: the on-disk file-hash cache against hashing every byte.

    python benchmarks/local_recrawl.py [--zoo DIR] [--files 100000] [--per-repo 100]

A local hub's revisions are content hashes, and listing is what every crawl does first.
Each listing runs in a fresh process (as a crawl, a stats run or ``hub serve`` would):
"cold" starts with an empty hubtree home, which is what every process paid before the
cache (a per-process cache only); "warm" lists the unchanged folder again with the
cache of the cold run. Bytes read are the process's ``rchar`` during the listing
(every read syscall: file data, the cache's SQLite pages, directory entries are not counted).
Prints one table: the zoo (if given) and a synthetic folder of small files.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def list_once(root: str) -> None:
    """Child process: list every repo with its revision; print seconds and bytes read as JSON."""
    from hubtree.ops.hub.local import LocalHub

    before, started = _rchar(), time.perf_counter()
    refs = list(LocalHub(root).list_repos())
    print(json.dumps({"repos": len(refs), "seconds": time.perf_counter() - started, "read": _rchar() - before}))


def measure(root: Path, home: Path) -> dict:
    env = {**os.environ, "HUBTREE_HOME": str(home)}
    runs = {}
    for label in ("cold", "warm"):
        out = subprocess.run([sys.executable, __file__, "--list", str(root)], env=env, capture_output=True, text=True, check=True)
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
    files = sum(1 for p in root.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"files": files, "bytes": size, **runs}


def synthetic(root: Path, files: int, per_repo: int) -> Path:
    """``files`` small files (1-4 KiB of distinct bytes) in repos of ``per_repo`` files each."""
    for i in range(files):
        repo = root / f"org{i // (per_repo * 100)}" / f"repo{i // per_repo}"
        repo.mkdir(parents=True, exist_ok=True)
        (repo / f"f{i % per_repo}.bin").write_bytes(os.urandom(1024 * (1 + i % 4)))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, help="a `hubtree zoo` output (its hub/ folder is listed)")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-repo", type=int, default=100)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        return list_once(args.list)

    work = Path(tempfile.mkdtemp(prefix="hubtree-bench-recrawl-"))
    rows = []
    if args.zoo:
        rows.append(("zoo", measure(args.zoo / "hub", work / "home-zoo")))
    rows.append((f"synthetic {args.files} files", measure(synthetic(work / "synthetic", args.files, args.per_repo), work / "home-syn")))
    print(f"{'folder':<24} {'repos':>6} {'files':>7} {'MB':>8} {'cold s':>7} {'cold MB read':>12} {'warm s':>7} {'warm MB read':>12}")
    for name, r in rows:
        print(
            f"{name:<24} {r['cold']['repos']:>6} {r['files']:>7} {r['bytes'] / 1e6:>8.1f} {r['cold']['seconds']:>7.2f} "
            f"{r['cold']['read'] / 1e6:>12.2f} {r['warm']['seconds']:>7.2f} {r['warm']['read'] / 1e6:>12.2f}"
        )


if __name__ == "__main__":
    main()
