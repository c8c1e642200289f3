"""Running the server: ``serve`` blocks (``hubtree hub serve``), ``running`` runs it in threads for a ``with`` block.

Either way two origins start in one process, as the Hub has two: the hub itself (API,
resolvers, rate limits) and the CDN its resolvers redirect LFS files to, on its own port.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from hubtree.hub_server.app import DEFAULT_PAGE_SIZE, make_app
from hubtree.hub_server.cdn import DEFAULT_TTL_S, Cdn, make_cdn_app
from hubtree.hub_server.faults import FaultInjector, FaultSpec
from hubtree.hub_server.limits import HubCounters, RateLimits
from hubtree.hub_server.served import ServedRepo



@dataclass
class RunningServer:
    """A server running in background threads: its URLs, counters, fault injector's counts and request log.

    ``counters`` holds requests per bucket, 429s, CDN requests and bytes (see ``HubCounters``).
    """

    url: str
    faults: FaultInjector
    app: Starlette = field(repr=False)
    cdn_url: str = ""
    counters: HubCounters = field(default_factory=HubCounters)
    cdn: Cdn | None = field(default=None, repr=False)


def serve(
    root: Path | None,
    host: str = "127.0.0.1",
    port: int = 0,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    limits: RateLimits | None = None,
    cdn_port: int = 0,
    url_ttl_s: float = DEFAULT_TTL_S,
    computed: Mapping[str, ServedRepo] | None = None,
    token: str | None = None,
) -> None:
    """Serve until interrupted (``hubtree hub serve``): the hub on ``port``, its CDN on ``cdn_port`` (0: a free port)."""
    cdn, counters = Cdn(ttl_s=url_ttl_s), HubCounters()
    hub_server = uvicorn.Server(uvicorn.Config(make_app(root, records, faults, page_size, limits, cdn, counters, computed=computed, token=token), host=host, port=port, log_level="info"))
    cdn_server = uvicorn.Server(uvicorn.Config(make_cdn_app(cdn, counters), host=host, port=cdn_port, log_level="warning"))

    async def both() -> None:
        cdn_task = asyncio.create_task(cdn_server.serve())
        while not cdn_server.started:
            await asyncio.sleep(0.01)
        cdn.base_url = f"http://{host}:{_port(cdn_server)}"
        print(f"hub CDN (signed URLs, {url_ttl_s:g} s) on {cdn.base_url}", flush=True)
        await hub_server.serve()
        cdn_server.should_exit = True
        await cdn_task

    asyncio.run(both())


@contextmanager
def running(
    root: Path | None,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: RateLimits | None = None,
    url_ttl_s: float = DEFAULT_TTL_S,
    clock: Callable[[], float] = time.time,
    computed: Mapping[str, ServedRepo] | None = None,
    token: str | None = None,
) -> Iterator[RunningServer]:
    """Run the hub and its CDN in daemon threads on free ports for the ``with`` block, then stop them.

    ``clock`` (epoch seconds) drives URL expiry and rate-limit windows, so a test can pass
    time without waiting.

    Example::

        with running(hub_dir, page_size=3, limits=RateLimits(api=5, resolvers=5, window_s=10)) as server:
            hub = HttpHub(server.url)
            server.counters["resolvers"], server.counters["cdn_bytes"]
    """
    cdn, counters = Cdn(ttl_s=url_ttl_s, clock=clock), HubCounters()
    app = make_app(root, records, faults, page_size, limits, cdn, counters, computed=computed, token=token)
    with ExitStack() as stack:
        cdn.base_url = stack.enter_context(_thread_server(make_cdn_app(cdn, counters), host, 0, "hub-cdn"))
        url = stack.enter_context(_thread_server(app, host, port, "hub-server"))
        yield RunningServer(url, app.state.faults, app, cdn.base_url, counters, cdn)


@contextmanager
def _thread_server(app: Starlette, host: str, port: int, name: str) -> Iterator[str]:
    # A short graceful shutdown: a stalled request must not hold the test run.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the {name} did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{_port(server)}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _port(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]
