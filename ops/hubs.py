"""Pick the hub source for what the user typed: a folder, or a Hub-compatible URL."""
from __future__ import annotations

from hubtree.ops.hub_source import HubSource

DEFAULT_HUB = "https://huggingface.co"


def open_hub(hub: str | None) -> HubSource:
    """``http(s)://...`` is a Hub-compatible endpoint (default: the Hugging Face Hub); anything else a local folder."""
    hub = hub or DEFAULT_HUB
    if hub.startswith(("http://", "https://")):
        from hubtree.ops.http_hub import HttpHub  # imported lazily: huggingface_hub is only needed for remote hubs

        return HttpHub(hub)
    from hubtree.ops.local_hub import LocalHub

    return LocalHub(hub)
