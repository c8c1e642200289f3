"""Pick the hub source for what the user typed: a folder, or a Hub-compatible URL."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hubtree.errors import HubError, HubUnavailableError

if TYPE_CHECKING:  # the sources import torch (14 s on a busy machine): not for check_hub's fast errors
    from hubtree.ops.hub.source import HubSource

DEFAULT_HUB = "https://huggingface.co"


def open_hub(hub: str | None) -> HubSource:
    """``http(s)://...`` is a Hub-compatible endpoint (default: the Hugging Face Hub); anything else a local folder.

    A remote hub's request budget per 5-minute window is its tier's (HUBTREE_HUB_TIER:
    ``anonymous``, ``free`` or ``pro``; default ``free`` with a token, ``anonymous``
    without), unless HUBTREE_API_BUDGET / HUBTREE_RESOLVE_BUDGET set a bucket's quota;
    the hub's own RateLimit headers then lower it where they say less is left. Inside a
    Ray cluster every worker shares one budget per hub (a named actor); outside, the
    process has its own. HUBTREE_HTTP_TIMEOUT_S bounds each request (default 30 s); a
    request that times out is retried like a 5xx. Timeouts and 5xx retry up to
    HUBTREE_HTTP_RETRIES times (default 6) with backoff from HUBTREE_HTTP_BACKOFF_S
    (default 1 s, doubling): about a minute of a hub not answering before a file counts
    as failed (and its repo is crawled again on the next run).
    """
    hub = hub or DEFAULT_HUB
    if not hub.startswith(("http://", "https://")):
        from hubtree.ops.hub.local import LocalHub

        return LocalHub(hub)
    _refuse_offline(hub)
    # Imported lazily: huggingface_hub, httpx and Ray are needed for remote hubs only.
    import ray
    from huggingface_hub import get_token

    from hubtree.ops.hub.http_hub import HttpHub
    from hubtree.ops.hub.retry import API, RESOLVE, RequestBudget, RetryPolicy, shared_budget, tier_limits

    limits = tier_limits(os.environ.get("HUBTREE_HUB_TIER") or ("free" if get_token() else "anonymous"))
    for kind, variable in ((API, "HUBTREE_API_BUDGET"), (RESOLVE, "HUBTREE_RESOLVE_BUDGET")):
        if os.environ.get(variable):
            limits[kind] = int(os.environ[variable])
    budget = shared_budget(hub, limits) if ray.is_initialized() else RequestBudget(limits=limits)
    timeout = float(os.environ.get("HUBTREE_HTTP_TIMEOUT_S", 30))
    policy = RetryPolicy(
        budget=budget,
        timeout=timeout,
        max_retries=int(os.environ.get("HUBTREE_HTTP_RETRIES", RetryPolicy.max_retries)),
        base_delay_s=float(os.environ.get("HUBTREE_HTTP_BACKOFF_S", RetryPolicy.base_delay_s)),
    )
    return HttpHub(hub, policy=policy)


def check_hub(hub: str | None) -> None:
    """Fail in one line, before any work starts, when ``hub`` cannot be read at all:
    a folder that is not there, offline mode for a URL, or nothing listening at the URL."""
    hub = hub or DEFAULT_HUB
    if not hub.startswith(("http://", "https://")):
        if not os.path.isdir(hub):
            raise HubError(f"no hub folder at {hub}: give a folder in Hub layout (e.g. `hubtree zoo DIR` makes DIR/hub) or a hub URL")
        return
    _refuse_offline(hub)
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(hub)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=float(os.environ.get("HUBTREE_HTTP_TIMEOUT_S", 30))).close()
    except ConnectionRefusedError:
        raise HubUnavailableError(f"{hub}: connection refused; is the hub running at that address? Check --hub or HF_ENDPOINT") from None
    except OSError as err:
        raise HubUnavailableError(f"{hub}: cannot connect ({err}); check --hub or HF_ENDPOINT, and the network") from None


def _refuse_offline(hub: str) -> None:
    """huggingface_hub refuses every request in offline mode: say so once, not per repo."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(f"HF_HUB_OFFLINE is set, so {hub} cannot be reached: unset it, or crawl a local folder or mirror (--hub PATH)")
