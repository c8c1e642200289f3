"""Catalog one repo revision: its record, declared parents, files and tensor headers.

This is the per-repo unit of a crawl. It reads the card, the configs and the header
of every safetensors file, never tensor data, and never opens a pickled file. Card
metadata and config keys that the hub's API already returned with the record are
taken from there, not fetched again (on the Hub that saves two resolves per repo). A
weights file whose sha256 (the hub's ``X-Linked-Etag``, from the file's one resolve) is
already in the lake is an exact duplicate: its data is not read, the catalog names the
copy it duplicates, and the flow takes the tensors from that copy. Every
failure is caught at the smallest scope that keeps the rest: a bad card costs the
card, a bad weights file costs that file, a missing repo costs the repo; each
becomes a ``CrawlError`` instead of an exception.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from hubtree.errors import (
    ConfigParseError,
    EntryNotFoundError,
    TRANSIENT,
    HubtreeError,
    UnsupportedFormatError,
)
from hubtree.ops.hub.declared import (
    DeclaredEdge,
    edges_from_adapter_config,
    edges_from_card,
    edges_from_tags,
    parse_card,
)
from hubtree.ops.hub.source import HubSource, RepoFile, RepoRecord, RepoRef, config_summary
from hubtree.ops.weights.safetensors_reader import TensorEntry, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TRANSIENT_ERRORS = frozenset(cls.__name__ for cls in TRANSIENT)
MAX_MESSAGE_CHARS = 2000  # an error row quotes the hub's data; a hostile hub cannot make it huge


@dataclass(frozen=True)
class CrawlError:
    """One failure, with the exception class name a user can search for."""

    repo_id: str | None
    revision: str | None
    path: str | None
    stage: str
    error_class: str
    message: str
    at: datetime

    @classmethod
    def of(cls, err: Exception, ref: RepoRef | None, stage: str, path: str | None = None, revision_known: bool = True) -> "CrawlError":
        message = str(err) if isinstance(err, HubtreeError) else f"{type(err).__name__}: {err}"
        if isinstance(err, TRANSIENT) and ref is not None:
            message = f"{message[:MAX_MESSAGE_CHARS]} [transient: {ref.repo_id} is not recorded as crawled; the next run crawls it again]"
        return cls(
            _utf8(ref.repo_id) if ref else None,
            _utf8(ref.revision) if ref and revision_known else None,
            _utf8(path),
            stage,
            type(err).__name__,
            _utf8(message[:MAX_MESSAGE_CHARS] or type(err).__name__),
            datetime.now(timezone.utc),
        )


def _utf8(text: str | None) -> str | None:
    """Text from a hub as Parquet can store it: a lone surrogate becomes its escape."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class AdapterInfo:
    """A PEFT adapter's ``adapter_config.json`` fields hubtree uses."""

    base_model: str | None
    peft_type: str | None
    rank: int | None
    lora_alpha: float | None
    target_modules: list[str]


def copy_name(repo_id: str, revision: str, path: str) -> str:
    """How ``files.duplicate_of`` names the file a duplicate copies: ``"repo_id@revision:path"``."""
    return f"{repo_id}@{revision}:{path}"


def split_copy(copy: str) -> tuple[str, str, str]:
    """A duplicate's ``"repo_id@revision:path"`` (``files.duplicate_of``) as (repo_id, revision, path)."""
    repo_id, rest = copy.split("@", 1)
    revision, path = rest.split(":", 1)
    return repo_id, revision, path


@dataclass
class RepoCatalog:
    """Everything a crawl learns about one repo revision."""

    ref: RepoRef
    record: RepoRecord | None = None
    card: dict = field(default_factory=dict)
    config: dict | None = None
    adapter: AdapterInfo | None = None
    edges: list[DeclaredEdge] = field(default_factory=list)
    file_kinds: dict[str, str] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)
    errors: list[CrawlError] = field(default_factory=list)
    bytes_fetched: int = 0
    # path -> the file it is an exact copy of ("repo_id@revision:path"), recognised by sha256 without reading it
    duplicates: dict[str, str] = field(default_factory=dict)

    @property
    def retry(self) -> bool:
        """Something failed for a passing reason (the hub down, rate limits): crawl this repo again next run."""
        return any(e.error_class in TRANSIENT_ERRORS for e in self.errors)

    @property
    def ok(self) -> bool:
        """Catalogued (possibly with file-level errors) rather than failed as a whole."""
        return self.record is not None


def file_kind(path: str) -> str:
    """What a repo file is, by name alone."""
    name = path.rsplit("/", 1)[-1]
    if name == "adapter_model.safetensors":
        return "adapter_weights"
    if name.endswith(".safetensors"):
        return "weights"
    if name.endswith(".safetensors.index.json"):
        return "weights_index"
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    if name == "adapter_config.json":
        return "adapter_config"
    if name == "config.json":
        return "config"
    if name == "README.md":
        return "card"
    return "other"


