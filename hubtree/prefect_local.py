"""Which Prefect API hubtree talks to, and hubtree's own local Prefect server.

Prefect keeps its state (deployments, runs, schedules) in one database per PREFECT_HOME,
by default ``~/.prefect``, shared by every Prefect user of the machine. hubtree keeps its own:
``PREFECT_HOME`` is ``$HUBTREE_HOME/prefect`` (default ``~/.hubtree/prefect``) unless
``PREFECT_API_URL`` names a server. Schedules need a server that stays up (Prefect's
temporary "ephemeral" API has no scheduler), so ``hubtree schedule`` starts
``prefect server start`` on 127.0.0.1 with that home, or reuses the one already running;
``server.json`` there says where it listens, and every other verb reports to it while it is up.

Call :func:`configure` before anything imports Prefect: Prefect reads these settings at import.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubtree.errors import HubtreeError

SERVER_START_TIMEOUT_S = 180  # `prefect server start` takes 15-25 s on a 2-core machine


class PrefectServerError(HubtreeError):
    """The local Prefect server did not come up; its log says why."""


def hubtree_home() -> Path:
    return Path(os.environ.get("HUBTREE_HOME") or Path.home() / ".hubtree").expanduser()


def prefect_home() -> Path:
    return hubtree_home() / "prefect"


def _state_file() -> Path:
    return prefect_home() / "server.json"


def healthy(api_url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url`` (…/api)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as answer:
            return answer.status == 200
    except OSError:
        return False


def running_server() -> str | None:
    """The API URL of hubtree's local server when one answers, else None."""
    try:
        url = json.loads(_state_file().read_text())["api_url"]
    except (OSError, ValueError, KeyError):
        return None
    return url if healthy(url) else None


def configure() -> str | None:
    """Point Prefect at the right API before it is imported; returns the API URL or None (ephemeral).

    ``PREFECT_API_URL`` set: that server. Else hubtree's home, and its local server when one runs,
    so flows report to it instead of starting a temporary API (5-7 s) of their own.
    """
    if "prefect" in sys.modules:  # already configured (a test harness, or a second call)
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    prefect_home().mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(prefect_home())
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    url = running_server()
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url


@contextmanager
def foreground() -> Iterator[None]:
    """Around a flow a verb runs in its own process: no flow-run heartbeats, unless the user asks for them.

    Prefect 3.8 beats every 180 s from a thread that sleeps in 1 s steps and is joined when the
    flow ends, and its first beat opens the events websocket that is drained at exit: 0.6-0.7 s
    of every short verb (``hubtree trees``). Heartbeats only let a server notice a run whose
    process died; a foreground run's terminal says so, and its ``crawl_runs`` row stays
    ``running``. Scheduled runs (``hubtree schedule``) keep them. PREFECT_FLOWS_HEARTBEAT_FREQUENCY
    set: Prefect's own setting applies.
    """
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@dataclass
class LocalServer:
    """``prefect server start`` under hubtree's home, started here or found running."""

    api_url: str
    process: subprocess.Popen | None  # None: it was running already, and stays up after us

    def stop(self) -> None:
        """Stop the server if this process started it (its whole process group, quickly)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        _state_file().unlink(missing_ok=True)


def ensure_server(echo=print) -> LocalServer:
    """Reuse hubtree's running local server, or start one and wait until it answers."""
    url = running_server()
    if url:
        return LocalServer(url, None)
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # Prefect's scheduler creates a new deployment's runs on its next loop (every 60 s by default),
    # so a `* * * * *` schedule could wait two minutes for its first run; every 10 s costs nothing here.
    env.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "10")
    env.pop("PREFECT_API_URL", None)
    echo(f"starting a local Prefect server on 127.0.0.1:{port} (state in {home}, log in {log})")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = LocalServer(url, process)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise PrefectServerError(f"the local Prefect server did not start; see {log}")
        time.sleep(0.5)
    _state_file().write_text(json.dumps({"api_url": url, "pid": process.pid}))
    return server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
