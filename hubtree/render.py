"""Pictures as SVG text: a family tree and a histogram. No plotting library, no JavaScript,
so a report opens anywhere, offline, and renders the same in a headless browser."""
from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass

NODE_W, NODE_H, GAP_X, GAP_Y = 190, 30, 24, 70


@dataclass(frozen=True)
class DrawnEdge:
    parent: str | None
    child: str
    source: str  # declared | recovered | duplicate | root
    confidence: float | None


def tree_svg(edges: list[DrawnEdge], title: str = "") -> str:
    """A layered drawing: roots on top, children below their parent; declared edges solid,
    recovered ones dashed, line width growing with confidence."""
    children: dict[str | None, list[str]] = defaultdict(list)
    nodes = {e.child for e in edges} | {e.parent for e in edges if e.parent}
    has_parent = {e.child for e in edges if e.parent}
    for e in sorted(edges, key=lambda e: e.child):
        if e.parent:
            children[e.parent].append(e.child)
    roots = sorted(nodes - has_parent)
    position: dict[str, tuple[float, float]] = {}
    next_x = [0.0]

    def place(node: str, depth: int, seen: frozenset) -> float:
        """Leaves take the next free slot; a parent sits over the middle of its children."""
        kids = [c for c in children.get(node, []) if c not in seen and c not in position]
        if kids:
            xs = [place(c, depth + 1, seen | {node}) for c in kids]
            x = (xs[0] + xs[-1]) / 2
        else:
            x = next_x[0]
            next_x[0] += NODE_W + GAP_X
        position[node] = (x, depth * (NODE_H + GAP_Y))
        return x

    for root in roots:
        place(root, 0, frozenset())
    for node in sorted(nodes - set(position)):  # what a cycle left unplaced
        place(node, 0, frozenset())
    width = max((x for x, _ in position.values()), default=0) + NODE_W + 2 * GAP_X
    height = max((y for _, y in position.values()), default=0) + NODE_H + 2 * GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height + 30:.0f}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{GAP_X}" y="20" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<g transform="translate({GAP_X},{40})">',
    ]
    for e in edges:
        if not e.parent or e.parent not in position:
            continue
        (px, py), (cx, cy) = position[e.parent], position[e.child]
        confidence = 1.0 if e.confidence is None or math.isnan(e.confidence) else e.confidence
        dash = "" if e.source == "declared" else ' stroke-dasharray="6,4"'
        colour = {"declared": "#1f4e79", "duplicate": "#7f7f7f"}.get(e.source, "#c0504d")
        parts.append(
            f'<line x1="{px + NODE_W / 2:.0f}" y1="{py + NODE_H:.0f}" x2="{cx + NODE_W / 2:.0f}" y2="{cy:.0f}" '
            f'stroke="{colour}" stroke-width="{1 + 4 * confidence:.1f}"{dash}>'
            f"<title>{html.escape(e.parent)} -> {html.escape(e.child)}: {e.source}, confidence {confidence:.2f}</title></line>"
        )
    for node, (x, y) in position.items():
        label = node if len(node) <= 28 else node[:12] + "..." + node[-13:]
        parts.append(
            f'<g><rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="#f2f2f2" stroke="#404040"/>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 19:.0f}" text-anchor="middle">{html.escape(label)}</text>'
            f"<title>{html.escape(node)}</title></g>"
        )
    parts.append("</g></svg>")
    return "\n".join(parts)


LEGEND = (
    "<p class='legend'><b>Legend</b>: solid blue = declared on the hub; dashed red = recovered from the weights; "
    "grey = duplicate; line width = confidence; hover a node or edge for its full name and numbers.</p>"
)


def tree_page(edges: list[DrawnEdge], title: str) -> str:
    """A standalone HTML page for one tree, with its legend."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'>{LEGEND}{tree_svg(edges, title)}</body></html>")


def histogram_svg(values: list[float], title: str, bins: int = 30, width: int = 420, height: int = 180) -> str:
    """Counts of ``values`` in equal bins, with the range on the axis."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" font-family="sans-serif" font-size="11">'
    if not values:
        return f'{head}<text x="10" y="20">{html.escape(title)}: no values</text></svg>'
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / span * bins))] += 1
    bar_w, top = width / bins, max(counts)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{20 + height * (1 - c / top):.1f}" width="{bar_w - 1:.1f}" '
        f'height="{height * c / top:.1f}" fill="#4f81bd"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return (
        f'{head}<text x="0" y="12" font-weight="bold">{html.escape(title)} (n={len(values)})</text>{bars}'
        f'<text x="0" y="{height + 34}">{low:.3g}</text>'
        f'<text x="{width}" y="{height + 34}" text-anchor="end">{high:.3g}</text></svg>'
    )
