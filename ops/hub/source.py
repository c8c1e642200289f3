"""What every hub looks like to hubtree: typed records and one small interface.

A source yields records; it knows nothing of Parquet, Ray or Prefect. A new hub
(a local folder, the Hugging Face Hub over HTTP, another registry) is one new
class that satisfies ``HubSource``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Protocol

from hubtree.ops.weights.safetensors_reader import ByteSource


@dataclass(frozen=True)
class RepoQuery:
    """Which repos to crawl; mirrors the Hub's list filters."""

    author: str | None = None
    search: str | None = None
    filter: tuple[str, ...] = ()
    sort: str | None = None
    limit: int | None = None
    family: str | None = None  # a base repo and all its declared descendants

    def matches(self, repo_id: str, author: str | None, tags: list[str] | None) -> bool:
        """The Hub's listing filters on one repo: author, case-insensitive substring of the id, every tag."""
        if self.author and author != self.author:
            return False
        if self.search and self.search.lower() not in repo_id.lower():
            return False
        return all(tag in (tags or []) for tag in self.filter)


@dataclass(frozen=True)
class RepoRef:
    """One listing entry: enough to decide whether a repo needs crawling at all."""

    repo_id: str
    revision: str  # a commit sha on the Hub, a content hash for a local folder
    # The repo's record when the listing gave all of it (an HTTP listing with ``expand``): no model_info then.
    listing: RepoRecord | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RepoFile:
    """A file of a repo at a revision."""

    path: str
    size: int | None  # None where the hub did not say (a listing); a read learns it
    sha256: str | None = None  # the LFS oid where the hub gives one


@dataclass
class RepoRecord:
    """A repo's metadata at one revision, as the hub describes it."""

    repo_id: str
    revision: str
    author: str | None
    created_at: datetime | None
    last_modified: datetime | None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library_name: str | None = None
    gated: bool = False
    downloads: int | None = None
    likes: int | None = None
    files: list[RepoFile] = field(default_factory=list)
    # What an API gives with the record (the Hub's ``cardData`` and ``config``), so that
    # README.md and config.json need not be fetched; None where the hub does not say.
    card: dict | None = None
    config: dict | None = None


class HubSource(Protocol):
    """A model hub: list repos, describe one, and open its files for reading by range."""

    url: str  # how the user named this hub (a path or an endpoint URL); stored in crawl_runs

    def list_repos(self, query: RepoQuery) -> Iterator[RepoRef]:
        """Repos matching the query, one cheap listing entry each."""

    def repo_record(self, ref: RepoRef) -> RepoRecord:
        """Metadata and file list of one repo at ``ref.revision``."""

    def read_text(self, ref: RepoRef, path: str, max_bytes: int = 1 << 20) -> str:
        """A small text file (card, config) of the repo; raises EntryNotFoundError if absent."""

    def open_file(self, ref: RepoRef, path: str, size: int | None = None) -> ByteSource:
        """Random access to one file at ``ref.revision`` (memory or byte ranges, never a full download)."""


# The keys of config.json the Hub copies into a model's ``config`` (its API returns no others).
HUB_CONFIG_KEYS = ("architectures", "model_type")


def config_summary(config: dict | None) -> dict | None:
    """The part of a config.json that every hub reports alike: the Hub API's ``config`` keys.

    The Hub's ``model_info`` gives only these, so an HTTP crawl need not fetch config.json;
    a folder crawl keeps the same keys, so both give the same ``repos`` rows.
    """
    if config is None:
        return None
    return {k: config[k] for k in HUB_CONFIG_KEYS if k in config} or None
