"""One place that changes torch's intra-op thread count, and always puts it back."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, the caller's restored after.

    The setting is process-wide: torch work on other Python threads meanwhile runs with ``n`` too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
