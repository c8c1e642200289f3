"""The Hub token goes to the Hub, to HF_ENDPOINT and to hubs named for it; nowhere else, never in clear text."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hubserver_fixture import hub_server, no_hf_token, tiny_hub  # noqa: F401 (fixtures)

from hubtree.ops.hub.http_file import HttpFile
from hubtree.ops.hub.http_hub import HttpHub
from hubtree.ops.hub.local import LocalHub
from hubtree.ops.hub.source import RepoQuery
from hubtree.ops.hub.token_scope import TOKEN_HUBS_ENV, scoped_token
from hubtree.ops.weights.safetensors_reader import read_header

TOKEN = "hf_scope_test_0123456789"
pytestmark = pytest.mark.usefixtures("no_hf_token")


@pytest.fixture
def user_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv(TOKEN_HUBS_ENV, raising=False)


def test_the_token_goes_only_to_trusted_endpoints_over_a_private_channel(user_token, monkeypatch):
    assert scoped_token("https://huggingface.co") == TOKEN
    assert scoped_token("https://huggingface.co:443/org/m/resolve/abc/model.safetensors") == TOKEN
    for elsewhere in ("https://huggingface.co.evil.example", "http://huggingface.co", "https://mirror.example", "http://127.0.0.1:8765"):
        assert scoped_token(elsewhere) is False, elsewhere
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:8765")
    assert scoped_token("http://127.0.0.1:8765/api/models") == TOKEN
    assert scoped_token("http://127.0.0.1:8766") is False
    monkeypatch.setenv(TOKEN_HUBS_ENV, "https://mirror.example/hub, http://10.1.2.3:8765")
    assert scoped_token("https://mirror.example/hub/org/m/resolve/x/f") == TOKEN
    assert scoped_token("https://mirror.example/hubx") is False
    assert scoped_token("http://10.1.2.3:8765") is False  # trusted, but plain http off this machine
    assert scoped_token("http://10.1.2.3:8765", token="hf_explicit") is False
    assert scoped_token("http://localhost:9", token="hf_explicit") == "hf_explicit"


def test_a_plain_hub_sees_no_token_and_hf_endpoint_does(tiny_hub, hub_server, user_token, monkeypatch):
    server = hub_server(tiny_hub)
    ref = next(iter(LocalHub(tiny_hub).list_repos(RepoQuery(search="org/base"))))

    def read_everything(hub: HttpHub) -> None:
        list(hub.list_repos())
        read_header(hub.open_file(ref, hub.repo_record(ref).files[-1].path))
        HttpFile(f"{server.url}/{ref.repo_id}/resolve/{ref.revision}/config.json").read_prefix(10)

    read_everything(HttpHub(server.url))
    assert server.faults.authorization and set(server.faults.authorization) == {None}
    server.faults.authorization.clear()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    read_everything(HttpHub(server.url))
    assert set(server.faults.authorization) == {f"Bearer {TOKEN}"}


@pytest.mark.slow
def test_crawl_and_stats_from_the_cli_send_the_token_only_where_it_belongs(tiny_hub, hub_server, tmp_path, prefect_server):
    """The CLI end to end: its Ray workers decide too (they read HF_TOKEN themselves)."""
    from prefect.settings import PREFECT_API_URL

    server = hub_server(tiny_hub)
    env = {**os.environ, "HF_TOKEN": TOKEN, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("HF_ENDPOINT", None)
    env.pop(TOKEN_HUBS_ENV, None)

    def hubtree(*args: str, **extra: str) -> None:
        out = subprocess.run([sys.executable, "-m", "hubtree.cli", *args], env={**env, **extra}, capture_output=True, text=True)
        assert out.returncode in (0, 3), out.stdout + out.stderr  # 3: done, some repos failed (the gated one)

    hubtree("crawl", "--hub", server.url, "--lake", str(tmp_path / "plain"))
    hubtree("stats", "--lake", str(tmp_path / "plain"))
    seen = list(server.faults.authorization)
    assert len(seen) > 5 and set(seen) == {None}  # listing pages and resolves; file bytes go to the CDN
    server.faults.authorization.clear()
    server.faults.requests.clear()
    hubtree("crawl", "--lake", str(tmp_path / "endpoint"), "--limit", "2", HF_ENDPOINT=server.url)
    # hubtree's own requests (listing, model info, file ranges); huggingface_hub 2.x also asks
    # HF_ENDPOINT for /api/agent-harnesses by itself, without a token.
    ours = [auth for (_, path, _), auth in zip(server.faults.requests, server.faults.authorization)
            if path.startswith("/api/models") or "/resolve/" in path]
    assert len(ours) >= 3 and set(ours) == {f"Bearer {TOKEN}"}  # a listing page and each weights file's resolve
