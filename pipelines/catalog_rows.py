"""Turn per-repo catalogs into the lake's rows (one list per table; the lake fills run_id and batch_id)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import datetime, timezone

from hubtree.ops.hub.catalog import CrawlError, RepoCatalog
from hubtree.schemas.tables import arrow_rows


TABLES = ("repos", "declared_edges", "files", "tensors", "adapters", "crawl_errors")


def catalog_rows(catalogs: list[RepoCatalog], hub: str) -> dict[str, list[dict]]:
    """Rows for repos, declared_edges, files, tensors, adapters and crawl_errors.

    Each repo's rows are built as Arrow on their own first (by the lake's own row
    builder), so a value no column can hold (an int past int64, text that is not
    UTF-8) costs that repo only: it is marked failed (``record`` dropped) with one
    error row, and the next crawl tries it again.
    """
    now = datetime.now(timezone.utc)
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    for cat in catalogs:
        try:
            mine = _repo_rows(cat, hub, now)
            for name, table_rows in mine.items():
                arrow_rows(name, table_rows, run_id="check", batch_id="check")
        except Exception as err:  # noqa: BLE001  one repo's data must not cost the batch
            cat.record = None
            cat.errors = [*cat.errors, CrawlError.of(err, cat.ref, "rows", revision_known=False)]
            mine = {"crawl_errors": [asdict(e) for e in cat.errors]}
        for name, table_rows in mine.items():
            rows[name] += table_rows
    return rows


def _repo_rows(cat: RepoCatalog, hub: str, now: datetime) -> dict[str, list[dict]]:
    """One repo's rows per table (only its error rows when it failed as a whole)."""
    rows: dict[str, list[dict]] = {"crawl_errors": [asdict(e) for e in cat.errors]}
    if not cat.ok:
        return rows
    key = {"repo_id": cat.ref.repo_id, "revision": cat.ref.revision}
    rows["repos"] = [_repo_row(cat, key, hub, now)]
    rows["declared_edges"] = [
        {**key, "parent_repo_id": e.parent, "relation": e.relation, "source": e.source} for e in cat.edges
    ]
    rows["files"] = [
        {**key, "path": f.path, "size": f.size, "sha256": f.sha256, "kind": cat.file_kinds[f.path],
         "duplicate_of": cat.duplicates.get(f.path)}
        for f in cat.record.files
    ]
    rows["tensors"] = [
        {**key, "file": t.file, "name": t.name, "dtype": t.dtype, "shape": list(t.shape),
         "numel": t.numel, "data_begin": t.begin, "data_end": t.end}
        for t in cat.tensors
    ]
    if cat.adapter:
        a = cat.adapter
        rows["adapters"] = [
            {**key, "base_model": a.base_model, "peft_type": a.peft_type, "rank": a.rank,
             "lora_alpha": a.lora_alpha, "target_modules": a.target_modules}
        ]
    return rows


def _repo_row(cat: RepoCatalog, key: dict, hub: str, now: datetime) -> dict:
    record, config = cat.record, cat.config or {}
    weights = [f for f in record.files if cat.file_kinds[f.path] in ("weights", "adapter_weights")]
    architectures = config.get("architectures")
    return {
        **key,
        "author": record.author,
        "created_at": record.created_at,
        "last_modified": record.last_modified,
        "tags": record.tags,
        "pipeline_tag": record.pipeline_tag,
        "library_name": record.library_name,
        "gated": record.gated,
        "downloads": record.downloads,
        "likes": record.likes,
        "card_metadata": json.dumps(cat.card, default=str, sort_keys=True) if cat.card else None,
        "model_type": config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        "architectures": [str(a) for a in architectures] if isinstance(architectures, list) else None,
        "config": json.dumps(cat.config, sort_keys=True) if cat.config is not None else None,
        "n_files": len(record.files),
        # A listing gives no sizes: only the files a crawl reads (weights) learn theirs, so a total may be unknown.
        "total_bytes": None if any(f.size is None for f in record.files) else sum(f.size for f in record.files),
        "weights_bytes": sum(f.size or 0 for f in weights),
        "n_tensors": len(cat.tensors),
        "n_params": sum(math.prod(t.shape) for t in cat.tensors),
        "bytes_fetched": cat.bytes_fetched,
        "hub": hub,
        "crawled_at": now,
    }
