"""``hubtree report``: one self-contained HTML page about a lake, for people.

Crawl health first (what was crawled, what failed and why, bytes read against bytes
of weights), then each family's tree, the layer-statistics distributions, and the
LoRA attacks. A section whose stage has not run says which verb fills it.
"""
from __future__ import annotations

import html
from pathlib import Path

from hubtree.lake import Lake
from hubtree.render import LEGEND, TREE_CSS, DrawnEdge, alpha_by_layer_svg, histogram_svg, tree_html

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { color: #1f4e79; } h2 { border-bottom: 2px solid #1f4e79; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #bbb; padding: 4px 10px; }
th { background: #dde6f0; text-align: left; } .missing { color: #a33; }
.figs { display: flex; flex-wrap: wrap; gap: 2em; } .tree { border: 1px solid #ddd; margin: 1em 0; padding: 6px; }
.legend { position: sticky; top: 0; z-index: 1; }
""" + TREE_CSS


def write_report(lake: Lake, out: Path) -> Path:
    """Write ``out/index.html`` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    sections = [_health(lake), _trees(lake), _stats(lake), _lora(lake)]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>hubtree report</title><style>{STYLE}</style></head>"
        f"<body><h1>hubtree report</h1><p>Lake: <code>{html.escape(lake.url)}</code></p>{LEGEND}{''.join(sections)}</body></html>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path


def family_edges(lake: Lake, family_id: int) -> list[DrawnEdge]:
    rows = lake.query(
        "SELECT parent_repo_id, child_repo_id, source, confidence FROM tree_edges WHERE family_id = ? ORDER BY child_repo_id",
        [family_id],
    ).to_pylist()
    return [DrawnEdge(r["parent_repo_id"], r["child_repo_id"], r["source"], r["confidence"]) for r in rows]


def without_weights(lake: Lake) -> frozenset[str]:
    """Tree nodes the lake has no weights for (declared parents missing from the hub): drawn apart."""
    rows = lake.query(
        "SELECT DISTINCT node FROM (SELECT child_repo_id AS node FROM tree_edges UNION SELECT parent_repo_id FROM tree_edges) "
        "WHERE node IS NOT NULL AND node NOT IN (SELECT repo_id FROM repos WHERE n_tensors > 0)"
    )
    return frozenset(rows.column(0).to_pylist())


def _table(lake: Lake, sql: str) -> str:
    result = lake.query(sql)
    if result.num_rows == 0:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in result.column_names)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>" for row in result.to_pylist()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _missing(what: str, verb: str) -> str:
    return f"<p class='missing'>No {what} in this lake yet: run <code>{verb}</code>.</p>"


def _count(lake: Lake, table: str) -> int:
    return lake.query(f"SELECT count(*) AS n FROM {table}").column(0)[0].as_py()


def _health(lake: Lake) -> str:
    return (
        "<h2>Crawl health</h2>"
        + _table(lake, "SELECT count(*) AS repos, count(DISTINCT author) AS authors, sum(n_tensors) AS tensors, "
                       "round(sum(weights_bytes) / 1e6, 2) AS weights_mb, round(sum(bytes_fetched) / 1e6, 3) AS fetched_mb FROM repos")
        + "<h3>Errors by class</h3>"
        + _table(lake, "SELECT stage, error_class, count(*) AS errors, any_value(message) AS example FROM crawl_errors GROUP BY ALL ORDER BY errors DESC")
        + "<h3>Runs</h3>"
        + _table(lake, "SELECT flow, status, started_at, finished_at, repos_crawled, repos_skipped, repos_failed, requests, "
                       "bytes_fetched, weights_bytes FROM crawl_runs ORDER BY started_at DESC LIMIT 20")
    )


def _trees(lake: Lake) -> str:
    if not _count(lake, "tree_edges"):
        return "<h2>Model trees</h2>" + _missing("model trees", "hubtree trees --lake LAKE")
    families = lake.query(
        "SELECT family_id, count(*) AS models, any_value(direction_rule) AS rule FROM families "
        "WHERE family_id >= 0 GROUP BY family_id ORDER BY family_id"
    ).to_pylist()
    parts = ["<h2>Model trees</h2><p>Declared edges solid blue, recovered edges dashed red; line width is confidence. "
             "Small families are drawn; every family has a collapsible outline (click a model to fold it).</p>"]
    no_weights = without_weights(lake)
    for family in families:
        title = f"family {family['family_id']}: {family['models']} models; direction rule: {family['rule']}"
        parts.append(tree_html(family_edges(lake, family["family_id"]), title, no_weights))
    return "".join(parts)


def _stats(lake: Lake) -> str:
    if not _count(lake, "layer_stats"):
        return "<h2>Layer statistics</h2>" + _missing("layer statistics", "hubtree stats --lake LAKE")
    columns = lake.query("SELECT kurtosis, alpha, stable_rank FROM layer_stats WHERE shape[2] IS NOT NULL")
    figures = [histogram_svg(columns.column(name).to_pylist(), title) for name, title in
               (("kurtosis", "excess kurtosis"), ("alpha", "power-law alpha"), ("stable_rank", "stable rank"))]
    layers = lake.query(
        "SELECT tensor, median(alpha) AS mid, quantile_cont(alpha, 0.25) AS lo, quantile_cont(alpha, 0.75) AS hi FROM layer_stats "
        "WHERE alpha IS NOT NULL AND isfinite(alpha) GROUP BY tensor ORDER BY tensor"
    ).to_pylist()
    per_layer = alpha_by_layer_svg([(r["tensor"], r["mid"], r["lo"], r["hi"]) for r in layers])
    return "<h2>Layer statistics</h2><div class='figs'>" + "".join(figures) + f"</div>{per_layer}"


def _lora(lake: Lake) -> str:
    parts = ["<h2>LoRA attacks</h2><h3>Recovered base weights (Spectral DeTuning)</h3>"]
    if _count(lake, "lora_recoveries"):
        parts.append(_table(lake, "SELECT base_repo, count(*) AS layers, any_value(n_sources) AS merges, max(rank) AS rank, "
                                  "avg(w_error) AS mean_w_error, any_value(confidence) AS confidence, any_value(weights_path) AS weights "
                                  "FROM lora_recoveries GROUP BY base_repo"))
    else:
        parts.append(_missing("recovered bases", "hubtree lora --lake LAKE"))
    parts.append("<h3>Dataset sizes (DSiRe)</h3>")
    if _count(lake, "dataset_size_estimates"):
        parts.append(_table(lake, "SELECT repo_id, estimate, vote_share FROM dataset_size_estimates ORDER BY repo_id"))
    else:
        parts.append(_missing("dataset size estimates", "hubtree dsire predict --lake LAKE"))
    return "".join(parts)
