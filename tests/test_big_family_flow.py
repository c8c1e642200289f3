"""Big-model mode end to end: a few served 7B-shaped repos are crawled, sampled and land in trees."""
import pytest

from hubtree.hub_server import running
from hubtree.hub_server.big import big_family_repos
from hubtree.lake import Lake
from hubtree.ops.trees.mother import TrueTree, evaluate
from hubtree.ops.zoo.big_family import BigFamily
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import lake_edges, trees_flow


@pytest.mark.slow
def test_served_big_family_is_crawled_sampled_and_treed_under_a_thousandth_of_its_bytes(tmp_path, flows):
    family = BigFamily(4, seed=2)
    lake = str(tmp_path / "lake")
    with running(None, computed=big_family_repos(family)) as server:
        crawl = crawl_flow(hub=server.url, lake=lake, progress=False)
        stats = stats_flow(lake=lake, progress=False)
    assert crawl["repos_crawled"] == 4 and stats["failed"] == 0
    assert crawl["weights_bytes"] == 4 * 13_476_865_064  # two bf16 shards of Llama-2-7B's 291 tensors
    assert (crawl["bytes_fetched"] + stats["bytes_fetched"]) / crawl["weights_bytes"] < 0.001
    the_lake = Lake(lake)
    assert the_lake.query("SELECT count(*) AS n FROM tensors").to_pylist() == [{"n": 4 * 291}]
    assert the_lake.query("SELECT count(*) AS n FROM layer_sketches WHERE row_end - row_begin = 8").to_pylist() == [{"n": 4 * 128}]
    trees_flow(lake=lake)
    truth = TrueTree(family.truth(), dict.fromkeys(family.truth(), "llama"))
    edges = lake_edges(the_lake)
    assert {e.child for e in edges} == set(family.truth()) and len({e.family for e in edges}) == 1
    assert evaluate(edges, truth, exclude_declared=False).undirected_acc == 1.0
