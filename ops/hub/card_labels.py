"""What a model was trained on, as labels: from a user's CSV, or from the cards in the lake.

A label is a string (``zoo-data/kitchen-reviews``, ``language:en``) with a text that says
what it means: the CSV's ``description`` column where given, else the label in words.
Cards are read only for repos that name their ``datasets`` (the field that says what a
model was trained on); those repos' ``pipeline_tag``, ``language`` and tags become labels too.
Tags about the file format, licence or region say nothing about training and are dropped.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hubtree.errors import HubtreeError

_NOISE_TAG = re.compile(r"^(license|region|arxiv|doi|base_model|endpoints_compatible|safetensors|pytorch|transformers|"
                        r"text-generation-inference|autotrain_compatible|model-index|tensorboard|gguf)(:|$)")


@dataclass(frozen=True)
class Label:
    """One label of one model, as a ``probex fit`` CSV row says it."""

    repo_id: str
    label: str
    description: str | None = None


def read_labels_csv(path: str) -> list[Label]:
    """Rows of a ``repo_id,label[,description]`` CSV (header line required), one per label."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"repo_id", "label"} <= set(reader.fieldnames):
                raise HubtreeError(f"{path}: expected a header line 'repo_id,label[,description]', got {reader.fieldnames}")
            rows = [Label(r["repo_id"].strip(), r["label"].strip(), (r.get("description") or "").strip() or None)
                    for r in reader if (r.get("repo_id") or "").strip() and (r.get("label") or "").strip()]
    except OSError as err:
        raise HubtreeError(f"cannot read labels file {path}: {err}") from err
    if not rows:
        raise HubtreeError(f"{path} has no labels: give one row 'repo_id,label[,description]' per label of a model")
    return rows


def card_labels(repo_id: str, card_metadata: str | None, pipeline_tag: str | None) -> list[Label]:
    """Labels of one repo from its card's YAML (stored as JSON), or none when the card names no datasets."""
    try:
        meta = json.loads(card_metadata) if card_metadata else {}
    except json.JSONDecodeError:
        return []
    datasets = _strings(meta.get("datasets") if isinstance(meta, dict) else None)
    if not datasets:
        return []
    labels = list(datasets)
    labels += [f"pipeline_tag:{t}" for t in _strings(pipeline_tag or meta.get("pipeline_tag"))]
    labels += [f"language:{t}" for t in _strings(meta.get("language"))]
    labels += [t for t in _strings(meta.get("tags")) if not _NOISE_TAG.match(t) and not t.startswith("dataset:")]
    return [Label(repo_id, name) for name in dict.fromkeys(labels)]


def label_text(label: str, description: str | None) -> str:
    """What a label means in words: its description, else its name with separators as spaces."""
    if description:
        return description
    name = label.rsplit("/", 1)[-1].replace(":", " ")
    return re.sub(r"[-_]+", " ", name)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        return [str(v).strip() for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return []
