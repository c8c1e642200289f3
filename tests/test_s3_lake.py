"""A lake on object storage: the same crawl and SQL against a real S3-compatible server on 127.0.0.1."""
import socket

import pytest

from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from tests.hubs import add_repo

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra: pip install -e '.[test]'")
pytest.importorskip("s3fs", reason="s3fs is in the s3 and test extras")


@pytest.fixture
def s3(monkeypatch, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HUBTREE_CATALOG", f"sqlite:{tmp_path}/catalog.sqlite")  # a SQLite file cannot live on S3
    import boto3
    import fsspec

    boto3.client("s3").create_bucket(Bucket="hubtree")
    fsspec.filesystem("s3").invalidate_cache()
    yield "s3://hubtree/lake"
    server.stop()


def test_crawl_into_s3_lake_and_query_it(tmp_path, s3, flows):
    for i in range(4):
        add_repo(tmp_path / "hub", f"org/m{i}", card=f"base_model: org/m{i - 1}\n" if i else "license: mit\n", seed=i)
    first = crawl_flow(hub=str(tmp_path / "hub"), lake=s3, progress=False)
    assert first["status"] == "completed" and first["repos_crawled"] == 4
    again = crawl_flow(hub=str(tmp_path / "hub"), lake=s3, progress=False)
    assert again["repos_skipped"] == 4 and again["repos_crawled"] == 0
    lake = Lake(s3)
    assert not lake.is_local
    assert lake.query("SELECT count(*) AS n FROM tensors_all").to_pylist() == [{"n": 12}]
    edges = lake.query("SELECT repo_id, parent_repo_id FROM declared_edges WHERE source = 'card' ORDER BY 1").to_pylist()
    assert edges == [{"repo_id": f"org/m{i}", "parent_repo_id": f"org/m{i - 1}"} for i in (1, 2, 3)]
    assert lake.fs.glob("hubtree/lake/data/**/*.parquet")  # the data are Parquet on S3


def test_an_s3_lake_without_a_catalog_says_what_to_do(s3, monkeypatch):
    from hubtree.errors import LakeError

    monkeypatch.delenv("HUBTREE_CATALOG")
    with pytest.raises(LakeError, match="HUBTREE_CATALOG"):
        Lake(s3)
