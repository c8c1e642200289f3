"""A hub that is a local folder in Hub layout: ``ROOT/<org>/<name>/<files>``.

The revision of a repo is a content hash of its files (paths, sizes and bytes), so
it changes exactly when the repo does, like a commit sha on the Hub. Each file's hash
is cached on disk by (path, size, mtime, inode) (``hash_cache``), so listing an
unchanged folder again reads no file data. Files are read with ``os.pread``: a crawl
touches the header of each weights file, not its data.

Only the folder's own files are read or served: a path is resolved (links followed)
and must stay under the root and be a regular file. A link out of the root, to a
directory or to a device is still listed (so the crawl reports it) but never opened,
and dot-files and dot-directories are neither listed nor opened.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from hubtree.errors import EntryNotFoundError, FileUnreadableError, HubtreeError, RepoNotFoundError
from hubtree.ops.hub.declared import edges_from_tags, hub_tags, parse_card
from hubtree.ops.hub.hash_cache import FileKey, HashCache
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
        self._hashes = _shared_cache()

    # -- listing ---------------------------------------------------------------
    def repo_ids(self) -> list[str]:
        """Every ``org/name`` folder under the root, sorted."""
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir()
            if org.is_dir() and not org.name.startswith(".")
            for repo in org.iterdir()
            if repo.is_dir() and not repo.name.startswith(".") and self.root in repo.resolve().parents
        )

    def list_repos(self, query: RepoQuery = RepoQuery()) -> Iterator[RepoRef]:
        ids = self._family(query.family) if query.family else self.repo_ids()
        sort = query.sort in ("created_at", "createdAt", "last_modified", "lastModified")
        if not (query.filter or sort):  # author and search need only the id: no card is read
            for repo_id in [i for i in ids if query.matches(i, i.split("/")[0], [])][: query.limit]:
                yield RepoRef(repo_id, self.revision(repo_id))
            return
        records = [self.repo_record(RepoRef(i, self.revision(i))) for i in ids]
        records = [r for r in records if query.matches(r.repo_id, r.author, r.tags)]
        if sort:
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
        """A 40-hex content hash of the repo's files, stable across machines and copies.

        A file that cannot be opened as the hub's own (dangling, out of the root, not
        regular) counts as unreadable and is never read.
        """
        repo = self._dir(repo_id)
        digest, fresh, cached = hashlib.sha1(), {}, self._hashes.under(str(repo) + os.sep)
        for path in self._files(repo_id):
            try:
                real, st = self._own_file(path, listed=True)
                size, sha = st.st_size, self._sha256(real, st, fresh, cached)
            except FileUnreadableError:
                size = _size(path)
                sha = _unreadable(size)
            digest.update(f"{path.relative_to(repo).as_posix()}\0{size}\0".encode())
            digest.update(sha.encode())
        self._hashes.put_many(fresh)
        return digest.hexdigest()

    def file_sha256(self, path: Path) -> str:
        """The sha256 of one of the hub's own files (``own_path``), from the cache when unchanged."""
        fresh: dict[FileKey, str] = {}
        sha = self._sha256(*self._own_file(path), fresh)
        self._hashes.put_many(fresh)
        return sha

    def _sha256(self, real: Path, st: os.stat_result, fresh: dict[FileKey, str], cached: dict[FileKey, str] | None = None) -> str:
        """From the on-disk cache when (path, size, mtime, inode) is unchanged, else read (and added to ``fresh``)."""
        key = FileKey.of(real, st)
        sha = (cached or {}).get(key) or self._hashes.get(key)
        if sha is None:
            sha = fresh[key] = _sha256(real, st.st_size)
        return sha

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
        return LocalFile(self.own_path(ref.repo_id, path))

    def local_path(self, repo_id: str, path: str) -> Path:
        """Where a file of the repo would live on disk (unchecked: see ``own_path`` before reading it)."""
        return self._dir(repo_id) / path

    def own_path(self, repo_id: str, path: str) -> Path:
        """The real path of a file this hub may read or serve, links followed.

        Raises:
            EntryNotFoundError: no such file, or a dot-file or dot-directory.
            FileUnreadableError: it is a link that leaves the root, or not a regular
                file (a directory, a device, a FIFO), or it cannot be stat'ed.
        """
        target = self._dir(repo_id) / path
        if any(part.startswith(".") for part in Path(path).parts) or not (target.is_symlink() or target.exists()):
            raise EntryNotFoundError(f"{repo_id} has no file {path}")
        return self._own_file(target)[0]

    def _own_file(self, target: Path, listed: bool = False) -> tuple[Path, os.stat_result]:
        """``target``'s real path and stat if it is the hub's own regular file, else FileUnreadableError.

        ``listed``: the path comes from ``_files`` (which never descends into a linked
        folder), so a regular file that is not itself a link needs no resolving.
        """
        if listed:
            try:
                st = target.lstat()
            except OSError:
                st = None  # gone since listed: resolving below says so
            if st is not None and stat.S_ISREG(st.st_mode):
                return target, st
        try:
            real = target.resolve(strict=True)
            st = real.stat()
        except (OSError, RuntimeError) as err:  # RuntimeError: a link loop
            raise FileUnreadableError(f"{target}: cannot be read ({getattr(err, 'strerror', None) or err})") from err
        if self.root not in real.parents:
            raise FileUnreadableError(f"{target}: links outside the hub folder {self.root}; not read")
        if not stat.S_ISREG(st.st_mode):
            raise FileUnreadableError(f"{target}: not a regular file; not read")
        return real, st

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
        try:
            target = self.own_path(repo_id, path)
        except FileUnreadableError as err:
            raise EntryNotFoundError(f"{repo_id} has no readable file {path}: {err}") from err
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


def _unreadable(size: int) -> str:
    """What a file the hub may not read contributes to its repo's revision."""
    return hashlib.sha256(f"unreadable:{size}".encode()).hexdigest()


def _sha256(path: Path, size: int) -> str:
    """Content hash of one regular file, read once in chunks of at most ``size`` bytes."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            remaining = size  # never past the size stat'ed: a growing file cannot hang a listing
            while remaining > 0 and (chunk := handle.read(min(_HASH_CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    except OSError:
        return _unreadable(size)
    return digest.hexdigest()


_CACHE: HashCache | None = None


def _shared_cache() -> HashCache:
    """One cache (one SQLite connection) per process, shared by every LocalHub in it."""
    global _CACHE
    if _CACHE is None:
        _CACHE = HashCache()
    return _CACHE

