"""Parents a repo declares: from its card, its Hub tags and its adapter config.

Real cards are messy (a string or a list, URLs instead of ids, stray HTML, the
repo naming itself), so every candidate parent goes through ``normalise_repo_id``
and self-references are dropped here; cycles between repos are the tree stage's
business, since only it sees the whole graph.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from hubtree.errors import CardParseError

RELATIONS = ("finetune", "adapter", "quantized", "merge")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)?$")
_URL_PREFIX = re.compile(r"^(https?://)?(www\.)?huggingface\.co/", re.IGNORECASE)


@dataclass(frozen=True)
class DeclaredEdge:
    """``parent`` is declared as the base of the repo, by ``source``."""

    parent: str
    relation: str | None  # one of RELATIONS, or None where the source does not say
    source: str  # "card" | "tag" | "adapter_config"


def parse_card(readme: str) -> dict:
    """The YAML front matter of a model card (``---`` ... ``---`` at the top), or {} if none."""
    text = readme.lstrip("\ufeff")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        raise CardParseError("card front matter opens with '---' but never closes")
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError as err:
        raise CardParseError(f"card YAML does not parse: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardParseError(f"card YAML is a {type(data).__name__}, not a mapping")
    return data


def normalise_repo_id(value: object) -> str | None:
    """A clean ``org/name`` (or legacy ``name``) from a card value, or None if it is not one."""
    if not isinstance(value, str):
        return None
    text = _URL_PREFIX.sub("", value.strip()).strip("/ ")
    text = text.split("/tree/")[0].split("/blob/")[0]
    if len(text) > 96 or not _REPO_ID.match(text):
        return None
    return text


def edges_from_card(card: dict, child: str, has_adapter: bool = False) -> list[DeclaredEdge]:
    """``base_model`` (a string or a list) with ``base_model_relation`` when the card gives it.

    Without an explicit relation an adapter repo is an adapter, and otherwise the
    relation is left undeclared (None) rather than guessed: real cards list several
    parents for fine-tunes too, and the Hub's own tags then say ``finetune``.
    """
    raw = card.get("base_model")
    values = raw if isinstance(raw, list) else [raw]
    parents = _unique(p for p in map(normalise_repo_id, values) if p and p != child)
    relation = card.get("base_model_relation")
    if relation not in RELATIONS:
        relation = "adapter" if has_adapter else None
    return [DeclaredEdge(p, relation, "card") for p in parents]


def edges_from_tags(tags: list[str], child: str) -> list[DeclaredEdge]:
    """Hub tags ``base_model:<relation>:<repo>`` (and the bare ``base_model:<repo>`` form)."""
    edges: dict[str, DeclaredEdge] = {}
    for tag in tags:
        if not tag.startswith("base_model:"):
            continue
        rest = tag[len("base_model:") :]
        relation, _, repo = rest.partition(":")
        if not repo:
            relation, repo = None, rest
        elif relation not in RELATIONS:
            continue
        parent = normalise_repo_id(repo)
        if parent and parent != child and (parent not in edges or relation):
            edges[parent] = DeclaredEdge(parent, relation, "tag")
    return list(edges.values())


def edges_from_adapter_config(config: dict, child: str) -> list[DeclaredEdge]:
    """PEFT's ``base_model_name_or_path``: an adapter's base, whatever its card says."""
    parent = normalise_repo_id(config.get("base_model_name_or_path"))
    return [DeclaredEdge(parent, "adapter", "adapter_config")] if parent and parent != child else []


def hub_tags(card: dict, has_adapter: bool = False) -> list[str]:
    """The tags the Hub derives from a card, so a local folder lists like the Hub does."""
    tags = [str(t) for t in (card.get("tags") or []) if isinstance(t, (str, int, float))]
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    for edge in edges_from_card(card, child="", has_adapter=has_adapter):
        tags += [f"base_model:{edge.parent}", f"base_model:{edge.relation or 'finetune'}:{edge.parent}"]
    return _unique(tags)


def _unique(items) -> list:
    return list(dict.fromkeys(items))
