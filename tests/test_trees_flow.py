"""The trees flow on a trained tiny zoo: families and edges in the lake, scored by eval-trees."""
import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.lake import Lake
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow
from tests.hubs import crawled_zoo


@pytest.fixture(scope="module")
def zoo_lake(tmp_path_factory, flows):
    out = tmp_path_factory.mktemp("zoo")
    lake = crawled_zoo(out, seed=7)
    stats_flow(lake=lake, layers="self_attn", progress=False)
    return out, lake


def test_trees_from_weights_alone_are_scored_against_the_truth(zoo_lake):
    out, lake = zoo_lake
    summary = trees_flow(lake=lake, use_declared=False)
    assert summary["status"] == "completed" and summary["families"] >= 3
    the_lake = Lake(lake)
    edges = the_lake.query("SELECT * FROM tree_edges").to_pylist()
    assert {e["source"] for e in edges} <= {"recovered", "root", "duplicate"}
    assert all(0 <= e["confidence"] <= 1 for e in edges if e["source"] == "recovered")
    assert all(e["distance"] > 0 for e in edges if e["source"] == "recovered")  # what MoTHer priced the edge at
    assert all(e["distance"] is None for e in edges if e["source"] != "recovered")
    rules = the_lake.query("SELECT DISTINCT direction_rule FROM families WHERE family_id >= 0").column(0).to_pylist()
    assert all(rules), "every family says which direction rule it got"
    result = CliRunner().invoke(main, ["eval-trees", "--lake", lake, "--truth", str(out / "truth.json")])
    assert result.exit_code == 0, result.output
    directed = float(result.output.split("directed accuracy:")[1].split("%")[0])
    assert directed >= 80.0, result.output


def test_declared_edges_are_kept_and_marked(zoo_lake):
    out, lake = zoo_lake
    trees_flow(lake=lake, use_declared=True)
    the_lake = Lake(lake)
    declared = {(r["repo_id"], r["parent_repo_id"]) for r in the_lake.query(
        "SELECT repo_id, parent_repo_id FROM declared_edges WHERE repo_id IN (SELECT child_repo_id FROM tree_edges)").to_pylist()}
    kept = {(r["child_repo_id"], r["parent_repo_id"]) for r in the_lake.query(
        "SELECT * FROM tree_edges WHERE source = 'declared'").to_pylist()}
    assert declared and declared <= kept
    assert the_lake.query("SELECT count(DISTINCT run_id) AS n FROM tree_edges").to_pylist() == [{"n": 1}]  # the latest run only
