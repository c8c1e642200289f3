"""``hubtree lineage``: one model's ancestors and descendants, from the lake's trees."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("repo")
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL) where `hubtree trees` ran.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def lineage(repo: str, lake: str, fmt: str) -> None:
    """REPO's ancestors up to its family's root, and its descendants.

    Each edge says where it comes from (declared on the hub, or recovered from the
    weights), the relation when known, and its confidence; the family's direction
    rule says how recovered edges were oriented.
    """
    import pyarrow as pa

    from hubtree import api
    from hubtree.cli import format_table

    found = api.lineage(lake, repo)
    if fmt == "json":
        click.echo(json.dumps(found.to_dict(), indent=2))
        return
    click.echo(f"{found.repo}: family {found.family_id}, root {found.root}\ndirection rule: {found.direction_rule or 'n/a'}")
    for title, edges in (("ancestors (nearest first)", found.ancestors), ("descendants", found.descendants)):
        click.echo(f"\n{title}:")
        if edges:
            rows = [{"depth": e.depth, "child": e.child, "parent": e.parent, "source": e.source, "relation": e.relation,
                     "confidence": None if e.confidence is None else round(e.confidence, 3)} for e in edges]
            click.echo(format_table(pa.Table.from_pylist(rows), "table"))
        else:
            click.echo("none")