def catalog_repo(source: HubSource, ref: RepoRef, known: Mapping[str, str] | None = None) -> RepoCatalog:
    """Catalog ``ref`` from ``source``; never raises for bad input, only records it.

    ``known`` maps the sha256 of weights files already in the lake to where they are
    (``repo_id@revision:path``): such a file costs its resolve only.

    Failures hubtree foresees cost the smallest scope (a card, a file); anything else
    (a bug, an input nobody foresaw) costs this repo as a whole: no record, one error
    row, and the next crawl tries it again.
    """
    try:
        out = _catalog(source, ref, known)
    except Exception as err:  # noqa: BLE001  the driver must never die on one repo's data
        return RepoCatalog(ref, errors=[CrawlError.of(err, ref, "catalog", revision_known=False)])
    if out.retry:
        out.record = None  # a repo missing files for a passing reason is not done: the next run crawls it again
    return out


def _catalog(source: HubSource, ref: RepoRef, known: Mapping[str, str] | None = None) -> RepoCatalog:
    out = RepoCatalog(ref)
    try:
        out.record = replace(source.repo_record(ref))  # a copy: sizes learned below must not change a shared listing
    except HubtreeError as err:
        out.errors.append(CrawlError.of(err, ref, "record", revision_known=False))
        return out
    out.file_kinds = {f.path: file_kind(f.path) for f in out.record.files}
    paths = set(out.file_kinds)

    if out.record.card:
        out.card = out.record.card
    elif "README.md" in paths:
        text = _text(source, ref, "README.md", "card", out)
        if text is not None:
            try:
                out.card = parse_card(text)
            except HubtreeError as err:
                out.errors.append(CrawlError.of(err, ref, "card", "README.md"))
    if out.record.config is not None:
        out.config = config_summary(out.record.config)
    elif "config.json" in paths:
        out.config = config_summary(_json(source, ref, "config.json", out))
    adapter_config = _json(source, ref, "adapter_config.json", out) if "adapter_config.json" in paths else None
    if adapter_config is not None:
        out.adapter = _adapter_info(adapter_config)

    out.edges = _dedupe(
        edges_from_card(out.card, ref.repo_id, has_adapter=adapter_config is not None)
        + edges_from_tags(out.record.tags, ref.repo_id)
        + (edges_from_adapter_config(adapter_config, ref.repo_id) if adapter_config else [])
    )

    weights = [f for f in out.record.files if out.file_kinds[f.path] in ("weights", "adapter_weights")]
    for repo_file in weights:
        _read_tensors(source, ref, repo_file, out, known or {})
    if not weights and any(k == "pickle" for k in out.file_kinds.values()):
        err = UnsupportedFormatError("weights only in pickle formats (.bin/.pt); hubtree never unpickles, so none were read")
        out.errors.append(CrawlError.of(err, ref, "weights"))
    return out


def _read_tensors(source: HubSource, ref: RepoRef, repo_file: RepoFile, out: RepoCatalog, known: Mapping[str, str]) -> None:
    """The file's header into ``out.tensors``; its size and sha256 into the record, as its resolve and read tell them."""
    try:
        # a size unknown (None, or 0 from a record without sizes) is the hub's to say
        handle = source.open_file(ref, repo_file.path, repo_file.size or None)
        try:
            sha256 = repo_file.sha256 or getattr(handle, "sha256", None)
            if sha256 in known:
                out.duplicates[repo_file.path] = known[sha256]
                _learn_file(out, replace(repo_file, size=handle.size(), sha256=sha256))
                return
            header = read_header(handle, repo_file.path)
        finally:
            out.bytes_fetched += handle.bytes_read
    except HubtreeError as err:
        out.errors.append(CrawlError.of(err, ref, "header", repo_file.path))
        return
    out.tensors.extend(header.tensors)
    _learn_file(out, replace(repo_file, size=header.file_size, sha256=sha256))


def _learn_file(out: RepoCatalog, learned: RepoFile) -> None:
    out.record.files = [learned if f.path == learned.path else f for f in out.record.files]


def _text(source: HubSource, ref: RepoRef, path: str, stage: str, out: RepoCatalog) -> str | None:
    try:
        text = source.read_text(ref, path)
    except EntryNotFoundError:
        return None
    except HubtreeError as err:
        out.errors.append(CrawlError.of(err, ref, stage, path))
        return None
    out.bytes_fetched += len(text.encode("utf-8"))
    return text


def _json(source: HubSource, ref: RepoRef, path: str, out: RepoCatalog) -> dict | None:
    text = _text(source, ref, path, "config", out)
    if text is None:
        return None
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
    except ValueError as err:
        out.errors.append(CrawlError.of(ConfigParseError(f"{path} is not a JSON object: {err}"), ref, "config", path))
        return None
    return value


def _adapter_info(config: dict) -> AdapterInfo:
    targets = config.get("target_modules") or []
    return AdapterInfo(
        base_model=config.get("base_model_name_or_path") if isinstance(config.get("base_model_name_or_path"), str) else None,
        peft_type=str(config.get("peft_type")) if config.get("peft_type") else None,
        rank=int(config["r"]) if isinstance(config.get("r"), int) else None,
        lora_alpha=float(config["lora_alpha"]) if isinstance(config.get("lora_alpha"), (int, float)) else None,
        target_modules=[targets] if isinstance(targets, str) else [str(t) for t in targets],
    )


def _dedupe(edges: list[DeclaredEdge]) -> list[DeclaredEdge]:
    return list(dict.fromkeys(edges))
