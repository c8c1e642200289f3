"""hubtree from Python (a notebook): the lake as DuckDB, Arrow or pandas, and one model's lineage.

    import hubtree
    con = hubtree.open_lake("hubtree-demo/lake")          # DuckDB, with every view
    con.execute("select author, count(*) from repos group by 1").fetchall()
    hubtree.query("hubtree-demo/lake", "select * from tree_edges")          # pyarrow.Table
    hubtree.query_pandas("hubtree-demo/lake", "select * from layer_stats")  # pandas.DataFrame
    hubtree.lineage("hubtree-demo/lake", "org/model").ancestors

The CLI's ``sql``, ``lineage`` and ``tree`` verbs are these functions plus printing.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from hubtree.errors import HubtreeError
from hubtree.lake import Lake
from hubtree.ops.trees.lineage import Lineage
from hubtree.ops.trees.lineage import lineage as _lineage


def _lake(lake: str | Lake) -> Lake:
    the_lake = lake if isinstance(lake, Lake) else Lake(str(lake))
    the_lake.require()
    return the_lake


def open_lake(url: str | Lake) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached and in use (views T: latest per repo, T_all: every committed row)."""
    return _lake(url).cursor()


def query(lake: str | Lake, sql: str, params: list | None = None) -> pa.Table:
    """One SQL statement over the lake's views, as an Arrow table."""
    return _lake(lake).query(sql, params)


def query_pandas(lake: str | Lake, sql: str, params: list | None = None):
    """One SQL statement over the lake's views, as a pandas DataFrame (needs pandas installed)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise HubtreeError("query_pandas needs pandas: pip install pandas (or use hubtree.query for Arrow)") from None
    return query(lake, sql, params).to_pandas()


def lineage(lake: str | Lake, repo: str) -> Lineage:
    """``repo``'s ancestors up to its family's root and all its descendants, from the latest ``hubtree trees``."""
    the_lake = _lake(lake)
    if not the_lake.query("SELECT count(*) AS n FROM tree_edges_all").column(0)[0].as_py():
        raise HubtreeError(f"no trees in {the_lake.url} yet: run `hubtree trees --lake {the_lake.url}`")
    found = the_lake.query(
        "SELECT e.family_id, f.direction_rule FROM tree_edges e LEFT JOIN families f ON f.repo_id = e.child_repo_id "
        "WHERE e.child_repo_id = ? OR e.parent_repo_id = ? LIMIT 1", [repo, repo],
    ).to_pylist()
    if not found:
        raise HubtreeError(f"no repo {repo!r} in the trees of {the_lake.url}: check the id (`hubtree sql --lake {the_lake.url} \"select repo_id from repos\"`)")
    family_id, rule = found[0]["family_id"], found[0]["direction_rule"]
    edges = the_lake.query(
        "SELECT child_repo_id, parent_repo_id, source, relation, confidence FROM tree_edges WHERE family_id IS NOT DISTINCT FROM ?",
        [family_id],
    ).to_pylist()
    return _lineage(edges, repo, family_id, rule)


def family_graph(lake: str | Lake, family_id: int):
    """One family's tree as a networkx DiGraph (parent -> child; edge attributes source, relation, confidence)."""
    import networkx as nx

    rows = _lake(lake).query(
        "SELECT child_repo_id, parent_repo_id, source, relation, confidence FROM tree_edges WHERE family_id = ?", [family_id]
    ).to_pylist()
    graph = nx.DiGraph(family_id=family_id)
    for row in rows:
        graph.add_node(row["child_repo_id"])
        if row["parent_repo_id"]:
            attributes = {k: row[k] for k in ("source", "relation", "confidence") if row[k] is not None}
            graph.add_edge(row["parent_repo_id"], row["child_repo_id"], **attributes)
    return graph


def write_family_graph(lake: str | Lake, family_id: int, out) -> None:
    """Export a family's tree: ``.json`` as node-link JSON (networkx's format), ``.graphml`` as GraphML."""
    import json
    from pathlib import Path

    import networkx as nx

    graph, out = family_graph(lake, family_id), Path(out)
    if out.suffix == ".graphml":
        nx.write_graphml(graph, out)
    else:
        out.write_text(json.dumps(nx.node_link_data(graph, edges="edges"), indent=1))
