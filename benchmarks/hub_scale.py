"""Hub scale: what crawl + stats + trees cost per model on 7B-shaped repos and on zoos, and how right the trees are.

Run: ``python benchmarks/hub_scale.py [--n 30] [--seed 5] [--zoo-seeds 11 12]``. One table from one run:

- a big family (``hubtree hub serve --big-family N --seed S``: Llama-2-7B-shaped repos,
  bf16, ~13.5 GB each, computed on demand) served over HTTP on 127.0.0.1; ``hubtree
  crawl``, ``stats`` and ``trees`` run with default settings through their flows;
- the same for the default zoo of each ``--zoo-seeds`` seed, served the same way (the
  default budget of 8 MiB per model covers a zoo model whole), again with ``stats --full``
  and ``trees --full`` (today's full reads), and again at 8 rows per attention matrix (what
  the default reads of a 7B, here a quarter of each matrix);
- the full-read path as it was before sampled reads (every byte, and a resolve per
  tensor, as before one resolve per file), timed on two models reading one attention matrix in full, then extrapolated to
  all 291 tensors of a 7B model: the row says "extrapolated".

Then the 7B pipeline once more against a hub whose quotas are far stricter than the free
tier's (10 API calls and 10 resolves per 5 s window): it must wait out each window, not
meet a 429.

Per model: API calls, resolves, CDN requests and 429s (the served hub's counters),
bytes fetched over the weights' bytes, seconds (wall, this machine),
the directed accuracy of the undeclared edges against the truth (with upload times, as
the flows run, and from weights alone: the same lake, upload times hidden), and models
per 5-minute window at the free tier's limits (1,000 API calls, 5,000 resolves).

Seeds: the big family's generator and the default budget were tuned on seeds 1-3 and the
zoo code on zoo seeds 0 and 1; ``--seed`` 5 and zoo seeds 11 and 12 were not used for tuning.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from hubtree.hub_server import running  # noqa: E402
from hubtree.hub_server.limits import RateLimits
from hubtree.hub_server.big import big_family_repos
from hubtree.lake import Lake
from hubtree.ops.trees.families import square_attention_layers
from hubtree.ops.trees.mother import TrueTree, evaluate, recover_trees
from hubtree.ops.zoo.big_family import BigFamily, layout
from hubtree.ops.zoo.build import ZooSpec, build_zoo, load_truth
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.ray_runtime import ensure_ray
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import declared_rows, lake_edges, load_models, trees_flow

FREE_API, FREE_RESOLVES = 1000, 5000  # per 5-minute window (methods.md §9)
# A hub far stricter than any tier, so the 7B pipeline outruns its quota many times over: it must pace, and meet no 429.
PACED_QUOTA, PACED_WINDOW_S = 10, 5


@dataclass
class Row:
    setting: str
    models: int
    api: float  # per model
    resolves: float
    cdn: float  # ranged GETs to the signed CDN URLs resolves redirect to (in no rate-limit bucket)
    fetched: float  # bytes fetched / weights' bytes
    seconds: float  # per model
    directed: float | None  # undeclared edges, upload times known
    untimed: float | None  # undeclared edges, weights alone
    limited: int | None = 0  # 429s the hub answered (None: not measured)
    extrapolated: bool = False

    def per_window(self) -> float:
        return min(FREE_API / max(self.api, 1e-9), FREE_RESOLVES / max(self.resolves, 1e-9))

    def line(self) -> str:
        pct = lambda v: f"{v:8.1%}" if v is not None else f"{'-':>8s}"
        tag = " (extrapolated)" if self.extrapolated else ""
        limited = "-" if self.limited is None else str(self.limited)
        return (f"{self.setting + tag:<52s} {self.models:>6d} {self.api:>6.3f} {self.resolves:>8.2f} {self.cdn:>7.1f}"
                f" {limited:>5s} {self.fetched:>9.4%} {self.seconds:>8.1f} {pct(self.directed)} {pct(self.untimed)} {self.per_window():>9.0f}")


HEADER = (f"{'setting':<52s} {'models':>6s} {'API':>6s} {'resolves':>8s} {'CDN':>7s} {'429s':>5s} {'fetched':>9s} {'s/model':>8s}"
          f" {'directed':>8s} {'untimed':>8s} {'per 5min':>9s}")


@dataclass
class Counts:
    """Requests the served hub counted: API calls, resolves, CDN requests, and 429s of either bucket."""

    api: int = 0
    resolves: int = 0
    cdn: int = 0
    limited: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def counts(server) -> Counts:
    """What the server's counters gained since this was last called for it."""
    now = server.counters.snapshot()
    before, server.seen = getattr(server, "seen", {}), now
    gained = lambda key: now.get(key, 0) - before.get(key, 0)
    return Counts(gained("api"), gained("resolvers"), gained("cdn"), gained("rate_limited_api") + gained("rate_limited_resolvers"))


