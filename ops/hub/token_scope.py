"""Which hubs get the user's Hub token: the Hub, the user's HF_ENDPOINT, and hubs named for it.

A token is a credential for one service. hubtree talks to many endpoints (a mirror
given with ``--hub``, the hub each lake row was crawled from, a test server), so the
token saved by ``hf auth login`` or set as ``HF_TOKEN`` is sent only to:

* the Hugging Face Hub (``https://huggingface.co``);
* ``HF_ENDPOINT``, when the user set it (they pointed huggingface_hub there themselves);
* hubs listed in ``HUBTREE_TOKEN_HUBS`` (space- or comma-separated URLs), which the
  ``--token-for-hub URL`` option sets.

Even then, never over plain ``http://`` to a host other than loopback: the token would
cross the network in clear text. The decision is made where a hub's session headers are
built (``HttpHub``), so every request of that hub, listing or file range, follows it.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from urllib.parse import urlsplit

from huggingface_hub import get_token

HUB = "https://huggingface.co"
TOKEN_HUBS_ENV = "HUBTREE_TOKEN_HUBS"

logger = logging.getLogger(__name__)


def scoped_token(endpoint: str, token: str | bool | None = None) -> str | bool:
    """The token to send to ``endpoint`` (a hub's base URL or a file's URL on it), or False for none.

    ``token=None`` means the user's own (``HF_TOKEN`` or the saved login), sent only to a
    trusted endpoint; a token passed explicitly was meant for this endpoint. Either way,
    none goes over plain http to a host that is not loopback.
    """
    if token is False:
        return False
    if token is None or token is True:
        if not trusted(endpoint):
            return False
        token = get_token()
        if not token:
            return False
    if not _private_channel(endpoint):
        logger.warning("not sending the Hub token to %s: plain http to a host that is not this machine", endpoint)
        return False
    return token


def trusted(url: str) -> bool:
    """``url`` is on the Hub, on HF_ENDPOINT if the user set it, or on a hub in HUBTREE_TOKEN_HUBS."""
    hubs = [HUB, os.environ.get("HF_ENDPOINT", "")] + os.environ.get(TOKEN_HUBS_ENV, "").replace(",", " ").split()
    here, path = origin(url)
    return any(here == o and (path + "/").startswith(p + "/") for o, p in map(origin, filter(None, hubs)))


def add_token_hub(url: str) -> None:
    """Trust ``url`` for this process and the workers it starts (``--token-for-hub``)."""
    hubs = os.environ.get(TOKEN_HUBS_ENV, "").replace(",", " ").split()
    os.environ[TOKEN_HUBS_ENV] = " ".join(dict.fromkeys([*hubs, url]))


def origin(url: str) -> tuple[tuple[str, str, int | None], str]:
    """((scheme, host, port), path): ``https://hub`` and ``https://hub:443/`` are one endpoint."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"https": 443, "http": 80}.get(scheme)
    except ValueError:  # a port that is not a number: trust nothing
        port = -1
    return (scheme, (parts.hostname or "").lower(), port), parts.path.rstrip("/")


def _private_channel(endpoint: str) -> bool:
    """https, or http to this machine."""
    parts = urlsplit(endpoint)
    if parts.scheme.lower() == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
