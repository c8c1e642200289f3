"""``HubSource`` over a Hub-compatible HTTP endpoint (the Hugging Face Hub, or ``hubtree hub serve``).

Requests are huggingface_hub's: its shared session and headers (so ``HF_TOKEN``, a
saved login and proxies work as users expect), its ``hf_raise_for_status`` (so the Hub's
error codes become precise exceptions), its ``ModelInfo`` parsing and URL helpers. Every
request runs under our ``RetryPolicy`` with its timeout and budget, and every answer's
``RateLimit`` headers update that budget.

That is why listing pages and model infos are fetched here rather than by
``HfApi.list_models`` / ``model_info``: those follow pages through ``http_backoff`` with
their own retries and no timeout, and hide the responses' headers. We send the same
requests (``Link: <...>; rel="next"`` pages, ``/api/models/{id}/revision/{rev}``), one
policed request each.

A crawl lives on listings: a page of ``list_models(expand=[sha, dates, tags, cardData,
config, siblings])`` describes up to 1,000 repos in one API call, so each ``RepoRef``
listed carries its ``RepoRecord`` and ``repo_record`` costs nothing; ``model_info`` is
called only for a ref listed without one. File sizes and hashes, which listings lack,
come from each file's one resolve (``X-Linked-Size``, ``X-Linked-Etag``, ``Content-Range``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote
from datetime import datetime, timezone
from typing import Any

import httpx2
from huggingface_hub import ModelInfo, constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from hubtree.errors import RepoNotFoundError
from hubtree.ops.hub.http_file import HttpFile, Traffic
from hubtree.ops.hub.source import RepoFile, RepoQuery, RepoRecord, RepoRef
from hubtree.ops.hub.retry import API, RetryPolicy
from hubtree.ops.hub.token_scope import scoped_token

# What a listing entry must carry: the sha makes a RepoRef, the rest its RepoRecord (and filters a family here).
_LISTING_FIELDS = [
    "sha", "author", "tags", "createdAt", "lastModified", "cardData", "config", "siblings",
    "pipeline_tag", "library_name", "gated", "downloads", "likes",
]
PAGE_SIZE = 1000  # the Hub's largest listing page
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)
# The sorts LocalHub applies to a family (newest first); others keep breadth-first order, as there.
_FAMILY_SORTS = {"created_at": "created_at", "createdAt": "created_at", "last_modified": "last_modified", "lastModified": "last_modified"}
_SORT_NAMES = {"created_at": "createdAt", "last_modified": "lastModified", "trending_score": "trendingScore"}


class HttpHub:
    """A Hub-compatible endpoint read through huggingface_hub, under one retry policy.

    Args:
        endpoint: e.g. ``https://huggingface.co`` or a test server's URL; default ``HF_ENDPOINT``.
        token: a Hub token meant for this endpoint; default ``HF_TOKEN`` or the saved login,
            sent only where ``token_scope.scoped_token`` allows (the Hub, ``HF_ENDPOINT``,
            ``--token-for-hub``), and never over plain http off this machine.
        policy: the retry policy and request budget; default the free tier's.

    ``requests`` and ``bytes_fetched`` count everything this hub and the files it opened
    sent and received (file bytes only; API JSON is not counted as fetched data).

    Example::

        hub = HttpHub()
        for ref in hub.list_repos(RepoQuery(family="meta-llama/Llama-2-7b")):
            record = hub.repo_record(ref)
    """

    def __init__(self, endpoint: str | None = None, token: str | None = None, policy: RetryPolicy | None = None):
        self.url = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.policy = policy or RetryPolicy()
        self.traffic = Traffic()
        token = scoped_token(self.url, token)  # only the Hub, HF_ENDPOINT or a hub named for it gets one
        self._headers = build_hf_headers(token=token)  # holds the token: never logged, never in a message

    def __repr__(self) -> str:
        return f"HttpHub({self.url!r})"

    @property
    def requests(self) -> int:
        return self.traffic.requests

    @property
    def bytes_fetched(self) -> int:
        return self.traffic.bytes

    # -- listing ---------------------------------------------------------------
    def list_repos(self, query: RepoQuery = RepoQuery()) -> Iterator[RepoRef]:
        """Repos matching the query, listed by the hub (filters, sort and pagination server-side).

        With ``query.family`` the base repo and its declared descendants, found level by
        level (see ``family``), then filtered by author, search and tags here.
        """
        if query.family:
            yield from self._family_refs(query)
            return
        params = _list_params(query.author, query.search, query.filter, query.sort)
        for info in self._list_models(params, query.limit):
            yield listed_ref(info)

    def family(self, base: str) -> Iterator[ModelInfo]:
        """``base`` (if it exists) and every repo declaring a parent in the family, breadth first.

        Level by level, each repo's children are the repos tagged ``base_model:<repo>``
        (the Hub adds that tag for every declared parent, whatever the relation). A repo
        is visited once, so cycles and diamonds (merges of two family members) are safe.
        """
        seen = {base}
        try:
            yield self._model_info(base, None)
        except RepoNotFoundError:
            pass  # a deleted base can still have live descendants
        level = [base]
        while level:
            children = []
            for parent in level:
                for info in self._list_models(_list_params(filter=(f"base_model:{parent}",)), None):
                    if info.id not in seen:
                        seen.add(info.id)
                        children.append(info.id)
                        yield info
            level = children

    def _family_refs(self, query: RepoQuery) -> Iterator[RepoRef]:
        members = (info for info in self.family(query.family) if query.matches(info.id, info.author or info.id.split("/")[0], info.tags))
        key = _FAMILY_SORTS.get(query.sort or "")
        if key:  # sorting needs the whole family; otherwise it streams level by level
            members = iter(sorted(members, key=lambda info: getattr(info, key) or _EPOCH, reverse=True))
        for count, info in enumerate(members):
            if query.limit is not None and count >= query.limit:
                return
            yield listed_ref(info)

    def _list_models(self, params: list[tuple[str, Any]], limit: int | None) -> Iterator[ModelInfo]:
        """Every listing entry, one policed request per page, following ``Link: rel="next"``."""
        url: str | None = f"{self.url}/api/models"
        page_params: list[tuple[str, Any]] | None = params
        count = 0
        while url is not None:
            page_url = url
            response = self.policy.run(API, lambda: self._get_json(page_url, page_params), page_url)
            for item in response.json():
                if limit is not None and count >= limit:
                    return
                count += 1
                yield ModelInfo(**{"siblings": None, **item})
            # The next link carries the whole query; params (even []) would replace it.
            url, page_params = response.links.get("next", {}).get("url"), None

    def _get_json(self, url: str, params: list[tuple[str, Any]] | None) -> httpx2.Response:
        self.traffic.add(API)
        response = get_session().get(url, params=params, headers=self._headers, timeout=self.policy.timeout)
        for _ in response.history:  # the session follows a renamed repo's 307 to its new name: a request each
            self.traffic.add(API)
        self.policy.observe(response)
        hf_raise_for_status(response)
        return response

    # -- one repo --------------------------------------------------------------
    def repo_record(self, ref: RepoRef) -> RepoRecord:
        """The record a listing attached to ``ref``, else ``model_info`` at ``ref.revision`` (one API call).

        Either way card metadata (``cardData``, the card's YAML as the Hub parsed it) and
        ``config`` come along, so the catalog need not resolve README.md and config.json.
        """
        if ref.listing is not None:
            return ref.listing
        info = self._model_info(ref.repo_id, ref.revision)
        return model_record(info, ref.revision)

    def read_text(self, ref: RepoRef, path: str, max_bytes: int = 1 << 20) -> str:
        """A small file (card, config) in one ranged GET of at most ``max_bytes``."""
        return self.open_file(ref, path).read_prefix(max_bytes).decode("utf-8", errors="replace")

    def open_file(self, ref: RepoRef, path: str, size: int | None = None) -> HttpFile:
        """The file at ``ref.revision`` (the sha, so a crawl reads one consistent commit) by byte range."""
        url = hf_hub_url(ref.repo_id, path, revision=ref.revision, endpoint=self.url)
        return HttpFile(url, self.policy, size=size, headers=self._headers, traffic=self.traffic)

    def _model_info(self, repo_id: str, revision: str | None) -> ModelInfo:
        """``HfApi.model_info(files_metadata=True)``'s request, policed: sizes and LFS hashes of every file."""
        url = f"{self.url}/api/models/{repo_id}" + (f"/revision/{quote(revision, safe='')}" if revision else "")
        response = self.policy.run(API, lambda: self._get_json(url, [("blobs", True)]), url)
        return ModelInfo(**response.json())


def listed_ref(info: ModelInfo) -> RepoRef:
    """A listing entry as a RepoRef carrying its record (None if the entry lacks the sha or the file names)."""
    complete = info.sha is not None and info.siblings is not None
    return RepoRef(info.id, info.sha, listing=model_record(info, info.sha) if complete else None)


def model_record(info: ModelInfo, revision: str | None) -> RepoRecord:
    """A ``ModelInfo`` (listing entry or model info) as a RepoRecord; file sizes None where the hub gave none."""
    return RepoRecord(
        repo_id=info.id,
        revision=info.sha or revision,
        author=info.author,
        created_at=info.created_at,
        last_modified=info.last_modified,
        tags=list(info.tags or []),
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        gated=bool(info.gated),
        downloads=info.downloads,
        likes=info.likes,
        files=[RepoFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []],
        card=info.card_data.to_dict() if info.card_data else None,
        config=info.config if isinstance(info.config, dict) else None,
    )


def _list_params(
    author: str | None = None,
    search: str | None = None,
    filter: tuple[str, ...] = (),
    sort: str | None = None,
) -> list[tuple[str, Any]]:
    """Query parameters as ``HfApi.list_models`` builds them (``filter`` and ``expand`` repeat), with the largest pages.

    As on the Hub, ``limit`` is the page size: a query's own limit is applied here while reading.
    """
    params: list[tuple[str, Any]] = [("filter", tag) for tag in filter]
    params += [(name, value) for name, value in (("author", author), ("search", search)) if value]
    if sort:
        params.append(("sort", _SORT_NAMES.get(sort, sort)))
    params.append(("limit", PAGE_SIZE))
    return params + [("expand", name) for name in _LISTING_FIELDS]