def scores(lake: str, truth: TrueTree, full: bool = False) -> tuple[float, float]:
    """Directed accuracy of the undeclared edges: of the flow's trees, and of trees from the same lake without upload times."""
    flow = evaluate(lake_edges(Lake(lake)), truth).directed_acc
    models, _, _ = load_models(Lake(lake), full)
    untimed = recover_trees(dataclasses.replace(models, created_at=np.full(len(models.ids), np.nan)), declared_rows(Lake(lake)))
    return flow, evaluate(untimed.edges, truth).directed_acc


def pipeline(server, lake: str, truth: TrueTree, setting: str, full: bool = False, budget: int | None = None) -> tuple[Row, Row]:
    """crawl, stats, trees with defaults (or ``--full``, or ``budget`` rows per square attention matrix) over the served hub.

    Returns its row, and the crawl's alone.
    """
    counts(server)
    t0 = time.perf_counter()
    crawl = crawl_flow(hub=server.url, lake=lake, progress=False)
    crawl_seconds = time.perf_counter() - t0
    crawl_counts = counts(server)
    rows = {} if budget is None else {"budget_bytes": budget * _square_row_bytes(lake)}
    stats = stats_flow(lake=lake, full=full, progress=False, **rows)
    trees_flow(lake=lake, full=full)
    seconds = time.perf_counter() - t0
    c = counts(server) + crawl_counts
    n = crawl["repos_crawled"] + crawl["repos_skipped"]
    directed, untimed = scores(lake, truth, full)
    weights = max(crawl["weights_bytes"], 1)
    fetched = (crawl["bytes_fetched"] + stats["bytes_fetched"]) / weights
    crawl_row = Row(setting.split(",")[0] + ", crawl alone", n, crawl_counts.api / n, crawl_counts.resolves / n, crawl_counts.cdn / n,
                    crawl["bytes_fetched"] / weights, crawl_seconds / n, None, None, crawl_counts.limited)
    return Row(setting, n, c.api / n, c.resolves / n, c.cdn / n, fetched, seconds / n, directed, untimed, c.limited), crawl_row


