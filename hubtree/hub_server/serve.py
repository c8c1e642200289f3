"""Running the server: ``serve`` blocks (``hubtree hub serve``), ``running`` runs it in a thread for a ``with`` block."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from hubtree.hub_server.app import DEFAULT_PAGE_SIZE, make_app
from hubtree.hub_server.faults import FaultInjector, FaultSpec
from hubtree.hub_server.served import ServedRepo


@dataclass
class RunningServer:
    """A server running in a background thread: its base URL, and its fault injector's counts and request log."""

    url: str
    faults: FaultInjector
    app: Starlette = field(repr=False)


def serve(
    root: Path | None,
    host: str = "127.0.0.1",
    port: int = 0,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    computed: Mapping[str, ServedRepo] | None = None,
    token: str | None = None,
) -> None:
    """Serve until interrupted (``hubtree hub serve``); ``port=0`` picks a free port, which uvicorn logs."""
    uvicorn.run(make_app(root, records, faults, page_size, computed, token=token), host=host, port=port, log_level="info")


@contextmanager
def running(
    root: Path | None,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    host: str = "127.0.0.1",
    port: int = 0,
    computed: Mapping[str, ServedRepo] | None = None,
    token: str | None = None,
) -> Iterator[RunningServer]:
    """Run the server in a daemon thread on a free port for the ``with`` block, then stop it.

    Example::

        with running(hub_dir, page_size=3) as server:
            hub = HttpHub(server.url)
    """
    app = make_app(root, records, faults, page_size, computed, token=token)
    # A short graceful shutdown: a stalled request must not hold the test run.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hub-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the hub server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://{host}:{bound_port}", app.state.faults, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
