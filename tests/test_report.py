"""The report: an HTML page that a headless browser renders into a picture that is not blank."""
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from tests.hubs import add_repo


@pytest.fixture(scope="module")
def lake(tmp_path_factory, flows):
    root = tmp_path_factory.mktemp("hub")
    for i in range(4):
        add_repo(root, f"org/m{i}", card=f"base_model: org/m0\n" if i else "license: mit\n", seed=i)
    lake_dir = str(tmp_path_factory.mktemp("lake"))
    crawl_flow(hub=str(root), lake=lake_dir, progress=False)
    stats_flow(lake=lake_dir, progress=False)
    edges = [{"child_repo_id": "org/m0", "parent_repo_id": None, "family_id": 0, "source": "root", "confidence": None}]
    edges += [{"child_repo_id": f"org/m{i}", "parent_repo_id": "org/m0", "family_id": 0, "source": "declared" if i == 1 else "recovered",
               "confidence": 0.4 * i / 3 + 0.5} for i in (1, 2, 3)]
    families = [{"repo_id": f"org/m{i}", "revision": "r", "family_id": 0, "direction_rule": "kurtosis falls"} for i in range(4)]
    Lake(lake_dir).commit("trees", "t1", {
        "tree_edges": edges,
        "families": families,
    })
    return lake_dir


def test_report_has_every_section(lake, tmp_path):
    result = CliRunner().invoke(main, ["report", "--lake", lake, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "index.html").read_text()
    for section in ("Crawl health", "Model trees", "Layer statistics", "LoRA attacks", "family 0"):
        assert section in page
    assert page.count("<svg xmlns") == 5  # one tree, three histograms, alpha per layer
    assert "Legend" in page and "WeightWatcher 2-6" in page
    assert "hubtree lora --lake LAKE" in page  # the empty section says which verb fills it


def test_tree_verb_draws_declared_and_recovered_edges(lake, tmp_path):
    result = CliRunner().invoke(main, ["tree", "--lake", lake, "--family", "0", "--out", str(tmp_path / "t.svg")])
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "t.svg").read_text()
    assert svg.count("<line") == 3 and svg.count("stroke-dasharray") == 2 and "org/m3" in svg


def test_report_renders_in_headless_chromium(lake, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    image = pytest.importorskip("PIL.Image", reason="Pillow is in the test extra")
    page = CliRunner().invoke(main, ["report", "--lake", lake, "--out", str(tmp_path / "r")])
    assert page.exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
         (tmp_path / "r" / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100, "the screenshot is blank"
    assert sum(1 for p in pixels.getdata() if p < 200) > 10_000  # text, tables and bars, not a white page


def _screenshot(browser: str, page, shot, tmp_path, height: int = 1400) -> None:
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=180,
    )


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_tree_pages_stay_readable_at_scale(tmp_path, n):
    """The family page at 10, 100 and 1,000 models: the root on the first screen, the legend on
    the page, the missing-weights root marked, a drawing only while it is readable."""
    from tests.synthetic_forest import forest_lake

    lake = forest_lake(str(tmp_path / "lake"), n)
    page = tmp_path / "tree.html"
    result = CliRunner().invoke(main, ["tree", "--lake", lake.url, "--family", "0", "--out", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "Legend" in text and "org/base-missing (no weights)" in text
    assert ("<svg xmlns" in text) == (n <= 40)  # drawn when small; always the outline
    assert text.index("org/base-missing") < text.index("org/ft-0001")  # the root comes first
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    image = pytest.importorskip("PIL.Image", reason="Pillow is in the test extra")
    shot = tmp_path / "shot.png"
    _screenshot(browser, page, shot, tmp_path)
    pixels = image.open(shot).convert("L")
    assert pixels.size[0] <= 1280  # nothing wider than the window: the root is in view
    assert sum(1 for p in pixels.getdata() if p < 200) > 5_000
