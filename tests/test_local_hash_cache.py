"""A local hub listed again reads no file data: file hashes come from the on-disk cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hubtree.ops.hub.hash_cache import FileKey, HashCache
from tests.hubs import add_repo

LIST = "import json, sys; from hubtree.ops.hub.local import LocalHub; print(json.dumps([[r.repo_id, r.revision] for r in LocalHub(sys.argv[1]).list_repos()]))"


@pytest.fixture
def relist(tmp_path):
    """List the hub in a new process (as each crawl is), sharing one hubtree home; returns {repo_id: revision}."""

    def run() -> dict[str, str]:
        env = {**os.environ, "HUBTREE_HOME": str(tmp_path / "home")}
        out = subprocess.run([sys.executable, "-c", LIST, str(tmp_path / "hub")], env=env, capture_output=True, text=True, check=True)
        return dict(json.loads(out.stdout))

    return run


def rewrite_in_place(path, data: bytes) -> None:
    """New bytes, same size, same inode, the old mtime put back: only reading the file can tell."""
    st = path.stat()
    with path.open("r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_relisting_of_an_unchanged_folder_reads_no_file_data(tmp_path, relist):
    weights = add_repo(tmp_path / "hub", "org/a", seed=1) / "model.safetensors"
    add_repo(tmp_path / "hub", "org/b", seed=2)
    first = relist()
    # Were any file read again, the revision of org/a would change with its bytes.
    rewrite_in_place(weights, bytes(weights.stat().st_size))
    assert relist() == first
    # A real edit changes the mtime: that file is hashed again and the revision moves.
    os.utime(weights)
    again = relist()
    assert again["org/b"] == first["org/b"] and again["org/a"] != first["org/a"]


def test_the_cache_lives_in_the_hubtree_home_never_in_the_served_folder(tmp_path, relist):
    add_repo(tmp_path / "hub", "org/a")
    relist()
    assert (tmp_path / "home" / "file-hashes.sqlite").is_file()
    assert not [p for p in (tmp_path / "hub").rglob("*") if "sqlite" in p.name]


def test_a_replaced_file_is_hashed_again_and_an_unwritable_home_still_lists(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = HashCache(tmp_path / "cache.sqlite")
    key = FileKey.of(path, path.stat())
    cache.put_many({key: "h1"})
    assert HashCache(tmp_path / "cache.sqlite").get(key) == "h1"
    assert cache.get(FileKey(key.path, key.size, key.mtime_ns, key.inode + 1)) is None  # renamed over: new inode
    (tmp_path / "ro").write_text("a file where the home's folder should be")
    fallback = HashCache(tmp_path / "ro" / "cache.sqlite")
    fallback.put_many({key: "h2"})
    assert fallback.get(key) == "h2"
