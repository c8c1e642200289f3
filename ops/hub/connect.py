"""Pick the hub source for what the user typed: a folder, or a Hub-compatible URL."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hubtree.errors import HubError, HubUnavailableError

if TYPE_CHECKING:  # the sources import torch (14 s on a busy machine): not for check_hub's fast errors
    from hubtree.ops.hub.source import HubSource

DEFAULT_HUB = "https://huggingface.co"


def open_hub(hub: str | None, budget_share: float = 1.0) -> HubSource:
    """``http(s)://...`` is a Hub-compatible endpoint (default: the Hugging Face Hub); anything else a local folder.

    A remote hub's request budget per window comes from HUBTREE_API_BUDGET and
    HUBTREE_RESOLVE_BUDGET (default: the free tier's 1,000 and 5,000 per 5 minutes);
    ``budget_share`` is this process's part of it when several workers crawl at once,
    so that together they stay under the limit. HUBTREE_HTTP_TIMEOUT_S bounds each
    request (default 30 s); a request that times out is retried like a 5xx.
    """
    hub = hub or DEFAULT_HUB
    if not hub.startswith(("http://", "https://")):
        from hubtree.ops.hub.local import LocalHub

        return LocalHub(hub)
    _refuse_offline(hub)
    # Imported lazily: huggingface_hub and httpx are needed for remote hubs only.
    from hubtree.ops.hub.http_hub import HttpHub
    from hubtree.ops.hub.retry import API, FREE_TIER, RESOLVE, RequestBudget, RetryPolicy

    totals = {
        API: int(os.environ.get("HUBTREE_API_BUDGET", FREE_TIER[API])),
        RESOLVE: int(os.environ.get("HUBTREE_RESOLVE_BUDGET", FREE_TIER[RESOLVE])),
    }
    limits = {kind: max(1, int(total * budget_share)) for kind, total in totals.items()}
    timeout = float(os.environ.get("HUBTREE_HTTP_TIMEOUT_S", 30))
    return HttpHub(hub, policy=RetryPolicy(budget=RequestBudget(limits=limits), timeout=timeout))


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
