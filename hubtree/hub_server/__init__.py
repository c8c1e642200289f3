"""A Hub-compatible HTTP server: a local hub folder (and recorded Hub metadata) served as huggingface_hub expects.

It answers the requests huggingface_hub and ``HttpHub`` send, in the Hub's shapes:

* ``GET /api/models`` with ``author``, ``search``, ``filter`` (repeatable, every tag must
  match), ``sort`` + ``direction``, ``limit``, ``expand`` / ``full`` / ``cardData`` /
  ``config``; pages of ``page_size`` entries linked by ``Link: <absolute url>; rel="next"``;
* ``GET /api/models/{repo_id}[/revision/{rev}]`` (``blobs=true`` adds sizes and LFS hashes);
* ``GET /api/models/{repo_id}/tree/{rev}[/{path}]`` (``recursive=true``), paginated alike;
* ``GET`` and ``HEAD /{repo_id}/resolve/{rev}/{path}``: an LFS file answers 302 to a
  signed, expiring URL on the CDN origin (``cdn``), with ``X-Linked-Size``,
  ``X-Linked-Etag`` (its sha256), ``X-Repo-Commit``; other files are served here with
  ``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``Accept-Ranges: bytes``; ``Range:
  bytes=a-b`` answers 206 with ``Content-Range``, a range starting past the end 416.

Rate limits (``limits``): ``api`` and ``resolvers`` buckets with fixed windows, the
``RateLimit`` / ``RateLimit-Policy`` headers on every answer, 429 when one is spent.
``HubCounters`` (``RunningServer.counters``, ``GET /_hubtree/counters``) count requests
per bucket, 429s, CDN requests and bytes.

``rev`` is ``main`` or the repo's 40-hex revision (LocalHub's content hash). Errors carry
the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``) and ``X-Error-Message``, so huggingface_hub raises its precise classes.

Gated repos: a repo folder holding a ``.gated`` file is gated (the file may say ``auto``
or ``manual``; empty means ``manual``). As on the Hub, its metadata stays public (listing,
model info, tree report ``gated``), and file contents (``resolve``) answer 401 with
``X-Error-Code: GatedRepo`` unless the request sends ``Authorization: Bearer <token>``
with the token the server was given (``hub serve --token``); without one, nobody reads
them. LocalHub ignores dot-files, so the marker changes neither the repo's files nor its revision.

Only the folder's own files are served: a path is resolved with its links followed and
must stay under the root and be a regular file; a link out of the root, to a directory
or to a device, and anything under a dot-directory, answers 404 ``EntryNotFound``.

Records: ``records=[jsonl paths]`` serves recorded Hub metadata (one JSON line per model
with ``model_info``: id, sha, dates, tags, card_data YAML, siblings...) as metadata-only
repos: listing, model info, tags and family crawls work; ``README.md`` is synthesized from
the card data; every other file answers 404 ``EntryNotFound``. Recorded gated repos are
gated as above. A folder repo wins over a record with the same id.

Faults: ``FaultSpec`` makes every Nth request fail (429 with ``RateLimit`` headers, 500,
a stall longer than a client's timeout, a body cut short), or the hub go down (503 to
everything) for a while from a given request on; the ``FaultInjector`` at
``app.state.faults`` counts what it injected and logs the requests it saw.

Run ``serve(root)`` for a blocking server, or ``with running(root) as server:`` in tests.

Modules: ``served`` (what is served: folders, records, hashes), ``shapes`` (the Hub's JSON),
``faults`` (fault injection), ``limits`` (rate limits, counters), ``cdn`` (signed URLs and the
CDN origin), ``app`` (routes and errors), ``serve`` (running it).
"""
from __future__ import annotations

from hubtree.hub_server.app import COUNTERS_PATH, DEFAULT_PAGE_SIZE, make_app
from hubtree.hub_server.cdn import Cdn
from hubtree.hub_server.faults import FAULT_KINDS, FaultInjector, FaultSpec
from hubtree.hub_server.limits import TIERS, HubCounters, RateLimits
from hubtree.hub_server.serve import RunningServer, running, serve
from hubtree.hub_server.served import ServedHub, load_records, sibling_name

__all__ = [
    "COUNTERS_PATH",
    "Cdn",
    "DEFAULT_PAGE_SIZE",
    "HubCounters",
    "RateLimits",
    "TIERS",
    "FAULT_KINDS",
    "FaultInjector",
    "FaultSpec",
    "RunningServer",
    "ServedHub",
    "load_records",
    "make_app",
    "running",
    "serve",
    "sibling_name",
]
