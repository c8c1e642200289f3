"""Labels for ProbeX: a user's CSV, or the cards that name their datasets."""
from __future__ import annotations

import json

import pytest

from hubtree.errors import HubtreeError
from hubtree.ops.hub.card_labels import Label, card_labels, label_text, read_labels_csv


def test_a_card_naming_datasets_gives_them_with_its_task_language_and_tags():
    meta = {"datasets": ["org/reviews", "org/news"], "language": ["en", "fr"], "tags": ["sentiment", "license:mit", "safetensors"]}
    labels = card_labels("a/m", json.dumps(meta), "text-classification")
    assert [l.label for l in labels] == ["org/reviews", "org/news", "pipeline_tag:text-classification", "language:en", "language:fr", "sentiment"]


def test_a_card_without_datasets_labels_nothing():
    assert card_labels("a/m", json.dumps({"tags": ["sentiment"], "language": "en"}), "text-generation") == []
    assert card_labels("a/m", "{not json", None) == []


def test_csv_rows_one_label_each(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('repo_id,label,description\na/m,org/reviews,"Reviews, of kitchens"\na/m,org/news,\n')
    assert read_labels_csv(str(path)) == [Label("a/m", "org/reviews", "Reviews, of kitchens"), Label("a/m", "org/news", None)]
    assert label_text("org/news-headlines", None) == "news headlines"


def test_a_csv_without_the_header_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("a/m,org/reviews\n")
    with pytest.raises(HubtreeError, match="repo_id,label"):
        read_labels_csv(str(path))
