"""One Arrow schema per lake table: a table's columns change here and nowhere else.

Every row carries ``run_id`` (the flow run that made it) and ``batch_id`` (the lake
commit it belongs to), both filled by the lake writer; repo-keyed tables carry
``repo_id`` and ``revision``. The writer adds ``crawl_date`` (the day of the run).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

_KEY = [pa.field("repo_id", pa.string(), nullable=False), pa.field("revision", pa.string(), nullable=False)]
_BOOKKEEPING = [pa.field("run_id", pa.string(), nullable=False), pa.field("batch_id", pa.string(), nullable=False)]
BOOKKEEPING = ("run_id", "batch_id")  # filled by the lake writer, never by a row


def _table(*fields: pa.Field, keyed: bool = True) -> pa.Schema:
    return pa.schema([*(_KEY if keyed else []), *fields, *_BOOKKEEPING])


REPOS = _table(
    pa.field("author", pa.string()),
    pa.field("created_at", TS),
    pa.field("last_modified", TS),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("pipeline_tag", pa.string()),
    pa.field("library_name", pa.string()),
    pa.field("gated", pa.bool_()),
    pa.field("downloads", pa.int64()),
    pa.field("likes", pa.int64()),
    pa.field("card_metadata", pa.string()),  # the card's YAML front matter as JSON; no card prose
    pa.field("model_type", pa.string()),
    pa.field("architectures", pa.list_(pa.string())),
    pa.field("config", pa.string()),  # config.json keys the Hub API reports (architectures, model_type), JSON
    pa.field("n_files", pa.int32()),
    pa.field("total_bytes", pa.int64()),  # all files of the revision; null when a listing crawl left some sizes unknown
    pa.field("weights_bytes", pa.int64()),  # safetensors files only
    pa.field("n_tensors", pa.int32()),
    pa.field("n_params", pa.int64()),
    pa.field("bytes_fetched", pa.int64()),  # what the crawl read of this repo
    pa.field("hub", pa.string()),
    pa.field("crawled_at", TS),
)

DECLARED_EDGES = _table(
    pa.field("parent_repo_id", pa.string(), nullable=False),
    pa.field("relation", pa.string()),  # finetune | adapter | quantized | merge | null
    pa.field("source", pa.string(), nullable=False),  # card | tag | adapter_config
)

FILES = _table(
    pa.field("path", pa.string(), nullable=False),
    pa.field("size", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("kind", pa.string()),  # weights | adapter_weights | weights_index | pickle | config | adapter_config | card | other
    # "repo_id@revision:path" of the file already in the lake with the same sha256: not read, its tensors copied
    pa.field("duplicate_of", pa.string()),
)

TENSORS = _table(
    pa.field("file", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("dtype", pa.string()),
    pa.field("shape", pa.list_(pa.int64())),
    pa.field("numel", pa.int64()),
    pa.field("data_begin", pa.int64()),  # absolute byte offsets in the file: a range read needs nothing else
    pa.field("data_end", pa.int64()),
)

ADAPTERS = _table(
    pa.field("base_model", pa.string()),
    pa.field("peft_type", pa.string()),
    pa.field("rank", pa.int32()),
    pa.field("lora_alpha", pa.float64()),
    pa.field("target_modules", pa.list_(pa.string())),
)

CRAWL_ERRORS = _table(
    pa.field("path", pa.string()),  # the file, when the error is about one file
    pa.field("stage", pa.string(), nullable=False),  # list | record | card | config | header | ...
    pa.field("error_class", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("at", TS),
    keyed=False,
).insert(0, pa.field("revision", pa.string())).insert(0, pa.field("repo_id", pa.string()))

CRAWL_RUNS = _table(
    pa.field("flow", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # running | completed | failed
    pa.field("hub", pa.string()),
    pa.field("lake", pa.string()),
    pa.field("parameters", pa.string()),  # JSON; never holds a token
    pa.field("started_at", TS),
    pa.field("finished_at", TS),
    pa.field("repos_listed", pa.int64()),
    pa.field("repos_skipped", pa.int64()),
    pa.field("repos_crawled", pa.int64()),
    pa.field("repos_failed", pa.int64()),
    pa.field("requests", pa.int64()),  # all of them: api_calls + resolves + cdn_requests
    pa.field("api_calls", pa.int64()),  # the hub's "api" bucket: listing pages, model infos
    pa.field("resolves", pa.int64()),  # its "resolvers" bucket: every /resolve/ URL
    pa.field("cdn_requests", pa.int64()),  # ranges sent to the signed URLs resolves redirect to (no bucket)
    pa.field("bytes_fetched", pa.int64()),
    pa.field("weights_bytes", pa.int64()),
    pa.field("flow_run_id", pa.string()),  # Prefect's flow run (a stage's own subflow run)
    pa.field("root_flow_run_id", pa.string()),  # the run it belongs to (`hubtree run`'s flow run)
    keyed=False,
)

_TENSOR_KEY = [
    pa.field("tensor", pa.string(), nullable=False),
    pa.field("file", pa.string()),
    pa.field("dtype", pa.string()),
    pa.field("shape", pa.list_(pa.int64())),
    # The rows [row_begin, row_end) of the first axis that were read (ops/weights/row_sample:
    # fixed by seed, name and shape, the same in every model); both null: the whole tensor.
    pa.field("row_begin", pa.int64()),
    pa.field("row_end", pa.int64()),
]

# Per tensor (or its sampled rows): methods.md section 1. Matrix-only columns are null for 1-D tensors.
LAYER_STATS = _table(
    *_TENSOR_KEY,
    pa.field("numel", pa.int64()),  # entries the statistics saw (the sample's, for sampled rows)
    pa.field("mean", pa.float64()),
    pa.field("std", pa.float64()),
    pa.field("skewness", pa.float64()),
    pa.field("kurtosis", pa.float64()),  # excess (Fisher), biased: scipy.stats.kurtosis defaults
    pa.field("min", pa.float64()),
    pa.field("max", pa.float64()),
    pa.field("zeros_fraction", pa.float64()),
    pa.field("absmax_over_std", pa.float64()),
    pa.field("frobenius_norm", pa.float64()),
    pa.field("spectral_norm", pa.float64()),
    pa.field("stable_rank", pa.float64()),
    pa.field("entropy_effective_rank", pa.float64()),
    pa.field("numerical_rank", pa.int64()),
    pa.field("log_norm", pa.float64()),  # WeightWatcher's, on eigenvalues of W^T W
    pa.field("log_spectral_norm", pa.float64()),
    pa.field("alpha", pa.float64()),  # power-law MLE, x_min by Kolmogorov-Smirnov
    pa.field("alpha_weighted", pa.float64()),
    pa.field("xmin", pa.float64()),
    pa.field("ks_distance", pa.float64()),
    pa.field("spectrum", pa.string()),  # "full" or "truncated:k" (randomized SVD)
    pa.field("n_eigs", pa.int64()),
    pa.field("device", pa.string()),
)

# Per 2-D tensor: a seeded JL sketch (methods.md section 2); comparable across crawls with the same seed and width.
LAYER_SKETCHES = _table(
    *_TENSOR_KEY,
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("sketch", pa.list_(pa.float32())),
)

# Per 2-D tensor: responses to a fixed seeded probe bank (methods.md section 7), a fingerprint of fixed length.
PROBE_FEATURES = _table(
    *_TENSOR_KEY,
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("n_probes", pa.int32(), nullable=False),
    pa.field("out_dim", pa.int32(), nullable=False),
    pa.field("features", pa.list_(pa.float32())),
)

# Model trees (methods.md sections 3-4). Each trees run rewrites the whole forest; the views show the latest run.
FAMILIES = _table(
    pa.field("family_id", pa.int64(), nullable=False),  # -1: a declared parent with no weights and no family
    pa.field("assigned_by", pa.string()),  # weights | declared | duplicate
    pa.field("signature", pa.string()),  # the architecture block
    pa.field("direction_rule", pa.string()),  # which witness and sign this family's tree used, from what evidence, conflicts
    pa.field("direction_confidence", pa.float64()),  # [0, 1]: how clearly the evidence chose that rule
)

TREE_EDGES = pa.schema(
    [
        pa.field("child_repo_id", pa.string(), nullable=False),
        pa.field("parent_repo_id", pa.string()),  # null for a root
        pa.field("family_id", pa.int64()),
        pa.field("source", pa.string(), nullable=False),  # declared | recovered | duplicate | root
        pa.field("relation", pa.string()),  # finetune | adapter | quantized | merge | duplicate, when known
        pa.field("confidence", pa.float64()),  # in [0, 1]; 1 for declared edges
        pa.field("distance", pa.float64()),  # for recovered edges: the RMS weight distance MoTHer priced the edge at
        pa.field("kurtosis_parent", pa.float64()),  # the direction evidence
        pa.field("kurtosis_child", pa.float64()),
        *_BOOKKEEPING,
    ]
)

# LoRA attacks (methods.md sections 5-6).
LORA_RECOVERIES = pa.schema(
    [
        pa.field("base_repo", pa.string(), nullable=False),  # the declared (possibly unpublished) base, or family:<id>
        pa.field("layer", pa.string(), nullable=False),
        pa.field("n_sources", pa.int32()),
        pa.field("sources", pa.list_(pa.string())),
        pa.field("rank", pa.int32()),  # estimated from pairwise differences, never asked of the user
        pa.field("iterations", pa.int32()),
        pa.field("final_loss", pa.float64()),
        pa.field("confidence", pa.string()),  # ok | low: and why
        pa.field("w_error", pa.float64()),  # log10 MSE against the true base, where it is on the hub
        pa.field("weights_path", pa.string()),
        *_BOOKKEEPING,
    ]
)

LORA_SPECTRA = _table(
    pa.field("layer", pa.string(), nullable=False),
    pa.field("features", pa.list_(pa.float32())),  # singular values of A, B and BA
)

DATASET_SIZE_ESTIMATES = _table(
    pa.field("estimate", pa.int64()),
    pa.field("vote_share", pa.float64()),
    pa.field("n_layers", pa.int32()),
    pa.field("model_id", pa.string()),  # the fit that made the estimate
)

# Files too big for a row (recovered bases, fitted DSiRe and ProbeX models): the row makes the file part of the lake.
BLOBS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # recovered | dsire | probex
        pa.field("key", pa.string(), nullable=False),  # the repo id or model id the file is for
        pa.field("path", pa.string(), nullable=False),  # URL of the file under LAKE/blobs/
        pa.field("size", pa.int64()),
        *_BOOKKEEPING,
    ]
)

# ProbeX (methods.md section 7): per model of a family with an expert, a score per label of the family.
MODEL_LABELS = _table(
    pa.field("label", pa.string(), nullable=False),
    pa.field("score", pa.float64()),  # in [0, 1]: the expert's sigmoid
    pa.field("family_id", pa.int64()),
    pa.field("expert", pa.string()),  # the probex fit (model id) that scored it
)

# The same experts' representation of each model, in the space they share with text (unit norm).
PROBEX_EMBEDDINGS = _table(
    pa.field("family_id", pa.int64()),
    pa.field("expert", pa.string()),
    pa.field("layer", pa.string()),  # the one layer the expert reads
    pa.field("embedding", pa.list_(pa.float32())),
)

LAKE_COMMITS = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("tables", pa.list_(pa.string())),
        pa.field("rows", pa.int64()),
        pa.field("committed_at", TS),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "repos": REPOS,
    "declared_edges": DECLARED_EDGES,
    "files": FILES,
    "tensors": TENSORS,
    "adapters": ADAPTERS,
    "layer_stats": LAYER_STATS,
    "layer_sketches": LAYER_SKETCHES,
    "probe_features": PROBE_FEATURES,
    "families": FAMILIES,
    "tree_edges": TREE_EDGES,
    "lora_recoveries": LORA_RECOVERIES,
    "lora_spectra": LORA_SPECTRA,
    "dataset_size_estimates": DATASET_SIZE_ESTIMATES,
    "blobs": BLOBS,
    "model_labels": MODEL_LABELS,
    "probex_embeddings": PROBEX_EMBEDDINGS,
    "crawl_errors": CRAWL_ERRORS,
    "crawl_runs": CRAWL_RUNS,
    "lake_commits": LAKE_COMMITS,
}

# Tables a run rewrites whole: their views show the rows of the stage's latest commit run.
LATEST_RUN = {"families": "trees", "tree_edges": "trees", "lora_recoveries": "lora", "dataset_size_estimates": "dsire",
              "model_labels": "probex", "probex_embeddings": "probex"}

# Tables whose rows describe one repo revision; their views keep the latest revision per repo.
REPO_KEYED = ("repos", "declared_edges", "files", "tensors", "adapters", "layer_stats", "layer_sketches", "probe_features")


def arrow_rows(table: str, rows: Sequence[Mapping[str, Any]], run_id: str, batch_id: str) -> pa.Table:
    """Rows of ``table`` as Arrow, built by its schema: the one row builder, used by the lake writer.

    A row is a mapping from the table's column names to values; a nullable column it
    leaves out is null. ``run_id`` and ``batch_id`` come from the commit, so a row
    must not carry them. A column the table does not have, or a required column left
    empty, raises ValueError: a renamed field cannot silently become a null column.
    """
    schema = SCHEMAS[table]
    allowed = set(schema.names) - set(BOOKKEEPING)
    required = [f.name for f in schema if not f.nullable and f.name not in BOOKKEEPING]
    for row in rows:
        unknown = row.keys() - allowed
        if unknown:
            raise ValueError(f"{table} has no column {', '.join(sorted(unknown))}")
        missing = [c for c in required if row.get(c) is None]
        if missing:
            raise ValueError(f"{table} needs a value for {', '.join(missing)}")
    return pa.Table.from_pylist([{**row, "run_id": run_id, "batch_id": batch_id} for row in rows], schema=schema)


# The key of each keyed table: a commit inserts only rows whose key the lake does not hold yet,
# so a rerun or a second writer never doubles a row. Unkeyed tables (runs, whole-run rewrites,
# blobs) append; their views pick what a user means.
_REPO = ("repo_id", "revision")
KEYS: dict[str, tuple[str, ...]] = {
    "repos": _REPO,
    "declared_edges": (*_REPO, "parent_repo_id", "source"),
    "files": (*_REPO, "path"),
    "tensors": (*_REPO, "file", "name"),
    "adapters": _REPO,
    # Sampled rows and the whole tensor are different facts: `stats --full` after a sampled run adds rows.
    "layer_stats": (*_REPO, "tensor", "row_begin", "row_end"),
    "layer_sketches": (*_REPO, "tensor", "row_begin", "row_end"),
    "probe_features": (*_REPO, "tensor", "row_begin", "row_end"),
    "lora_spectra": (*_REPO, "layer"),
    "crawl_errors": (*_REPO, "path", "stage", "error_class", "message"),
}

# Rows that append whatever their key: an error with no revision (a listing that failed) is
# an event of its run, not a fact about a repo revision.
KEY_EXEMPT = {"crawl_errors": "revision IS NULL"}
