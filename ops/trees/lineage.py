"""One model's lineage in a recovered forest: the chain of parents up to its root, and every descendant.

Pure: takes the forest's edges (the ``tree_edges`` rows), returns records; reading the lake is the caller's job.
A forest has one parent per child, so the way up is a path; a cycle (which MoTHer never writes, but a
hand-edited lake might hold) stops the walk at the first repeat instead of looping.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LineageEdge:
    """One parent -> child edge and what says so (``source``: declared | recovered | duplicate)."""

    child: str
    parent: str
    source: str
    relation: str | None
    confidence: float | None
    depth: int  # steps from the asked repo: 1 = its parent (or child), 2 = grandparent, ...


@dataclass
class Lineage:
    repo: str
    family_id: int | None
    direction_rule: str | None  # how the family's edges were oriented (families.direction_rule)
    root: str
    ancestors: list[LineageEdge] = field(default_factory=list)  # nearest first, up to the root
    descendants: list[LineageEdge] = field(default_factory=list)  # breadth first

    def to_dict(self) -> dict:
        return asdict(self)


def lineage(edges: list[dict], repo: str, family_id: int | None = None, direction_rule: str | None = None) -> Lineage:
    """``repo``'s ancestors and descendants from ``edges`` (dicts with child_repo_id, parent_repo_id,
    source, relation, confidence; a root's row has no parent)."""
    up = {e["child_repo_id"]: e for e in edges if e.get("parent_repo_id")}
    down: dict[str, list[dict]] = defaultdict(list)
    for edge in up.values():
        down[edge["parent_repo_id"]].append(edge)

    ancestors, node, seen = [], repo, {repo}
    while node in up and up[node]["parent_repo_id"] not in seen:
        edge = up[node]
        ancestors.append(_edge(edge, len(ancestors) + 1))
        node = edge["parent_repo_id"]
        seen.add(node)

    descendants, queue, seen_down = [], deque([(repo, 0)]), {repo}
    while queue:
        parent, depth = queue.popleft()
        for edge in sorted(down.get(parent, []), key=lambda e: e["child_repo_id"]):
            if edge["child_repo_id"] not in seen_down:
                seen_down.add(edge["child_repo_id"])
                descendants.append(_edge(edge, depth + 1))
                queue.append((edge["child_repo_id"], depth + 1))
    return Lineage(repo, family_id, direction_rule, node, ancestors, descendants)


def _edge(row: dict, depth: int) -> LineageEdge:
    return LineageEdge(row["child_repo_id"], row["parent_repo_id"], row["source"], row.get("relation"), row.get("confidence"), depth)
