"""The stats flow: right numbers in the lake, read by range over HTTP, and a rerun does nothing."""
import shutil

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from hubtree.hub_server import running
from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from tests.hubs import add_repo


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        weights = {
            "model.layers.0.self_attn.q_proj.weight": torch.randn(32, 32, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.distributions.StudentT(3.0).sample((64, 32)),
            "model.norm.weight": torch.ones(32) + 0.01 * i,
            "model.layers.0.self_attn.o_proj.weight": torch.randn(32, 32, generator=g).to(torch.bfloat16),
            "position_ids": torch.arange(32),
        }
        add_repo(root, f"org/m{i}", weights=weights)
    return root


def test_stats_match_scipy_and_rerun_adds_nothing(hub, tmp_path, flows):
    lake_dir = str(tmp_path / "lake")
    crawl_flow(hub=str(hub), lake=lake_dir, progress=False)
    first = stats_flow(lake=lake_dir, full=True, progress=False)
    assert first["tensors"] == 12 and first["failed"] == 0  # 4 floating tensors x 3 models; int64 skipped
    lake = Lake(lake_dir)
    row = lake.query("SELECT * FROM layer_stats WHERE repo_id = 'org/m1' AND tensor LIKE '%up_proj%'").to_pylist()[0]
    from safetensors.torch import load_file

    w = load_file(str(hub / "org/m1/model.safetensors"))["model.layers.0.mlp.up_proj.weight"].double().numpy()
    assert row["kurtosis"] == pytest.approx(scipy_stats.kurtosis(w, axis=None), rel=1e-6)
    assert row["stable_rank"] == pytest.approx((np.linalg.svd(w, compute_uv=False) ** 2).sum() / np.linalg.norm(w, 2) ** 2, rel=1e-6)
    assert row["spectrum"] == "full" and row["alpha"] > 1
    sketches = lake.query("SELECT width, seed, len(sketch) AS n FROM layer_sketches").to_pylist()
    assert len(sketches) == 9 and all(s["n"] == s["width"] == 512 for s in sketches)
    assert lake.query("SELECT count(*) AS n FROM probe_features").to_pylist() == [{"n": 9}]
    before = {t: lake.query(f"SELECT count(*) AS n FROM {t}_all").to_pylist() for t in ("layer_stats", "layer_sketches", "probe_features")}
    again = stats_flow(lake=lake_dir, full=True, progress=False)
    assert again["models"] == 0 and again["tensors"] == 0
    assert {t: Lake(lake_dir).query(f"SELECT count(*) AS n FROM {t}_all").to_pylist() for t in before} == before


def test_stats_over_http_read_only_the_tensors_by_range(hub, tmp_path, flows):
    lake_dir = str(tmp_path / "lake")
    with running(hub) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
        summary = stats_flow(lake=lake_dir, layers=r"q_proj", full=True, progress=False)
        ranges = [r[2] for r in (*server.faults.requests, *server.cdn.requests) if r[2]]
    assert summary["tensors"] == 3
    wanted = Lake(lake_dir).query("SELECT data_begin, data_end FROM tensors WHERE name LIKE '%q_proj%'").to_pylist()
    for t in wanted:  # exactly the tensor's bytes, as one closed range
        assert f"bytes={t['data_begin']}-{t['data_end'] - 1}" in ranges
    assert all(r.startswith("bytes=") and not r.endswith("-") for r in ranges)  # never an open-ended range
    tensor_bytes = sum(t["data_end"] - t["data_begin"] for t in wanted)
    # Plus three header reads, each the first min(100 KB, max(4 KB, 1% of the file)) (HttpFile.first_read_bytes).
    sizes = Lake(lake_dir).query("SELECT size FROM files WHERE kind = 'weights'").column(0).to_pylist()
    assert summary["bytes_fetched"] == tensor_bytes + sum(min(size, 100_000, max(4096, size // 100)) for size in sizes) and len(sizes) == 3


def test_full_stats_after_sampled_ones_add_whole_tensor_rows_one_resolve_and_one_read_per_run_of_tensors(hub, tmp_path, flows):
    lake_dir = str(tmp_path / "lake")
    with running(hub) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
        sampled = stats_flow(lake=lake_dir, budget_bytes=2048, progress=False)  # q and o, a few rows each
        before = server.counters.snapshot()
        full = stats_flow(lake=lake_dir, full=True, progress=False)
        after = server.counters.snapshot()
    assert (sampled["tensors"], full["tensors"]) == (6, 12)
    lake = Lake(lake_dir)
    kinds = lake.query("SELECT count(*) FILTER (row_begin IS NULL) AS whole, count(*) FILTER (row_begin IS NOT NULL) AS rows FROM layer_stats")
    assert kinds.to_pylist() == [{"whole": 12, "rows": 6}]
    # Floating tensors packed back to back are one ranged read; the int64 tensor between runs is skipped.
    layout = lake.query("SELECT repo_id, dtype, data_begin FROM tensors ORDER BY repo_id, data_begin").to_pylist()
    runs = sum(t["dtype"] != "I64" and (i == 0 or layout[i - 1]["dtype"] == "I64" or layout[i - 1]["repo_id"] != t["repo_id"])
               for i, t in enumerate(layout))
    assert after["resolvers"] - before["resolvers"] == 3  # one resolve per file
    assert after["cdn"] - before["cdn"] == 3 + runs  # each file's header, then one read per run of tensors


def test_a_copy_recognised_by_etag_gets_its_originals_rows_without_a_read(tmp_path, flows):
    root = tmp_path / "hub"
    add_repo(root, "orig/model", seed=7)
    lake_dir = str(tmp_path / "lake")
    with running(root) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
        copy = add_repo(root, "copy/model", card="license: apache-2.0\n", seed=99)
        shutil.copy(root / "orig/model/model.safetensors", copy / "model.safetensors")  # the same bytes, re-uploaded
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
        server.cdn.requests.clear()
        server.faults.requests.clear()
        summary = stats_flow(lake=lake_dir, full=True, progress=False)
        paths = {path for _, path, _ in (*server.faults.requests, *server.cdn.requests)}
    assert summary["copied_files"] == 1 and summary["failed"] == 0 and summary["models"] == 2
    assert any("orig/model" in p for p in paths) and not any("copy/model" in p for p in paths)  # the copy: not one byte
    rows = "SELECT tensor, row_begin, kurtosis::VARCHAR AS kurtosis, spectrum FROM layer_stats WHERE repo_id = ? ORDER BY tensor"
    lake = Lake(lake_dir)
    assert lake.query(rows, ["copy/model"]).to_pylist() == lake.query(rows, ["orig/model"]).to_pylist() != []
    sketches = "SELECT tensor, sketch FROM layer_sketches WHERE repo_id = ? ORDER BY tensor"
    assert lake.query(sketches, ["copy/model"]).to_pylist() == lake.query(sketches, ["orig/model"]).to_pylist() != []


@pytest.mark.slow
def test_killed_stats_run_resumes_without_loss_or_duplicates(tmp_path, flows):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import ray
    from prefect.settings import PREFECT_API_URL

    for i in range(10):
        add_repo(tmp_path / "hub", f"org/m{i}", seed=i)
    crawled = tmp_path / "crawled"
    crawl_flow(hub=str(tmp_path / "hub"), lake=str(crawled), progress=False)
    shutil.copytree(crawled, tmp_path / "reference")
    stats_flow(lake=str(tmp_path / "reference"), batch_size=1, full=True, progress=False)

    lake = tmp_path / "killed"
    shutil.copytree(crawled, lake)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "hubtree.cli", "stats", "--lake", str(lake), "--batch-size", "1", "--full",
               "--ray-address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(Lake(str(lake)).query("SELECT * FROM lake_commits WHERE stage = 'stats'")) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stats run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)

    query = "SELECT repo_id, tensor, kurtosis, alpha, stable_rank FROM layer_stats_all ORDER BY repo_id, tensor"
    rows = lambda where: list(map(str, Lake(str(where)).query(query).to_pylist()))  # str: nan == nan
    assert rows(lake) == rows(tmp_path / "reference") and len(rows(lake)) == 30
    sketches = "SELECT repo_id, tensor, sketch FROM layer_sketches_all ORDER BY repo_id, tensor"
    assert Lake(str(lake)).query(sketches).to_pylist() == Lake(str(tmp_path / "reference")).query(sketches).to_pylist()


def test_stats_sample_the_same_rows_of_every_model_as_one_range_each_within_the_budget(hub, tmp_path, flows):
    from hubtree.ops.weights.row_sample import sample_rows

    lake_dir = str(tmp_path / "lake")
    budget = 2048  # bytes per model: 1 KiB per attention matrix, 8 rows of float32 q_proj, 16 of bf16 o_proj
    with running(hub) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
        sent_before = len(server.faults.requests), len(server.cdn.requests)
        summary = stats_flow(lake=lake_dir, budget_bytes=budget, progress=False)
        ranges = [r[2] for r in (*server.faults.requests, *server.cdn.requests) if r[2]]
        sent = len(server.faults.requests) - sent_before[0], len(server.cdn.requests) - sent_before[1]
    lake = Lake(lake_dir)
    # The run's requests land in crawl_runs as the hub saw them: one resolve per file, its ranges to the CDN.
    run = lake.query("SELECT requests, api_calls, resolves, cdn_requests, bytes_fetched FROM crawl_runs "
                     "WHERE flow = 'stats' AND status = 'completed'").to_pylist()
    assert run == [{"requests": sum(sent), "api_calls": 0, "resolves": 3, "cdn_requests": sent[1], "bytes_fetched": summary["bytes_fetched"]}]
    assert sent[0] == 3 and sent[1] >= 3
    rows = lake.query("SELECT repo_id, tensor, row_begin, row_end, numel FROM layer_stats ORDER BY repo_id, tensor").to_pylist()
    # The tree stage's tensors only (the two square attention matrices), at rows fixed by name and shape.
    assert summary["tensors"] == len(rows) == 6 and {r["tensor"].split(".")[-2] for r in rows} == {"q_proj", "o_proj"}
    tensors = lake.query("SELECT repo_id, name, dtype, data_begin FROM tensors WHERE name LIKE '%self_attn%'").to_pylist()
    sampled = 0
    for t in tensors:  # each sample is exactly one closed range of its rows' bytes, the same rows in every model
        row_bytes = 32 * (2 if t["dtype"] == "BF16" else 4)
        s = sample_rows(t["name"], (32, 32), 1024 // row_bytes)
        assert f"bytes={t['data_begin'] + s.begin * row_bytes}-{t['data_begin'] + s.end * row_bytes - 1}" in ranges
        assert {(r["row_begin"], r["row_end"], r["numel"]) for r in rows if r["tensor"] == t["name"]} == {(s.begin, s.end, s.rows * 32)}
        sampled += s.rows * row_bytes
    assert sampled == 3 * budget
    assert sampled < summary["bytes_fetched"] < sampled + 3 * 2 * 4096  # plus each file's header reads (at most 4 KB each on small files)
    sketches = lake.query("SELECT row_begin, row_end FROM layer_sketches").to_pylist()
    assert len(sketches) == 6 and all(s["row_begin"] is not None for s in sketches)
    assert stats_flow(lake=lake_dir, budget_bytes=budget, progress=False)["models"] == 0  # sampled once, never again
