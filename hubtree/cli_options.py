"""What several verbs' modules share: lake locations made absolute, and ``--token-for-hub``."""
from __future__ import annotations

from pathlib import Path

import click


def absolute(location: str) -> str:
    """A local lake path made absolute (flows may run elsewhere: a scheduled run, a Ray worker); URLs as given."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _trust_hub(ctx: click.Context, param: click.Parameter, urls: tuple[str, ...]) -> None:
    """``--token-for-hub URL``: this process and the Ray workers it starts may send HF_TOKEN there."""
    from hubtree.ops.hub.token_scope import add_token_hub

    for url in urls:
        add_token_hub(url)


token_for_hub = click.option(
    "--token-for-hub", "token_hubs", multiple=True, expose_value=False, callback=_trust_hub, metavar="URL",
    help="Also send HF_TOKEN to this hub (repeatable). By default only https://huggingface.co and HF_ENDPOINT get it.",
)