def _square_row_bytes(lake: str) -> int:
    """Bytes of one row of every square attention matrix of the lake's first model (a budget of one row each)."""
    first = Lake(lake).query("SELECT min(repo_id) AS r FROM tensors").to_pylist()[0]["r"]
    shapes = {t["name"]: t for t in Lake(lake).query(f"SELECT name, shape, data_end - data_begin AS nbytes FROM tensors WHERE repo_id = '{first}'").to_pylist()}
    square = square_attention_layers({n: t["shape"] for n, t in shapes.items()})
    return sum(shapes[n]["nbytes"] // shapes[n]["shape"][0] for n in square)


def full_read_extrapolated(server, family: BigFamily, lake: str, crawl: Row, models: int = 2) -> Row:
    """Today's path (a request and a whole-tensor read per tensor) timed on ``models`` models x one matrix, scaled to 291 tensors.

    Requests per model: the crawl's (``crawl``, measured), each file's header again (as
    measured here, per file), and one per tensor; seconds scale with the bytes read.
    """
    shards = layout(family.arch)
    tensors = [p for s in shards for p in s.tensors]
    one = "model.layers.0.self_attn.o_proj.weight"
    nbytes = next(p.end - p.begin for p in tensors if p.name == one)
    total = sum(p.end - p.begin for p in tensors)
    crawl_flow(hub=server.url, lake=lake, limit=models, progress=False)
    counts(server)
    t0 = time.perf_counter()
    stats = stats_flow(lake=lake, full=True, layers=rf"^{one}$", progress=False)
    seconds = (time.perf_counter() - t0) / stats["models"]
    c = counts(server)
    header = (c.resolves + c.cdn) / stats["models"] - 1  # the measured requests of one file, less its one tensor
    per_model = crawl.resolves + header * len(shards) + len(tensors)
    return Row(f"7B family, full reads ({models} models x 1 tensor timed)", family.n, crawl.api, per_model, 0.0,
               1.0, seconds * total / nbytes, None, None, None, extrapolated=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="big-family models (0: zoos only)")
    parser.add_argument("--seed", type=int, default=5, help="big-family seed (1-3 were used for tuning)")
    parser.add_argument("--zoo-seeds", type=int, nargs="*", default=[11, 12])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="hubtree-hub-scale-")))
    args = parser.parse_args()
    ensure_ray()
    with prefect_test_harness(server_startup_timeout=180):
        rows, notes = measure(args)
    print(HEADER)
    print("\n".join(r.line() for r in rows))
    print()
    print("\n".join(notes))


def measure(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """Every row of the table; each is also printed as soon as it is measured (a long run shows progress)."""
    rows, notes = _Printed(), []
    if args.n:
        family = BigFamily(args.n, args.seed)
        truth = TrueTree(family.truth(), dict.fromkeys(family.truth(), "family"))
        with running(None, computed=big_family_repos(family)) as server:
            lake = str(args.out / "big-lake")
            row, crawl = pipeline(server, lake, truth, f"7B family s{args.seed}, defaults (sampled)")
            rows += [crawl, row]
            rows.show()
            declared = Lake(lake).query("SELECT count(*) AS n FROM declared_edges").to_pylist()[0]["n"]
            depth = max(m.depth for m in family.models)
            notes.append(f"7B family s{args.seed}: {args.n} repos, {depth} levels deep, {declared} of {args.n - 1} edges declared")
            print(notes[-1], flush=True)
            rows.append(full_read_extrapolated(server, family, str(args.out / "full-lake"), crawl))
            rows.show()
        tight = RateLimits(api=PACED_QUOTA, resolvers=PACED_QUOTA, window_s=PACED_WINDOW_S)
        with running(None, computed=big_family_repos(family), limits=tight) as server:
            rows.append(pipeline(server, str(args.out / "paced-lake"), truth,
                                 f"7B s{args.seed}, {PACED_QUOTA} API + {PACED_QUOTA} resolves per {PACED_WINDOW_S} s")[0])
            rows.show()
    spec = dataclasses.replace(ZooSpec(), adapter_sizes=())
    for seed in args.zoo_seeds:
        zoo = args.out / f"zoo-s{seed}"
        if not (zoo / "truth.json").exists():
            build_zoo(zoo, seed=seed, spec=spec, progress=False)
        zoo_truth = TrueTree.from_zoo(load_truth(zoo / "truth.json"))
        with running(zoo / "hub") as server:
            rows.append(pipeline(server, str(zoo / "lake"), zoo_truth, f"zoo s{seed}, defaults (sampled)")[0])
            rows.append(pipeline(server, str(zoo / "lake-full"), zoo_truth, f"zoo s{seed}, stats and trees --full", full=True)[0])
            rows.append(pipeline(server, str(zoo / "lake-8rows"), zoo_truth, f"zoo s{seed}, 8 rows per tensor", budget=8)[0])
        rows.show()
    return rows, notes


class _Printed(list):
    """Rows, printed (with the header first) as they come."""

    shown = 0

    def show(self) -> None:
        if not self.shown:
            print(HEADER, flush=True)
        for r in self[self.shown :]:
            print(r.line(), flush=True)
        self.shown = len(self)


if __name__ == "__main__":
    main()
