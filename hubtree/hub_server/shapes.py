"""The Hub's JSON shapes: model info, listing entries, tree entries, and the listing sort."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from hubtree.errors import EntryNotFoundError
from hubtree.hub_server.served import ServedFile, ServedRepo, git_oid, lfs_pointer

_LISTING_DEFAULT = {"_id", "id", "modelId", "likes", "downloads", "private", "tags", "pipeline_tag", "library_name", "createdAt"}
_LISTING_FULL = _LISTING_DEFAULT | {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
_SORT_FIELDS = {"createdAt": "created_at", "lastModified": "last_modified", "downloads": "downloads", "likes": "likes"}


def model_json(repo: ServedRepo, blobs: bool) -> dict:
    """``/api/models/{repo_id}``: what ``huggingface_hub.ModelInfo`` reads."""
    r = repo.record
    return {
        "_id": hashlib.sha1(r.repo_id.encode()).hexdigest()[:24],
        "id": r.repo_id,
        "modelId": r.repo_id,
        "author": r.author,
        "sha": r.revision,
        "lastModified": _iso(r.last_modified),
        "createdAt": _iso(r.created_at),
        "private": False,
        "gated": repo.gated or False,
        "disabled": False,
        "downloads": r.downloads or 0,
        "likes": r.likes or 0,
        "tags": r.tags,
        "pipeline_tag": r.pipeline_tag,
        "library_name": r.library_name,
        "cardData": repo.card,
        "config": repo.config,
        "siblings": [_sibling(f, blobs) for f in repo.files.values()],
    }


def listing_json(repo: ServedRepo, params: Any) -> dict:
    """A listing entry with the fields the query asked for, as the Hub selects them."""
    expand = params.getlist("expand")
    if expand:
        keys = {"_id", "id"} | set(expand)
    else:
        keys = set(_LISTING_FULL if flag(params, "full") else _LISTING_DEFAULT)
        keys |= {k for k in ("cardData", "config") if flag(params, k)}
    return {k: v for k, v in model_json(repo, blobs=False).items() if k in keys}


def tree_json(repo: ServedRepo, path: str, recursive: bool) -> list[dict]:
    """``/tree``: the files and folders under ``path`` (all of them with ``recursive``), folders first."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    folders: dict[str, dict] = {}
    files: list[dict] = []
    for f in repo.files.values():
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix):].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folder = prefix + "/".join(parts[:depth])
            folders.setdefault(folder, {"type": "directory", "oid": git_oid(folder.encode()), "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            files.append(_tree_file(f))
    if prefix and not folders and not files:
        raise EntryNotFoundError(f"{repo.record.repo_id} has no folder {path}")
    return list(folders.values()) + files


def _sibling(f: ServedFile, blobs: bool) -> dict:
    entry: dict[str, Any] = {"rfilename": f.path}
    if blobs and f.size is not None:
        oid, sha256 = f.hashes()
        entry.update(size=f.size, blobId=oid)
        if sha256:
            entry["lfs"] = {"size": f.size, "sha256": sha256, "pointerSize": len(lfs_pointer(sha256, f.size))}
    return entry


def _tree_file(f: ServedFile) -> dict:
    oid, sha256 = f.hashes()
    entry: dict[str, Any] = {"type": "file", "oid": oid, "size": f.size or 0, "path": f.path}
    if sha256:
        entry["lfs"] = {"oid": sha256, "size": f.size, "pointerSize": len(lfs_pointer(sha256, f.size))}
    return entry


def sort_repos(repos: list[ServedRepo], sort: str | None, direction: str | None) -> list[ServedRepo]:
    """Hub sorts (descending unless ``direction=1``), repos lacking the field last; unknown sorts keep id order."""
    attr = _SORT_FIELDS.get(sort or "")
    if attr is None:
        return repos
    present = [r for r in repos if getattr(r.record, attr) is not None]
    present.sort(key=lambda r: getattr(r.record, attr), reverse=direction != "1")
    return present + [r for r in repos if getattr(r.record, attr) is None]


def flag(params: Any, name: str) -> bool:
    return params.get(name, "").lower() in ("1", "true")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None
