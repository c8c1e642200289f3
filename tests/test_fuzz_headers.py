"""Property-based fuzz of hostile safetensors headers: the reader, and a repo's way to the lake's rows.

Whatever a header holds, ``parse_header`` either returns entries every lake column can
store, or raises a ``SafetensorsError``; and cataloguing a repo holding such a file
gives that repo's rows or its error row, never an exception, and never costs another
repo. Examples are derandomized (the same in every CI run) and bounded to well under
a minute; HUBTREE_FUZZ_EXAMPLES raises the count for a longer hunt. Each test prints
its tally (cases, clear error rows, accepted, anything else), which must end with 0.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hubtree.errors import SafetensorsError
from hubtree.ops.hub.catalog import catalog_repo
from hubtree.ops.hub.local import LocalHub
from hubtree.ops.hub.source import RepoRef
from hubtree.ops.weights.safetensors_reader import DTYPES, INT64_MAX, parse_header
from hubtree.pipelines.catalog_rows import catalog_rows
from tests.hubs import add_repo

EXAMPLES = int(os.environ.get("HUBTREE_FUZZ_EXAMPLES", 300))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Values a hostile header puts where the format wants a dtype, a dim, an offset or a name.
NASTY_INTS = st.sampled_from([-1, 0, 1, 3, 2**31, 2**32, INT64_MAX, 2**63, 2**64, 10**30])
NASTY_TEXT = st.sampled_from(["\ud800x", "\udfff", "a\x00b", "", "F32", "BF16", "f32", "é" * 3, "__metadata__"])
JSON = st.recursive(
    st.none() | st.booleans() | NASTY_INTS | st.integers() | st.floats(allow_nan=True) | NASTY_TEXT | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | NASTY_TEXT, inner, max_size=4),
    max_leaves=12,
)


def _valid() -> tuple[dict, bytes]:
    """A small well-formed header and its data: three tensors, metadata."""
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]},
        "c": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},
    }
    return header, bytes(range(32))


@st.composite
def mutated_header(draw) -> tuple[dict, bytes]:
    """A valid header with a few fields replaced by hostile values (or whole entries added)."""
    header, data = _valid()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["a", "b", "c", "__metadata__", "new"]))
        where = draw(st.sampled_from(["dtype", "shape", "dim", "data_offsets", "entry", "name"]))
        entry = header.setdefault(name, {"dtype": "F32", "shape": [1], "data_offsets": [32, 36]})
        if where == "entry" or not isinstance(entry, dict):
            header[name] = draw(JSON)
        elif where == "name":
            header[draw(NASTY_TEXT | st.text(max_size=6))] = header.pop(name)
        elif where == "dim":
            entry["shape"] = [draw(NASTY_INTS) for _ in range(draw(st.integers(0, 3)))]
            if draw(st.booleans()):
                entry["data_offsets"] = [0, 0]
        elif where == "data_offsets":
            entry[where] = draw(st.lists(NASTY_INTS, max_size=3) | JSON)
        else:
            entry[where] = draw(JSON | NASTY_TEXT if where == "dtype" else JSON)
    return header, data


def encode(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    body = json.dumps(header).encode()  # lone surrogates become \ud800 escapes: valid JSON, not UTF-8 text
    return struct.pack("<Q", len(body) if length is None else length) + body + data


@st.composite
def hostile_file(draw) -> bytes:
    """Mutated headers, raw byte damage, lying length prefixes and very deep JSON."""
    kind = draw(st.sampled_from(["mutated", "mutated", "bytes", "length", "deep"]))
    if kind == "deep":
        depth = draw(st.integers(10, 200_000))
        return struct.pack("<Q", 2 * depth) + b"[" * depth + b"]" * depth
    header, data = draw(mutated_header()) if kind != "bytes" else _valid()
    blob = bytearray(encode(header, data))
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 4))):
            blob[draw(st.integers(8, len(blob) - 1))] = draw(st.integers(0, 255))
    if kind == "length":
        blob[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(blob)


def storable(header) -> bool:
    """What the lake needs of every accepted entry: UTF-8 names, int64 dims and offsets, bytes inside the file."""
    for e in header.tensors:
        e.name.encode("utf-8")
        if not (0 <= e.begin <= e.end <= header.file_size and e.dtype in DTYPES):
            return False
        if not all(0 <= d <= INT64_MAX for d in e.shape) or e.numel > INT64_MAX:
            return False
    return True


READER = Counter()
ROWS = Counter()


@FUZZ
@given(hostile_file())
@example(encode({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}))
@example(encode({"\ud800x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
@example(encode({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
@example(struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000)
@example(encode({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1]}}).replace(b"[0, 1]", b"[0, 1" + b"0" * 5000 + b"]"))
def test_header_reader_accepts_only_storable_headers_and_raises_only_its_own_errors(blob):
    READER["cases"] += 1
    try:
        header = parse_header(blob, len(blob), "fuzz.safetensors")
    except SafetensorsError:
        READER["clear error"] += 1
        return
    except Exception:
        READER["anything else"] += 1
        raise
    assert storable(header)
    READER["accepted"] += 1


@pytest.fixture(scope="module")
def fuzz_hub():
    """One good repo and one repo whose weights file each example overwrites."""
    root = Path(tempfile.mkdtemp(prefix="hubtree-fuzz-"))
    add_repo(root, "good/repo", seed=1)
    add_repo(root, "fuzz/repo", seed=2)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(blob=hostile_file())
@example(blob=encode({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}))
@example(blob=encode({"\ud800x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
@example(blob=encode({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8))
def test_a_hostile_weights_file_costs_only_its_own_repo(fuzz_hub, blob):
    ROWS["cases"] += 1
    (fuzz_hub / "fuzz/repo/model.safetensors").write_bytes(blob)
    hub = LocalHub(fuzz_hub)
    refs = [RepoRef(r, hub.revision(r)) for r in ("good/repo", "fuzz/repo")]
    try:
        catalogs = [catalog_repo(hub, ref) for ref in refs]
        rows = catalog_rows(catalogs, str(fuzz_hub))
    except Exception:
        ROWS["anything else"] += 1
        raise
    tensors = rows["tensors"]
    assert sum(t["repo_id"] == "good/repo" for t in tensors) == 3
    errors = [e for e in rows["crawl_errors"] if e["repo_id"] == "fuzz/repo"]
    assert all(e["repo_id"] != "good/repo" for e in rows["crawl_errors"])
    if errors:
        assert all(e["message"] and e["error_class"] for e in errors)
        ROWS["clear error"] += 1
    else:
        assert "fuzz/repo" in [r["repo_id"] for r in rows["repos"]]
        ROWS["accepted"] += 1


def test_fuzz_tallies_have_nothing_else():
    """Runs after the two fuzz tests (file order): prints the figures the closing note quotes."""
    for name, tally in (("header reader", READER), ("repo to rows", ROWS)):
        if tally["cases"]:
            print(f"\nfuzz {name}: {tally['cases']} cases, {tally['clear error']} clear errors, "
                  f"{tally['accepted']} accepted, {tally['anything else']} anything else")
        assert tally["anything else"] == 0
