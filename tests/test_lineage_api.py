"""One model's lineage from the lake (CLI and Python API), the notebook API, and tree exports."""
import json
import xml.etree.ElementTree as ET

import pyarrow as pa
import pytest
from click.testing import CliRunner

import hubtree
from hubtree.cli import main
from hubtree.errors import HubtreeError
from hubtree.lake import Lake
from hubtree.ops.trees.lineage import lineage

# base -> ft1 -> ft1-q ; base -> ft2 ; other family: solo
EDGES = [
    ("org/base", None, 0, "root", None, None),
    ("org/ft1", "org/base", 0, "declared", "finetune", 1.0),
    ("org/ft1-q", "org/ft1", 0, "recovered", None, 0.8),
    ("org/ft2", "org/base", 0, "recovered", None, 0.6),
    ("org/solo", None, 1, "root", None, None),
]
RULE = "kurtosis falls parent -> child (from 1 declared edge in this family)"


@pytest.fixture
def lake(tmp_path):
    the_lake = Lake(str(tmp_path / "lake"))
    edges = [{"child_repo_id": c, "parent_repo_id": p, "family_id": f, "source": s, "relation": r, "confidence": k}
             for c, p, f, s, r, k in EDGES]
    families = [{"repo_id": c, "revision": "x", "family_id": f, "assigned_by": "weights", "direction_rule": RULE if f == 0 else "default"}
                for c, _, f, *_ in EDGES]
    the_lake.commit("trees", "t", {"tree_edges": edges, "families": families})
    return the_lake.url


def test_lineage_walks_up_to_the_root_and_down_to_every_descendant():
    rows = [{"child_repo_id": c, "parent_repo_id": p, "source": s, "relation": r, "confidence": k} for c, p, _, s, r, k in EDGES]
    found = lineage(rows, "org/ft1")
    assert found.root == "org/base"
    assert [(e.parent, e.depth, e.source, e.relation) for e in found.ancestors] == [("org/base", 1, "declared", "finetune")]
    assert [(e.child, e.depth, e.confidence) for e in found.descendants] == [("org/ft1-q", 1, 0.8)]
    from_leaf = lineage(rows, "org/ft1-q")
    assert [e.parent for e in from_leaf.ancestors] == ["org/ft1", "org/base"] and not from_leaf.descendants
    assert [e.child for e in lineage(rows, "org/base").descendants] == ["org/ft1", "org/ft2", "org/ft1-q"]


def test_a_cycle_stops_the_walk():
    rows = [{"child_repo_id": a, "parent_repo_id": b, "source": "recovered"} for a, b in (("a", "b"), ("b", "a"))]
    assert [e.parent for e in lineage(rows, "a").ancestors] == ["b"]


def test_lineage_cli_table_and_json(lake):
    table = CliRunner().invoke(main, ["lineage", "org/ft1-q", "--lake", lake])
    assert table.exit_code == 0, table.output
    assert "root org/base" in table.output and RULE in table.output and "recovered" in table.output
    as_json = json.loads(CliRunner().invoke(main, ["lineage", "org/ft1", "--lake", lake, "--format", "json"]).output)
    assert as_json["direction_rule"] == RULE and as_json["family_id"] == 0
    assert as_json["ancestors"] == [{"child": "org/ft1", "parent": "org/base", "source": "declared", "relation": "finetune",
                                     "confidence": 1.0, "depth": 1}]
    assert [d["child"] for d in as_json["descendants"]] == ["org/ft1-q"]


def test_an_unknown_repo_is_one_line(lake):
    result = CliRunner().invoke(main, ["lineage", "org/typo", "--lake", lake])
    assert result.exit_code == 1 and "no repo 'org/typo'" in result.output and "Traceback" not in result.output


def test_the_python_api(lake):
    con = hubtree.open_lake(lake)
    assert con.execute("SELECT count(*) FROM tree_edges").fetchall() == [(5,)]
    table = hubtree.query(lake, "SELECT child_repo_id FROM tree_edges WHERE family_id = ? ORDER BY 1", [1])
    assert isinstance(table, pa.Table) and table.column(0).to_pylist() == ["org/solo"]
    assert hubtree.lineage(lake, "org/ft2").root == "org/base"
    with pytest.raises(HubtreeError, match="no lake"):
        hubtree.open_lake(lake + "-missing")
    pandas = pytest.importorskip("pandas", reason="pandas is optional (pip install pandas)")
    frame = hubtree.query_pandas(lake, "SELECT * FROM families")
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 5


def test_tree_by_repo_draws_and_exports(lake, tmp_path):
    page = tmp_path / "t.html"
    assert CliRunner().invoke(main, ["tree", "--lake", lake, "--repo", "org/ft2", "--out", str(page)]).exit_code == 0
    assert "Legend" in page.read_text() and "org/ft1-q" in page.read_text()
    exported = tmp_path / "t.json"
    assert CliRunner().invoke(main, ["tree", "--lake", lake, "--family", "0", "--out", str(exported)]).exit_code == 0
    graph = json.loads(exported.read_text())
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {("org/base", "org/ft1"), ("org/ft1", "org/ft1-q"), ("org/base", "org/ft2")}
    graphml = tmp_path / "t.graphml"
    assert CliRunner().invoke(main, ["tree", "--lake", lake, "--repo", "org/base", "--out", str(graphml)]).exit_code == 0
    edges = ET.parse(graphml).getroot().findall(".//{http://graphml.graphdrawing.org/xmlns}edge")
    assert len(edges) == 3
