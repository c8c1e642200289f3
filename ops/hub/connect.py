"""Pick the hub source for what the user typed: a folder, or a Hub-compatible URL."""
from __future__ import annotations

import os

from hubtree.ops.hub.source import HubSource

DEFAULT_HUB = "https://huggingface.co"


def open_hub(hub: str | None, budget_share: float = 1.0) -> HubSource:
    """``http(s)://...`` is a Hub-compatible endpoint (default: the Hugging Face Hub); anything else a local folder.

    A remote hub's request budget per window comes from HUBTREE_API_BUDGET and
    HUBTREE_RESOLVE_BUDGET (default: the free tier's 1,000 and 5,000 per 5 minutes);
    ``budget_share`` is this process's part of it when several workers crawl at once,
    so that together they stay under the limit. HUBTREE_HTTP_TIMEOUT_S bounds each
    request (default 30 s); a request that times out is retried like a 5xx, up to
    HUBTREE_HTTP_RETRIES times (default 6) with backoff from HUBTREE_HTTP_BACKOFF_S
    (default 1 s, doubling): about a minute of a hub not answering before a file counts
    as failed (and its repo is crawled again on the next run).
    """
    hub = hub or DEFAULT_HUB
    if not hub.startswith(("http://", "https://")):
        from hubtree.ops.hub.local import LocalHub

        return LocalHub(hub)
    # Imported lazily: huggingface_hub and httpx are needed for remote hubs only.
    from hubtree.ops.hub.http_hub import HttpHub
    from hubtree.ops.hub.retry import API, FREE_TIER, RESOLVE, RequestBudget, RetryPolicy

    totals = {
        API: int(os.environ.get("HUBTREE_API_BUDGET", FREE_TIER[API])),
        RESOLVE: int(os.environ.get("HUBTREE_RESOLVE_BUDGET", FREE_TIER[RESOLVE])),
    }
    limits = {kind: max(1, int(total * budget_share)) for kind, total in totals.items()}
    policy = RetryPolicy(
        budget=RequestBudget(limits=limits),
        timeout=float(os.environ.get("HUBTREE_HTTP_TIMEOUT_S", 30)),
        max_retries=int(os.environ.get("HUBTREE_HTTP_RETRIES", RetryPolicy.max_retries)),
        base_delay_s=float(os.environ.get("HUBTREE_HTTP_BACKOFF_S", RetryPolicy.base_delay_s)),
    )
    return HttpHub(hub, policy=policy)
