"""``hubtree snapshots`` and ``hubtree lake ...``: the lake's history and upkeep as commands."""
from __future__ import annotations

import click

from hubtree import prefect_local
from hubtree.cli_options import absolute


def format_table(table, fmt: str) -> str:
    from hubtree.cli import format_table as fmt_table  # at call time: hubtree.cli imports this module

    return fmt_table(table, fmt)


@click.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def snapshots(lake: str, fmt: str) -> None:
    """List the lake's snapshots oldest first: id, time, stage, run id.

    Any of them can be queried with `hubtree sql --lake L --as-of ID "..."`.
    """
    from hubtree.lake import Lake

    click.echo(format_table(Lake(absolute(lake)).snapshots(), fmt))


@click.group()
def lake() -> None:
    """Keep the lake: compact it, export a table, migrate an old lake, attach it elsewhere."""


@lake.command()
@click.option("--lake", "url", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--retention-days", default=7.0, show_default=True, help="Keep snapshots (time travel) this many days back.")
def compact(url: str, retention_days: float) -> None:
    """Merge small files, expire snapshots older than the retention, delete files no snapshot needs."""
    from hubtree.pipelines.compact import compact_flow

    with prefect_local.foreground():
        result = compact_flow(lake=absolute(url), retention_days=retention_days)
    click.echo(f"compact {result['status']}: {result['files_before']} data files -> {result['files_after']}, "
               f"{result['blobs_removed']} unreferenced blob files removed")


@lake.command()
@click.option("--lake", "url", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--table", required=True, help="A view (T) or table (T_all), e.g. tensors.")
@click.option("--out", required=True, help="Folder (or fsspec URL) for OUT/<table>.parquet.")
def export(url: str, table: str, out: str) -> None:
    """Write one table as plain Parquet, for engines that do not speak DuckLake."""
    from hubtree.lake import Lake

    click.echo(Lake(absolute(url)).export(table, absolute(out)))


@lake.command()
@click.option("--from", "old", required=True, help="Root of a lake in the layout before DuckLake (with a lake_commits folder).")
@click.option("--lake", "url", required=True, help="Root of the new lake.")
def migrate(old: str, url: str) -> None:
    """Copy every committed row (and recovered bases, DSiRe models) of an old lake into a DuckLake."""
    from hubtree.lake import Lake
    from hubtree.migrate import migrate as run_migration

    counts = run_migration(absolute(old), Lake(absolute(url)))
    click.echo(format_table(_counts_table(counts), "table"))


@lake.command()
@click.option("--lake", "url", required=True, help="Lake root (folder or fsspec URL).")
def attach(url: str) -> None:
    """Print the statements that open this lake in any DuckDB (the CLI, another program), with no network."""
    from hubtree.lake import Lake

    the_lake = Lake(absolute(url))
    click.echo(";\n".join([*the_lake.load_sql(), the_lake.attach_sql(), "USE lake"]) + ";")


def _counts_table(counts: dict[str, int]):
    import pyarrow as pa

    return pa.Table.from_pylist([{"table": k, "rows": v} for k, v in sorted(counts.items())])
