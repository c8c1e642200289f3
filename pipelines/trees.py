"""The trees flow: lake (sketches, kurtosis, declared edges, upload times) -> families, tree_edges.

It reads only the lake: the sketches of each model's layers (``layer_sketches``) and their
kurtosis and norms (``layer_stats``), from which ``ops.trees.inputs`` builds each model's
point and direction witnesses, and the declared graph (``declared_edges``). Sketches and
statistics are those of the sampled rows (``hubtree stats``' default) or, with ``full``, of
whole tensors. The forest is recomputed whole on every run and committed as one batch; the
views show the latest run.
"""
from __future__ import annotations

import logging

import numpy as np
from prefect import flow, get_run_logger

from hubtree.lake import Lake
from hubtree.ops.trees.inputs import models_from_layers
from hubtree.ops.trees.mother import FamilyReport, Models, TreeEdge, Trees, recover_trees
from hubtree.ops.trees.priors import DeclaredGraph, DeclaredRow
from hubtree.pipelines.run_log import FAILURE_HOOKS, begin_run, record_run

SOURCE_NAMES = {"weights": "recovered"}  # the lake says where an edge came from in users' words


def load_models(lake: Lake, full: bool = False) -> tuple[Models, dict[str, str], dict[str, str]]:
    """The tree stage's input from the lake; also each model's revision and declared relation.

    Per tensor the sampled rows' sketch and statistics (the latest run's, if it was sampled
    more than once), or with ``full`` those of the whole tensor.
    """
    rows = lake.query(
        f"""
        SELECT r.repo_id, r.revision, s.tensor, s.shape, s.sketch, st.kurtosis, st.frobenius_norm, st.entropy_effective_rank,
               st.numel, s.row_begin, s.row_end,
               -- Upload times only where a hub records uploads: a local folder's file times
               -- are copy times (cp, git clone) and would mislead the parent-is-older prior.
               CASE WHEN r.hub LIKE 'http%' THEN epoch(r.created_at) END AS created_at
        FROM repos r
        JOIN layer_sketches s ON s.repo_id = r.repo_id AND s.revision = r.revision
        JOIN layer_stats st ON st.repo_id = s.repo_id AND st.revision = s.revision AND st.tensor = s.tensor
             AND st.row_begin IS NOT DISTINCT FROM s.row_begin AND st.row_end IS NOT DISTINCT FROM s.row_end
        JOIN lake_commits_all c ON c.batch_id = s.batch_id
        WHERE s.row_begin IS {"" if full else "NOT "}NULL
        QUALIFY row_number() OVER (PARTITION BY r.repo_id, s.tensor ORDER BY c.committed_at DESC) = 1
        ORDER BY r.repo_id, s.tensor
        """
    ).to_pylist()
    relation = {
        r["repo_id"]: r["relation"]
        for r in lake.query("SELECT repo_id, relation FROM declared_edges WHERE relation IS NOT NULL").to_pylist()
    }
    models, revisions = models_from_layers(rows, relation)
    return models, revisions, relation


def declared_rows(lake: Lake) -> list[DeclaredRow]:
    return [
        DeclaredRow(r["repo_id"], r["parent_repo_id"], r["relation"], r["source"])
        for r in lake.query("SELECT repo_id, parent_repo_id, relation, source FROM declared_edges").to_pylist()
    ]


def tree_rows(trees: Trees, revisions: dict[str, str], relation: dict[str, str]) -> dict[str, list[dict]]:
    """Rows for tree_edges and families (one family row per model, from its first edge)."""
    rules = {f.family: f for f in trees.families}
    signature_of = {f.family: f.signature for f in trees.families}
    edges, families = [], {}
    for e in trees.edges:
        source = SOURCE_NAMES.get(e.source, e.source)
        edges.append({
            "child_repo_id": e.child, "parent_repo_id": e.parent, "family_id": e.family, "source": source,
            "relation": "duplicate" if e.source == "duplicate" else relation.get(e.child) if e.source == "declared" else None,
            "confidence": None if np.isnan(e.confidence) else e.confidence, "distance": _num(e.distance),
            "kurtosis_parent": _num(e.kurtosis_parent), "kurtosis_child": _num(e.kurtosis_child),
        })
        families.setdefault(e.child, {
            "repo_id": e.child, "revision": revisions.get(e.child, ""), "family_id": e.family,
            "assigned_by": {"weights": "weights", "root": "weights"}.get(e.source, e.source),
            "signature": signature_of.get(e.family), "direction_rule": _rule(rules.get(e.family)),
            "direction_confidence": _num(rules[e.family].confidence) if e.family in rules else None,
        })
    return {"tree_edges": edges, "families": list(families.values())}


def lake_edges(lake: Lake) -> list[TreeEdge]:
    """The latest forest in the lake, back as the ops' edges (for evaluation)."""
    names = {v: k for k, v in SOURCE_NAMES.items()}
    return [
        TreeEdge(r["child_repo_id"], r["parent_repo_id"], r["family_id"], names.get(r["source"], r["source"]),
                 np.nan if r["confidence"] is None else r["confidence"])
        for r in lake.query("SELECT * FROM tree_edges").to_pylist()
    ]


def _num(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _rule(report: FamilyReport | None) -> str | None:
    """The family's rule in words, and the evidence that chose it (``direction.family_direction``)."""
    if report is None:
        return None
    rule = report.rule
    side = "parent has the larger" if rule.sign > 0 else "child has the larger"
    return f"{side} {rule.witness} ({report.why or 'from ' + rule.source})"


@flow(name="hubtree-trees", log_prints=True, on_failure=FAILURE_HOOKS)
def trees_flow(lake: str, use_declared: bool = True, k: int = 10, full: bool = False) -> dict:
    """Recover every family's tree from the lake; ``use_declared=False`` ignores declared edges (for evaluation).

    ``full`` builds the trees from whole-tensor statistics (``hubtree stats --full``) rather than sampled rows.
    """
    logger = get_run_logger()
    params = {"lake": lake, "use_declared": use_declared, "k": k, "full": full}
    the_lake, run_id, started = begin_run(lake, "trees", params)
    models, revisions, relation = load_models(the_lake, full)
    if not models.ids:
        record_run(the_lake, "trees", run_id, params, started, "completed")
        logger.warning("no models with sketched attention layers%s: run `hubtree stats --lake %s%s` first",
                       " (whole tensors)" if full else "", lake, " --full" if full else "")
        return {"run_id": run_id, "status": "completed", "models": 0, "families": 0, "edges": 0}
    trees = recover_trees(models, declared_rows(the_lake) if use_declared else (), k=k)
    the_lake.commit("trees", run_id, tree_rows(trees, revisions, relation), day=started.date())
    summary = {"run_id": run_id, "status": "completed", "models": len(models.ids), "families": len(trees.families), "edges": len(trees.edges)}
    record_run(the_lake, "trees", run_id, params, started, "completed", {"repos_crawled": len(models.ids)})
    logger.info("trees %s: %d models in %d families", run_id, summary["models"], summary["families"])
    _log_declared(logger, trees.declared)
    return summary


def _log_declared(logger: logging.Logger | logging.LoggerAdapter, graph: DeclaredGraph) -> None:
    """Say what cleaning the declared graph left out, and which children declare several parents."""
    dropped = {reason: n for reason, n in graph.drop_counts().items() if n}
    if dropped:
        logger.info("declared edges left out: %s", ", ".join(f"{n} {reason}" for reason, n in dropped.items()))
    several = graph.multi_parent()
    if several:
        logger.info("%d models declare several parents (merges), e.g. %s", len(several), next(iter(several)))
