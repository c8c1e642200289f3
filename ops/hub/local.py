"""A hub that is a local folder in Hub layout: ``ROOT/<org>/<name>/<files>``.

The revision of a repo is a content hash of its files (paths, sizes and bytes), so
it changes exactly when the repo does, like a commit sha on the Hub. Files are
read with ``os.pread``: a crawl touches the header of each weights file, not its data.
"""
from __future__ import annotations

import hashlib
from collections import deque
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from hubtree.errors import EntryNotFoundError, FileUnreadableError, HubtreeError, RepoNotFoundError
from hubtree.ops.hub.declared import edges_from_tags, hub_tags, parse_card
from hubtree.ops.hub.source import RepoFile, RepoQuery, RepoRecord, RepoRef
from hubtree.ops.weights.safetensors_reader import LocalFile

_HASH_CHUNK = 1 << 20


class LocalHub:
    """``HubSource`` over a folder; also what ``hubtree hub serve`` publishes over HTTP."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise RepoNotFoundError(f"hub folder {self.root} does not exist; make one with `hubtree zoo OUT`")
        self.url = str(self.root)

    # -- listing ---------------------------------------------------------------
    def repo_ids(self) -> list[str]:
        """Every ``org/name`` folder under the root, sorted."""
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir()
            if org.is_dir() and not org.name.startswith(".")
            for repo in org.iterdir()
            if repo.is_dir() and not repo.name.startswith(".")
        )

    def list_repos(self, query: RepoQuery = RepoQuery()) -> Iterator[RepoRef]:
        ids = self._family(query.family) if query.family else self.repo_ids()
        records = [self.repo_record(RepoRef(i, self.revision(i))) for i in ids]
        records = [r for r in records if query.matches(r.repo_id, r.author, r.tags)]
        if query.sort in ("created_at", "createdAt", "last_modified", "lastModified"):
            key = "created_at" if query.sort.startswith("created") else "last_modified"
            records.sort(key=lambda r: getattr(r, key) or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
        for record in records[: query.limit]:
            yield RepoRef(record.repo_id, record.revision)

    def _family(self, base: str) -> list[str]:
        """``base`` and every repo whose tags declare a parent in the family, level by level."""
        children: dict[str, list[str]] = {}
        for repo_id in self.repo_ids():
            for edge in edges_from_tags(self.tags(repo_id), repo_id):
                children.setdefault(edge.parent, []).append(repo_id)
        seen, queue = [base] if self._dir(base).is_dir() else [], deque([base])
        while queue:
            for child in children.get(queue.popleft(), []):
                if child not in seen:
                    seen.append(child)
                    queue.append(child)
        return seen

    # -- one repo --------------------------------------------------------------
    def revision(self, repo_id: str) -> str:
        """A 40-hex content hash of the repo's files, stable across machines and copies."""
        digest = hashlib.sha1()
        for path in self._files(repo_id):
            size = _size(path)
            digest.update(f"{path.relative_to(self._dir(repo_id)).as_posix()}\0{size}\0".encode())
            digest.update(_sha256(path, size, path.lstat().st_mtime_ns).encode())
        return digest.hexdigest()

    def tags(self, repo_id: str) -> list[str]:
        """Card tags plus the ``base_model:`` tags the Hub would derive; [] for a broken card."""
        try:
            card = parse_card(self._read(repo_id, "README.md"))
        except (EntryNotFoundError, HubtreeError):
            card = {}
        return hub_tags(card, has_adapter=(self._dir(repo_id) / "adapter_config.json").is_file())

    def repo_record(self, ref: RepoRef) -> RepoRecord:
        files = self._files(ref.repo_id)
        mtimes = [p.lstat().st_mtime for p in files] or [0.0]
        card = self._card_fields(ref.repo_id)
        return RepoRecord(
            repo_id=ref.repo_id,
            revision=ref.revision,
            author=ref.repo_id.split("/")[0] if "/" in ref.repo_id else None,
            created_at=datetime.fromtimestamp(min(mtimes), timezone.utc),
            last_modified=datetime.fromtimestamp(max(mtimes), timezone.utc),
            tags=self.tags(ref.repo_id),
            pipeline_tag=card.get("pipeline_tag") if isinstance(card.get("pipeline_tag"), str) else None,
            library_name=card.get("library_name") if isinstance(card.get("library_name"), str) else None,
            files=[
                RepoFile(p.relative_to(self._dir(ref.repo_id)).as_posix(), _size(p))
                for p in files
            ],
        )

    def read_text(self, ref: RepoRef, path: str, max_bytes: int = 1 << 20) -> str:
        return self._read(ref.repo_id, path, max_bytes)

    def open_file(self, ref: RepoRef, path: str, size: int | None = None) -> LocalFile:
        target = self._dir(ref.repo_id) / path
        if not (target.is_file() or target.is_symlink()):
            raise EntryNotFoundError(f"{ref.repo_id} has no file {path}")
        return LocalFile(target)

    def local_path(self, repo_id: str, path: str) -> Path:
        """Where a file lives on disk: the HTTP server streams it from here."""
        return self._dir(repo_id) / path

    # -- helpers ---------------------------------------------------------------
    def _dir(self, repo_id: str) -> Path:
        target = (self.root / repo_id).resolve()
        if self.root not in target.parents:
            raise RepoNotFoundError(f"{repo_id!r} is not a repo id")
        return target

    def _files(self, repo_id: str) -> list[Path]:
        repo = self._dir(repo_id)
        if not repo.is_dir():
            raise RepoNotFoundError(f"repo {repo_id} not found under {self.root}")
        # Symlinks count even when dangling: a file the hub lists but nobody can read
        # must surface as an error row, not vanish from the catalog.
        return sorted(
            p for p in repo.rglob("*")
            if (p.is_file() or p.is_symlink()) and not any(part.startswith(".") for part in p.relative_to(repo).parts)
        )

    def _read(self, repo_id: str, path: str, max_bytes: int = 1 << 20) -> str:
        target = self._dir(repo_id) / path
        if not target.is_file():
            raise EntryNotFoundError(f"{repo_id} has no file {path}")
        try:
            with target.open("rb") as handle:
                return handle.read(max_bytes).decode("utf-8", errors="replace")
        except OSError as err:
            raise FileUnreadableError(f"{repo_id}/{path}: {err.strerror}") from err

    def _card_fields(self, repo_id: str) -> dict:
        try:
            return parse_card(self._read(repo_id, "README.md"))
        except HubtreeError:
            return {}


def _size(path: Path) -> int:
    """A file's size, 0 for one that cannot be stat'ed (a dangling link): it is still listed."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


@lru_cache(maxsize=65536)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Content hash of one file, cached on (path, size, mtime) so listings stay cheap."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        digest.update(f"unreadable:{size}".encode())
    return digest.hexdigest()

