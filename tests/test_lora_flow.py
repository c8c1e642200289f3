"""The LoRA flows end to end on a tiny trained zoo: Spectral DeTuning finds the merged set and
recovers the hidden base; two merges give a low-confidence row; DSiRe sizes held-out adapters."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from hubtree.lake import Lake
from hubtree.ops.lora.spectral_detuning import w_error
from hubtree.ops.zoo.build import load_truth
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.lora import dsire_fit_flow, dsire_predict_flow, lora_flow
from tests.hubs import add_repo, crawled_zoo, tiny_weights


@pytest.fixture(scope="module")
def zoo_lake(tmp_path_factory, flows):
    out = tmp_path_factory.mktemp("lorazoo")
    lake = crawled_zoo(out, seed=0)
    return out, load_truth(out / "truth.json"), lake


def test_merged_lora_set_is_found_and_the_hidden_base_recovered(zoo_lake):
    out, truth, lake = zoo_lake
    summary = lora_flow(lake=lake, progress=False)
    (base_repo,) = truth.hidden_bases
    rows = Lake(lake).query("SELECT * FROM lora_recoveries WHERE base_repo = ?", [base_repo]).to_pylist()
    assert {r["layer"].split(".")[-2] for r in rows} == set(truth.lora.targets)
    assert all(r["confidence"] == "ok" and r["rank"] == truth.lora.rank for r in rows)  # rank estimated, never given
    assert all(sorted(r["sources"]) == sorted(truth.lora.merged) for r in rows)  # undeclared merges joined too
    assert all(r["w_error"] is None for r in rows)  # the base is not on the hub
    (path,) = {r["weights_path"] for r in rows}
    assert path in summary["files"]
    recovered, true_base = load_file(path), load_file(out / truth.hidden_bases[base_repo])
    assert set(recovered) == {r["layer"] for r in rows}
    for name, weights in recovered.items():
        assert w_error(weights, true_base[name]) <= -10
    others = Lake(lake).query("SELECT * FROM lora_recoveries WHERE base_repo <> ?", [base_repo]).to_pylist()
    assert others and all(r["confidence"].startswith("low: ") and r["weights_path"] is None for r in others)
    # What the run read lands in crawl_runs: at least the detuned layers of every merge (the check reads some layers first),
    # and less than the hub's weights: an undeclared model that no group keeps is read at one layer, not once per group.
    detuned = Lake(lake).query(
        "SELECT sum(data_end - data_begin) AS n FROM tensors WHERE list_contains(?, repo_id) AND list_contains(?, name)",
        [truth.lora.merged, list(recovered)]).to_pylist()[0]["n"]
    hub_weights = Lake(lake).query("SELECT sum(size) AS n FROM files WHERE kind = 'weights'").to_pylist()[0]["n"]
    (run,) = Lake(lake).query("SELECT bytes_fetched, requests FROM crawl_runs WHERE run_id = ?", [summary["run_id"]]).to_pylist()
    assert detuned <= run["bytes_fetched"] and 3 * run["bytes_fetched"] < 2 * hub_weights, (run, hub_weights)  # 0.46x; 1.8x before
    assert run["requests"] == 0  # a folder hub is read, not requested


def test_two_merges_give_a_low_confidence_row(zoo_lake, tmp_path):
    out, truth, _ = zoo_lake
    hub = tmp_path / "hub"
    for repo in truth.lora.merged[:2]:
        shutil.copytree(out / "hub" / repo, hub / repo)
    lake = str(tmp_path / "lake")
    crawl_flow(hub=str(hub), lake=lake, progress=False)
    summary = lora_flow(lake=lake, progress=False)
    rows = Lake(lake).query("SELECT * FROM lora_recoveries").to_pylist()
    assert summary["recovered"] == 0 and summary["files"] == []
    assert rows and all(r["confidence"].startswith("low: only 2 merge(s)") and r["weights_path"] is None for r in rows)
    assert all(r["n_sources"] == 2 for r in rows)
    (run,) = Lake(lake).query("SELECT status, repos_failed, repos_skipped FROM crawl_runs WHERE flow = 'lora'").to_pylist()
    assert run == {"status": "completed", "repos_failed": 0, "repos_skipped": 1}  # a low-confidence group is a finding, not a failure


def test_an_unreadable_group_fails_the_run_partly_and_low_ones_do_not(zoo_lake, tmp_path):
    out, truth, lake = zoo_lake
    shutil.copytree(out / "hub", tmp_path / "hub")
    shutil.copytree(lake, tmp_path / "lake")
    for weights in (tmp_path / "hub" / truth.lora.merged[0]).glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # truncated after the crawl
    summary = lora_flow(lake=str(tmp_path / "lake"), hub=str(tmp_path / "hub"), progress=False)
    assert summary["status"] == "partial" and summary["failed"] == 1 and summary["low"] >= 1, summary
    (base_repo,) = truth.hidden_bases
    rows = Lake(str(tmp_path / "lake")).query("SELECT confidence FROM lora_recoveries WHERE base_repo = ?", [base_repo]).to_pylist()
    assert rows and all(r["confidence"].startswith("failed: ") for r in rows)
    (run,) = Lake(str(tmp_path / "lake")).query("SELECT * FROM crawl_runs WHERE run_id = ?", [summary["run_id"]]).to_pylist()
    assert (run["status"], run["repos_failed"], run["repos_skipped"]) == ("partial", 1, summary["low"])


def test_dsire_fit_on_half_predicts_the_other_half(zoo_lake, tmp_path):
    _, truth, lake = zoo_lake
    by_size: dict[int, list[str]] = {}
    for repo, size in sorted(truth.lora.adapters.items()):
        by_size.setdefault(size, []).append(repo)
    train = {repos[i]: size for size, repos in by_size.items() for i in range(0, len(repos), 2)}
    labels = tmp_path / "sizes.csv"
    labels.write_text("repo_id,dataset_size\n" + "".join(f"{r},{s}\n" for r, s in train.items()))
    fitted = dsire_fit_flow(lake=lake, labels_csv=str(labels))
    predicted = dsire_predict_flow(lake=lake)
    assert predicted["model_id"] == fitted["model_id"]
    rows = Lake(lake).query("SELECT * FROM dataset_size_estimates").to_pylist()
    held_out = set(truth.lora.adapters) - set(train)
    assert {r["repo_id"] for r in rows} == held_out
    sizes = np.array(list(truth.lora.adapters.values()))
    mae = np.mean([abs(r["estimate"] - truth.lora.adapters[r["repo_id"]]) for r in rows])
    print(f"DSiRe MAE {mae:.1f} vs mean absolute deviation {np.abs(sizes - sizes.mean()).mean():.1f}")
    assert mae < np.abs(sizes - sizes.mean()).mean()
    spectra = Lake(lake).query("SELECT count(DISTINCT repo_id) AS n FROM lora_spectra").to_pylist()
    assert spectra == [{"n": len(truth.lora.adapters)}]


def test_dsire_reads_each_adapter_once_and_an_unreadable_one_costs_only_itself(zoo_lake, tmp_path):
    out, truth, _ = zoo_lake
    shutil.copytree(out / "hub", tmp_path / "hub")
    hub, lake = str(tmp_path / "hub"), str(tmp_path / "lake")
    crawl_flow(hub=hub, lake=lake, progress=False)  # a lake of its own: no spectra stored yet
    adapters = sorted(truth.lora.adapters)
    broken = tmp_path / "hub" / adapters[-1] / "adapter_model.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated after the crawl
    labels = tmp_path / "sizes.csv"
    labels.write_text("repo_id,dataset_size\n" + "".join(f"{r},{truth.lora.adapters[r]}\n" for r in adapters[:2]))
    dsire_fit_flow(lake=lake, labels_csv=str(labels), hub=hub)
    first, second = dsire_predict_flow(lake=lake, hub=hub), dsire_predict_flow(lake=lake, hub=hub)
    assert first["status"] == second["status"] == "partial" and set(first["failed"]) == {adapters[-1]}
    assert first["estimated"] == len(adapters) - 3  # neither the labelled ones nor the broken one
    the_lake = Lake(lake)
    estimates = [the_lake.query("SELECT repo_id, estimate, vote_share FROM dataset_size_estimates_all WHERE run_id = ? ORDER BY repo_id",
                                [run["run_id"]]).to_pylist() for run in (first, second)]
    assert estimates[0] == estimates[1]  # spectra from the lake give what the read ones gave
    runs = the_lake.query("SELECT flow, status, bytes_fetched FROM crawl_runs WHERE flow LIKE 'dsire%' AND status <> 'running' "
                          "ORDER BY started_at").to_pylist()
    assert [(r["flow"], r["status"]) for r in runs] == [("dsire-fit", "completed"), ("dsire", "partial"), ("dsire", "partial")]
    whole = sum(f.stat().st_size for f in (tmp_path / "hub").rglob("adapter_model.safetensors"))
    assert runs[0]["bytes_fetched"] > whole / 2 and runs[1]["bytes_fetched"] == runs[2]["bytes_fetched"] <= 100  # the broken one only
    errors = the_lake.query("SELECT DISTINCT repo_id, stage, error_class FROM crawl_errors WHERE stage LIKE 'dsire%'").to_pylist()
    assert {(e["repo_id"], e["error_class"]) for e in errors} == {(adapters[-1], "TruncatedFileError")}


def test_a_model_of_another_shape_declaring_the_base_is_not_a_source(zoo_lake, tmp_path):
    out, truth, _ = zoo_lake
    (base_repo,) = truth.hidden_bases
    hub = tmp_path / "hub"
    for repo in truth.lora.merged:
        shutil.copytree(out / "hub" / repo, hub / repo)
    add_repo(hub, "odd/other-arch", card=f"base_model: {base_repo}\n", weights=tiny_weights(1, d=8))
    lake = str(tmp_path / "lake")
    crawl_flow(hub=str(hub), lake=lake, progress=False)
    lora_flow(lake=lake, progress=False)
    rows = Lake(lake).query("SELECT * FROM lora_recoveries WHERE base_repo = ?", [base_repo]).to_pylist()
    assert rows and all(r["confidence"] == "ok" for r in rows)  # the odd model does not spoil the set
    assert all(sorted(r["sources"]) == sorted(truth.lora.merged) for r in rows)
