"""File hashes remembered on disk, so an unchanged local hub is never read twice.

A local hub's revision is a content hash of its files. Hashing is the only step of
listing a folder that reads file data, and it reads all of it: a terabyte folder would
cost minutes per no-op recrawl. A file's sha256 is therefore kept in one SQLite file
under the hubtree home (``$HUBTREE_HOME``, else ``$XDG_CACHE_HOME/hubtree``, else
``~/.cache/hubtree``), keyed by (path, size, mtime, inode): a file rewritten in place
changes its mtime, one replaced by a rename changes its inode, so either is hashed
again. The cache lives outside the hub folder, which ``hubtree hub serve`` publishes.
If the home cannot be written (a read-only machine), hashes are kept for this process only.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

CACHE_FILE = "file-hashes.sqlite"


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a file without reading it."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path, st: os.stat_result) -> "FileKey":
        return cls(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def hubtree_home() -> Path:
    """Where hubtree keeps its own state (only caches: deleting it is always safe)."""
    if home := os.environ.get("HUBTREE_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubtree"


class HashCache:
    """sha256 by FileKey, in SQLite (safe for several processes at once: Ray workers, the server)."""

    def __init__(self, path: Path | None = None):
        self._memory: dict[FileKey, str] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            path = path or hubtree_home() / CACHE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, sha256 TEXT)"
            )
            self._db = db
        except (OSError, sqlite3.Error):
            self._db = None  # no writable home: this process's memory only

    def get(self, key: FileKey) -> str | None:
        if key in self._memory or self._db is None:
            return self._memory.get(key)
        return self.under(key.path).get(key)

    def under(self, prefix: str) -> dict[FileKey, str]:
        """Every cached hash of a path starting with ``prefix`` (one query for a whole repo folder)."""
        found = {k: h for k, h in self._memory.items() if k.path.startswith(prefix)}
        if self._db is None:
            return found
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT path, size, mtime_ns, inode, sha256 FROM hashes WHERE path >= ? AND path < ?", (prefix, prefix + "\U0010ffff")
                ).fetchall()
            except sqlite3.Error:
                return found
        return {**{FileKey(*row[:4]): row[4] for row in rows}, **found}

    def put_many(self, hashes: dict[FileKey, str]) -> None:
        """Remember ``hashes`` (one transaction: a listing writes once per repo, not per file)."""
        if not hashes:
            return
        with self._lock:
            if self._db is None:
                self._memory.update(hashes)
                return
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
                        [(k.path, k.size, k.mtime_ns, k.inode, h) for k, h in hashes.items()],
                    )
            except sqlite3.Error:
                self._memory.update(hashes)  # a locked or read-only database costs speed, never a listing
