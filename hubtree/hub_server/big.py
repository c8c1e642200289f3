"""Big-model mode: the repos of a ``BigFamily`` (``ops/zoo/big_family``) as served repos, computed per range.

Each repo has the two bf16 shards, ``model.safetensors.index.json``, ``config.json`` and a
``README.md`` card; the shards' bytes come from ``BigFamily.read`` for exactly the range
asked, so a 13.5 GB repo costs nothing until read and a ranged read costs its rows.
"""
from __future__ import annotations

import functools
import hashlib

from hubtree.hub_server.served import ServedFile, ServedRepo
from hubtree.ops.hub.declared import parse_card
from hubtree.ops.hub.source import RepoFile, RepoRecord, config_summary
from hubtree.ops.zoo.big_family import INDEX_FILE, BigFamily, layout


def big_family_repos(family: BigFamily) -> dict[str, ServedRepo]:
    """Every repo of ``family`` by id, ready for ``ServedHub(computed=...)``."""
    shards = layout(family.arch)
    spec = f"{family!r}"  # every parameter of the family: its bytes change exactly when this does
    out = {}
    for model in family.models:
        rid = model.repo_id
        files = {
            s.path: ServedFile(s.path, s.size, generate=functools.partial(family.read, rid, s.path),
                               sha256=hashlib.sha256(f"{spec}/{rid}/{s.path}".encode()).hexdigest())
            for s in shards
        }  # fmt: skip
        card = family.card(rid)
        for path, content in ((INDEX_FILE, family.index_json()), ("config.json", family.config_json()), ("README.md", card.encode())):
            files[path] = ServedFile(path, len(content), content=content)
        record = RepoRecord(
            repo_id=rid, revision=hashlib.sha1(f"{spec}/{rid}".encode()).hexdigest(), author=rid.split("/")[0],
            created_at=model.created_at, last_modified=model.created_at, tags=["transformers", "safetensors", "llama", "text-generation"],
            pipeline_tag="text-generation", library_name="transformers", files=[RepoFile(f.path, f.size) for f in files.values()],
        )  # fmt: skip
        out[rid] = ServedRepo(record, None, parse_card(card), config_summary(family.arch.config()), files)
    return out
