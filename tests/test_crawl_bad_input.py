"""Bad input costs a row in crawl_errors, never the crawl and never other rows."""
import json
import os
import pickle
import struct

import pytest

from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from tests.hubs import add_repo


class _Boom:
    """Unpickling this would create a file: proof that nothing from a hub is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_raw(path, header: dict, data: bytes = b"", length: int | None = None):
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


@pytest.fixture(scope="module")
def bad_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("badhub")
    add_repo(root, "acme/good", seed=1)
    truncated = add_repo(root, "bad/truncated", seed=2) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    write_raw(add_repo(root, "bad/past-end") / "model.safetensors",
              {"w": {"dtype": "F32", "shape": [4], "data_offsets": [64, 80]}}, b"\0" * 16)
    write_raw(add_repo(root, "bad/overlap") / "model.safetensors",
              {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)
    write_raw(add_repo(root, "bad/huge-header") / "model.safetensors", {}, length=2**60)
    (add_repo(root, "bad/bad-json") / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"{oops}")
    add_repo(root, "bad/broken-card", card="base_model: [unclosed\n  tags: : :\n", seed=3)
    unreadable = add_repo(root, "bad/unreadable") / "model.safetensors"
    unreadable.unlink()
    unreadable.symlink_to(root / "nowhere.safetensors")
    pickled = add_repo(root, "bad/pickle-only")
    (pickled / "model.safetensors").unlink()
    marker = root / "UNPICKLED"
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    return root, marker


def test_every_bad_input_becomes_an_error_row_and_the_rest_completes(bad_hub, tmp_path, flows):
    root, marker = bad_hub
    summary = crawl_flow(hub=str(root), lake=str(tmp_path / "lake"), progress=False)
    assert summary["status"] == "completed"
    lake = Lake(str(tmp_path / "lake"))
    errors = {r["repo_id"]: r for r in lake.query("SELECT * FROM crawl_errors").to_pylist()}
    assert {k: v["error_class"] for k, v in errors.items()} == {
        "bad/truncated": "TensorOutOfRangeError",
        "bad/past-end": "TensorOutOfRangeError",
        "bad/overlap": "OverlappingTensorsError",
        "bad/huge-header": "HeaderTooLargeError",
        "bad/bad-json": "InvalidHeaderError",
        "bad/broken-card": "CardParseError",
        "bad/unreadable": "FileUnreadableError",
        "bad/pickle-only": "UnsupportedFormatError",
    }
    assert all(e["message"] and e["revision"] for e in errors.values())
    assert errors["bad/truncated"]["path"] == "model.safetensors"
    # Every repo is still catalogued, and the good tensors all arrived.
    repos = {r["repo_id"]: r["n_tensors"] for r in lake.query("SELECT repo_id, n_tensors FROM repos").to_pylist()}
    assert len(repos) == 9
    assert repos["acme/good"] == 3 and repos["bad/broken-card"] == 3
    assert not marker.exists(), "a pickle from the hub was executed"


def test_missing_hub_folder_fails_with_a_clear_message(tmp_path, flows):
    summary = crawl_flow(hub=str(tmp_path / "no-such-hub"), lake=str(tmp_path / "lake"), progress=False)
    assert summary["status"] == "failed"
    assert "does not exist" in summary["message"]
    errors = Lake(str(tmp_path / "lake")).query("SELECT stage, error_class FROM crawl_errors").to_pylist()
    assert errors == [{"stage": "list", "error_class": "RepoNotFoundError"}]
