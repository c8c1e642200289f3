"""What the server serves: repos of a LocalHub folder and recorded Hub metadata, with the Hub's hashes."""
from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from hubtree.errors import HubtreeError, RepoNotFoundError
from hubtree.ops.hub.declared import parse_card
from hubtree.ops.hub.local import LocalHub
from hubtree.ops.hub.source import RepoFile, RepoRecord, RepoRef, config_summary

GATED_MARKER = ".gated"
# Files the Hub stores with Git LFS: its default .gitattributes patterns, and anything over 10 MiB.
LFS_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack", ".model", ".pkl", ".zip"})
LFS_MIN_SIZE = 10 << 20


# --- what is served ------------------------------------------------------------
@dataclass(frozen=True)
class ServedFile:
    """One file of a served repo: bytes on disk, in memory, computed per range, or (a record's) none at all.

    A computed file (``generate(start, end)`` gives bytes [start, end)) is never hashed: its
    ``sha256`` is given, a content id that changes exactly when what ``generate`` computes does.
    """

    path: str
    size: int | None  # None: a metadata-only record that does not say
    local: Path | None = None  # the real path, checked to be the hub's own regular file
    content: bytes | None = None
    generate: Callable[[int, int], bytes] | None = field(default=None, compare=False)
    sha256: str | None = None
    sha256_of: Callable[[Path], str] | None = None  # the hub's cached file hash

    def hashes(self) -> tuple[str | None, str | None]:
        """(git oid, LFS sha256): the Hub's ``oid``/``blobId`` and ``lfs.sha256``. None where there are no bytes."""
        if self.content is not None:
            return git_oid(self.content), None
        if self.generate is not None and self.sha256 is not None and self.size is not None:
            return git_oid(lfs_pointer(self.sha256, self.size)), self.sha256
        if self.local is None or self.size is None:
            return None, None
        stat = self.local.stat()
        if Path(self.path).suffix in LFS_SUFFIXES or self.size >= LFS_MIN_SIZE:
            sha256 = self.sha256_of(self.local)
            return git_oid(lfs_pointer(sha256, self.size)), sha256
        return _file_oid(self.local, stat.st_size, stat.st_mtime_ns), None


@dataclass
class ServedRepo:
    """A repo as the server describes it: the record it lists, its card and config, its files."""

    record: RepoRecord
    gated: str | None  # "auto" | "manual" | None (open)
    card: dict
    config: dict | None
    files: dict[str, ServedFile]


class ServedHub:
    """The served repos: folders of a LocalHub and loaded records.

    A folder is described again whenever its revision (a content hash, cheap once its
    files are hashed) or its gating changes, so edits to the folder show at once; the
    description itself (card YAML parsed, files listed) is cached per revision, as
    parsing cards on every listing page would make listings slow.
    """

    def __init__(self, root: Path | None, records: Sequence[Path] = (), computed: Mapping[str, ServedRepo] | None = None):
        self.hub = LocalHub(root) if root is not None else None
        self.records = load_records(records) | dict(computed or {})
        self._folders: dict[tuple[str, str, str | None], ServedRepo] = {}

    def ids(self) -> list[str]:
        return sorted(set(self.hub.repo_ids() if self.hub else []) | set(self.records))

    def get(self, repo_id: str) -> ServedRepo:
        if self.hub is not None and self.hub.local_path(repo_id, "").is_dir():
            return self._folder(repo_id)
        if repo_id in self.records:
            return self.records[repo_id]
        raise RepoNotFoundError(f"repo {repo_id} not found")

    def _folder(self, repo_id: str) -> ServedRepo:
        hub = self.hub
        ref = RepoRef(repo_id, hub.revision(repo_id))
        marker = hub.local_path(repo_id, GATED_MARKER)
        gated = (marker.read_text().strip() or "manual") if marker.is_file() else None
        key = (repo_id, ref.revision, gated)
        if key not in self._folders:
            record = hub.repo_record(ref)
            files = {f.path: ServedFile(f.path, f.size, local=_own(hub, repo_id, f.path), sha256_of=hub.file_sha256) for f in record.files}
            self._folders[key] = ServedRepo(
                replace(record, gated=gated is not None), gated, _json_or_empty(hub, ref, "README.md", parse_card),
                config_summary(_json_or_empty(hub, ref, "config.json", json.loads)), files,
            )
        return self._folders[key]


def _own(hub: LocalHub, repo_id: str, path: str) -> Path | None:
    """The file's real path if the hub may serve it; None (answered 404) for a link out of the root or a non-regular file."""
    try:
        return hub.own_path(repo_id, path)
    except HubtreeError:
        return None


def _json_or_empty(hub: LocalHub, ref: RepoRef, path: str, parse: Callable[[str], Any]) -> dict:
    """A parsed card or config, {} where the file is missing or broken (the Hub serves the repo anyway)."""
    try:
        data = parse(hub.read_text(ref, path))
    except (HubtreeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- recorded Hub metadata -----------------------------------------------------------
_REPR_RFILENAME = re.compile(r"""rfilename=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def load_records(paths: Sequence[Path]) -> dict[str, ServedRepo]:
    """Recorded ``model_info`` lines as metadata-only repos, by id (a later line wins)."""
    repos: dict[str, ServedRepo] = {}
    for path in paths:
        for text in Path(path).read_text(encoding="utf-8").splitlines():
            if text.strip():
                repo = _record_repo(json.loads(text)["model_info"])
                repos[repo.record.repo_id] = repo
    return repos


def sibling_name(sibling: dict | str) -> str:
    """A sibling's file name, from the Hub's JSON ``{"rfilename": ...}`` or a ``RepoSibling(...)`` repr string."""
    if isinstance(sibling, dict):
        return sibling["rfilename"]
    match = _REPR_RFILENAME.search(sibling)
    if match is None:
        raise ValueError(f"not a sibling: {sibling[:80]!r}")
    return ast.literal_eval(match.group(1))


def _record_repo(info: dict) -> ServedRepo:
    card_text = info.get("card_data") or info.get("cardData") or ""
    if isinstance(card_text, dict):
        card_text = yaml.safe_dump(card_text, sort_keys=False)
    try:
        card = yaml.safe_load(card_text) or {}
    except yaml.YAMLError:
        card = {}
    readme = f"---\n{card_text.strip()}\n---\n".encode() if card_text.strip() else b""
    files = {}
    for name in map(sibling_name, info.get("siblings") or []):
        synthesized = name == "README.md"
        files[name] = ServedFile(name, len(readme) if synthesized else None, content=readme if synthesized else None)
    record = RepoRecord(
        repo_id=info["id"],
        revision=info["sha"],
        author=info.get("author"),
        created_at=_parse_date(info.get("created_at") or info.get("createdAt")),
        last_modified=_parse_date(info.get("last_modified") or info.get("lastModified")),
        tags=list(info.get("tags") or []),
        pipeline_tag=info.get("pipeline_tag"),
        library_name=info.get("library_name"),
        gated=bool(info.get("gated")),
        downloads=info.get("downloads"),
        likes=info.get("likes"),
        files=[RepoFile(f.path, f.size or 0) for f in files.values()],
    )
    return ServedRepo(record, info.get("gated") or None, card if isinstance(card, dict) else {}, info.get("config"), files)


def _parse_date(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# --- the Hub's hashes -----------------------------------------------------------------
def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@lru_cache(maxsize=65536)
def _file_oid(path: Path, size: int, mtime_ns: int) -> str:
    """Git blob id of a small (non-LFS) file, cached on (path, size, mtime)."""
    return git_oid(path.read_bytes())
