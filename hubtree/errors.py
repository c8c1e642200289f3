"""Every failure hubtree reports, one small class each.

A crawl records ``type(err).__name__`` and ``str(err)`` of these in the
``crawl_errors`` table, and the CLI prints the message rather than a traceback,
so each message says what went wrong and, where there is one, what to do next.
"""
from __future__ import annotations


class HubtreeError(Exception):
    """Base class: anything hubtree raises on purpose."""


# --- weights files -----------------------------------------------------------
class SafetensorsError(HubtreeError):
    """A safetensors file that cannot be trusted; the file is skipped, nothing is read past the header."""


class HeaderTooLargeError(SafetensorsError):
    """The 8-byte length prefix claims a header larger than the bound (or than the file)."""


class InvalidHeaderError(SafetensorsError):
    """The header is not the JSON object the format defines (bad JSON, bad dtype, bad shape)."""


class TruncatedFileError(SafetensorsError):
    """The file ends before the bytes its header promises."""


class TensorOutOfRangeError(SafetensorsError):
    """A tensor's offsets point outside the file's data region, or disagree with its dtype and shape."""


class OverlappingTensorsError(SafetensorsError):
    """Two tensors claim the same bytes: a malformed or hostile file."""


class UnsupportedFormatError(HubtreeError):
    """A weights format hubtree will not open (pickled .bin/.pt files are never unpickled)."""


class FileUnreadableError(HubtreeError):
    """A file could not be read at all (permissions, I/O error)."""


# --- cards and metadata ------------------------------------------------------
class CardParseError(HubtreeError):
    """The model card's YAML front matter does not parse; the repo is still catalogued without it."""


class ConfigParseError(HubtreeError):
    """config.json or adapter_config.json is not valid JSON."""


# --- hubs --------------------------------------------------------------------
class HubError(HubtreeError):
    """A hub refused or failed a request."""


class RepoNotFoundError(HubError):
    """The repo does not exist (or is private and no token with access was given)."""


class RevisionNotFoundError(HubError):
    """The repo exists but not at this revision."""


class EntryNotFoundError(HubError):
    """The repo exists but has no such file at this revision."""


class GatedRepoError(HubError):
    """The repo is gated: accept its terms on the hub and set HF_TOKEN to a token with access."""


class RateLimitedError(HubError):
    """The hub answered 429 more often than the retry policy allows; lower the request budget and rerun."""


class HubUnavailableError(HubError):
    """The hub kept failing (5xx, timeouts, refused connections, bodies cut short) after every retry."""


# Failures that may well not happen again: a crawl retries the repo on its next run.
TRANSIENT = (RateLimitedError, HubUnavailableError)


class LakeError(HubtreeError):
    """The lake is missing, or a table in it is not what hubtree wrote."""


# --- LoRA attacks ------------------------------------------------------------
class LoraSetError(HubtreeError):
    """Weights that cannot be attacked together as fine-tunes of one base."""


class TooFewMergesError(LoraSetError):
    """Fewer than 3 merges: ``W + B1 A1`` and ``W + B2 A2`` fit every split of their difference; find a third."""


class ShapeMismatchError(LoraSetError):
    """Weights compared as one set differ in tensor names or shapes: not one architecture (or adapter config)."""
