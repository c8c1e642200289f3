"""hubtree: model hubs read as data. From Python: ``open_lake``, ``query``, ``query_pandas``, ``lineage``
(see hubtree.api); loaded on first use, so ``hubtree --help`` does not pay for DuckDB."""

__all__ = ["open_lake", "query", "query_pandas", "lineage"]


def __getattr__(name: str):
    if name in __all__:
        from hubtree import api

        return getattr(api, name)
    raise AttributeError(f"module 'hubtree' has no attribute {name!r}")
