"""ProbeX end to end on a tiny labelled zoo trained for real: fit from the cards, predict, search, refusals."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.errors import LakeError
from hubtree.lake import Lake
from hubtree.ops.zoo.labelled import DATA_ORG, LabelledSpec, build_labelled_zoo
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.probex import probex_fit_flow, probex_predict_flow, search_lake
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow
from tests.hubs import add_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, flows):
    out = tmp_path_factory.mktemp("labelledzoo")
    truth = build_labelled_zoo(out, seed=0, spec=LabelledSpec.tiny(), progress=False)
    lake = str(out / "lake")
    crawl_flow(hub=str(out / "hub"), lake=lake, progress=False)
    stats_flow(lake=lake, progress=False)
    trees_flow(lake=lake)
    return truth, lake


def test_fit_from_cards_then_predict_scores_every_member_on_every_label(labelled):
    truth, lake = labelled
    fit = probex_fit_flow(lake=lake, epochs=40)  # no labels file: the cards that name their datasets
    ((family, expert),) = fit["experts"].items()
    documented = [r for r in truth.labels if "datasets" in (Lake(lake).query(
        "SELECT card_metadata FROM repos WHERE repo_id = ?", [r]).to_pylist()[0]["card_metadata"] or "")]
    assert expert["members"] == len(documented) and expert["base"] == truth.families["atlas"][0]
    assert set(expert["layers_tried"]) >= {expert["layer"]}
    predicted = probex_predict_flow(lake=lake)
    rows = Lake(lake).query("SELECT * FROM model_labels").to_pylist()
    labels = {f"{DATA_ORG}/{d}" for d in truth.datasets}
    assert {r["repo_id"] for r in rows} == set(truth.models)  # the root and the undocumented too
    assert {r["label"] for r in rows} == labels and len(rows) == len(truth.models) * len(labels)
    assert all(0.0 <= r["score"] <= 1.0 and r["expert"] == fit["model_id"] == predicted["model_id"] for r in rows)
    seen = [r for r in rows if r["repo_id"] in documented]
    correct = [(r["score"] >= 0.5) == (r["label"].split("/")[1] in truth.labels[r["repo_id"]]) for r in seen]
    assert sum(correct) / len(correct) >= 0.8  # it learned its training labels
    embeddings = Lake(lake).query("SELECT repo_id, layer, embedding FROM probex_embeddings").to_pylist()
    assert len(embeddings) == len(truth.models) and all(r["layer"] == expert["layer"] for r in embeddings)
    # What each run read lands in crawl_runs: predict reads the expert's one layer of every member, fit more.
    runs = {r["flow"]: r for r in Lake(lake).query(
        "SELECT flow, bytes_fetched, requests FROM crawl_runs WHERE flow LIKE 'probex%' AND status = 'completed'").to_pylist()}
    layer_bytes = Lake(lake).query("SELECT sum(data_end - data_begin) AS n FROM tensors WHERE name = ?", [expert["layer"]]).to_pylist()[0]["n"]
    assert runs["probex"]["bytes_fetched"] >= layer_bytes and runs["probex-fit"]["bytes_fetched"] > runs["probex"]["bytes_fetched"]
    assert fit["bytes_fetched"] == runs["probex-fit"]["bytes_fetched"] and predicted["bytes_fetched"] == runs["probex"]["bytes_fetched"]


def test_search_by_a_paraphrase_finds_models_trained_on_that_dataset(labelled):
    truth, lake = labelled
    name, dataset = sorted(truth.datasets.items())[0]
    hits = search_lake(Lake(lake), dataset.paraphrase, limit=3)
    assert all(name in truth.labels.get(h.repo_id, []) for h in hits)
    out = CliRunner().invoke(main, ["search", "--lake", lake, "--limit", "2", "--format", "csv", dataset.paraphrase])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("repo_id,score") and len(lines) == 3


def test_a_family_with_too_few_labelled_members_gets_no_expert(labelled):
    _, lake = labelled
    out = CliRunner().invoke(main, ["probex", "fit", "--lake", lake, "--min-labelled", "100", "--epochs", "1"])
    assert out.exit_code == 1
    assert "no expert:" in out.output and "needs at least 100" in out.output


def test_fit_and_predict_refuse_a_lake_without_families_or_model(tmp_path, flows):
    add_repo(tmp_path / "hub", "org/a", card="datasets: [org/x]\n")
    lake = str(tmp_path / "lake")
    crawl_flow(hub=str(tmp_path / "hub"), lake=lake, progress=False)
    with pytest.raises(LakeError, match="hubtree trees"):
        probex_fit_flow(lake=lake)
    for verb in (["probex", "predict", "--lake", lake], ["search", "--lake", lake, "anything"]):
        out = CliRunner().invoke(main, verb)
        assert out.exit_code == 1 and "no ProbeX model" in out.output and "Traceback" not in out.output


def test_labelled_zoo_keeps_descriptions_out_of_the_hub(labelled):
    truth, lake = labelled
    cards = " ".join(r["card_metadata"] or "" for r in Lake(lake).query("SELECT card_metadata FROM repos").to_pylist())
    assert all(d.description not in cards and d.paraphrase not in cards for d in truth.datasets.values())
    assert "datasets" in cards  # some cards name their datasets, by name only
    assert any(len(labels) > 1 for labels in truth.labels.values())  # multi-hot
    fine_tunes = [truth.models[r].train for r in truth.labels]
    assert len({t.lr for t in fine_tunes}) > 1 and len({t.steps for t in fine_tunes}) > 1  # the nuisance
