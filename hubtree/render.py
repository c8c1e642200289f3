"""Pictures as SVG and HTML text: family trees, histograms, per-layer alpha. No plotting
library, no JavaScript, so a report opens anywhere, offline, and renders the same in a
headless browser.

Trees: a family of up to ``DRAW_MAX_NODES`` models is drawn (layered, scaled to the page
width so the root is always in view); every family also gets a collapsible outline
(HTML ``<details>``), the layout that stays readable at 1,000 models: the root is the first
line, each level folds, and long sibling lists scroll in their own box. A radial or zoomable
drawing of 1,000 nodes still puts 1,000 labels on one screen, and zooming needs JavaScript.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass

NODE_W, NODE_H, GAP_X, GAP_Y = 190, 30, 24, 70
DRAW_MAX_NODES = 40  # above this a drawing's labels are unreadable at page width: outline only
OPEN_DEPTH = 2  # outline levels shown unfolded
SOURCE_COLOUR = {"declared": "#1f4e79", "duplicate": "#7f7f7f"}  # anything else (recovered): #c0504d


@dataclass(frozen=True)
class DrawnEdge:
    parent: str | None
    child: str
    source: str  # declared | recovered | duplicate | root
    confidence: float | None


def tree_svg(edges: list[DrawnEdge], title: str = "", no_weights: frozenset[str] = frozenset()) -> str:
    """A layered drawing: roots on top, children below their parent; declared edges solid,
    recovered ones dashed, line width growing with confidence; models with no weights
    (a declared parent missing from the hub) in dashed grey boxes. It scales to the page width."""
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
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height + 30:.0f}" '
        f'style="width:100%;max-width:{width:.0f}px;height:auto" font-family="sans-serif" font-size="12">',
        f'<text x="{GAP_X}" y="20" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<g transform="translate({GAP_X},{40})">',
    ]
    for e in edges:
        if not e.parent or e.parent not in position:
            continue
        (px, py), (cx, cy) = position[e.parent], position[e.child]
        confidence = 1.0 if e.confidence is None or math.isnan(e.confidence) else e.confidence
        dash = "" if e.source == "declared" else ' stroke-dasharray="6,4"'
        colour = SOURCE_COLOUR.get(e.source, "#c0504d")
        parts.append(
            f'<line x1="{px + NODE_W / 2:.0f}" y1="{py + NODE_H:.0f}" x2="{cx + NODE_W / 2:.0f}" y2="{cy:.0f}" '
            f'stroke="{colour}" stroke-width="{1 + 4 * confidence:.1f}"{dash}>'
            f"<title>{html.escape(e.parent)} -> {html.escape(e.child)}: {e.source}, confidence {confidence:.2f}</title></line>"
        )
    for node, (x, y) in position.items():
        label = node if len(node) <= 28 else node[:12] + "..." + node[-13:]
        box = ('fill="#ffffff" stroke="#999999" stroke-dasharray="4,3"' if node in no_weights
               else 'fill="#f2f2f2" stroke="#404040"')
        text = ' fill="#777777" font-style="italic"' if node in no_weights else ""
        parts.append(
            f'<g><rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" {box}/>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 19:.0f}" text-anchor="middle"{text}>{html.escape(label)}</text>'
            f"<title>{html.escape(node)}{' (no weights on the hub)' if node in no_weights else ''}</title></g>"
        )
    parts.append("</g></svg>")
    return "\n".join(parts)


TREE_CSS = """
.legend { background: #fafafa; border: 1px solid #ddd; padding: 6px 10px; font-size: 13px; }
.legend svg { vertical-align: middle; }
.outline details { margin-left: 1.2em; } .outline > details { margin-left: 0; }
.outline summary { cursor: pointer; white-space: nowrap; } .outline .kids { max-height: 420px; overflow-y: auto; }
.outline .leaf { margin-left: 2.3em; white-space: nowrap; }
.edge { display: inline-block; width: 22px; margin-right: 4px; vertical-align: middle; }
.declared { border-top: 3px solid #1f4e79; } .recovered { border-top: 3px dashed #c0504d; }
.duplicate { border-top: 3px solid #7f7f7f; } .root { border-top: 3px solid transparent; }
.noweights { color: #777; font-style: italic; } .conf { color: #555; font-size: 12px; }
"""

LEGEND = (
    "<div class='legend'><b>Legend</b> "
    "<svg width='30' height='10'><line x1='0' y1='5' x2='30' y2='5' stroke='#1f4e79' stroke-width='3'/></svg> declared on the hub "
    "<svg width='30' height='10'><line x1='0' y1='5' x2='30' y2='5' stroke='#c0504d' stroke-width='3' stroke-dasharray='6,4'/></svg> recovered from weights "
    "<svg width='30' height='10'><line x1='0' y1='5' x2='30' y2='5' stroke='#7f7f7f' stroke-width='3'/></svg> duplicate "
    "&middot; line width = confidence "
    "<svg width='34' height='16'><rect x='1' y='1' width='32' height='14' rx='3' fill='#fff' stroke='#999' stroke-dasharray='4,3'/></svg> "
    "<span class='noweights'>no weights</span> (a declared parent missing from the hub) "
    "&middot; histograms: layers per bin, clipped at 3 IQR beyond the quartiles, outliers counted in the title "
    "&middot; alpha band: WeightWatcher's 2-6, where well-trained layers fall</div>"
)


def tree_outline(edges: list[DrawnEdge], no_weights: frozenset[str] = frozenset(), open_depth: int = OPEN_DEPTH) -> str:
    """The family as nested ``<details>``: root first, each model under its parent with the
    edge's source and confidence; levels below ``open_depth`` start folded."""
    by_child = {e.child: e for e in edges}
    children: dict[str, list[str]] = defaultdict(list)
    for e in sorted(edges, key=lambda e: e.child):
        if e.parent:
            children[e.parent].append(e.child)
    nodes = set(by_child) | set(children)
    roots = sorted(n for n in nodes if not (by_child.get(n) and by_child[n].parent)) or sorted(nodes)[:1]
    shown: set[str] = set()

    def line(node: str) -> str:
        edge = by_child.get(node)
        source = edge.source if edge and edge.parent else "root"
        confidence = "" if not edge or edge.confidence is None or math.isnan(edge.confidence) or not edge.parent else f" <span class='conf'>{edge.confidence:.2f}</span>"
        name = f"<span class='noweights'>{html.escape(node)} (no weights)</span>" if node in no_weights else html.escape(node)
        return f"<span class='edge {html.escape(source)}' title='{html.escape(source)}'></span>{name}{confidence}"

    def item(node: str, depth: int) -> tuple[str, int]:
        """The node's markup and how many descendants it has."""
        shown.add(node)
        kids = [c for c in children.get(node, []) if c not in shown]
        if not kids:
            return f"<div class='leaf'>{line(node)}</div>", 0
        inner = [item(c, depth + 1) for c in kids]
        below = sum(n + 1 for _, n in inner)
        return (f"<details{' open' if depth < open_depth else ''}><summary>{line(node)} "
                f"<span class='conf'>({len(kids)} {'child' if len(kids) == 1 else 'children'}, {below} below)</span></summary>"
                f"<div class='kids'>{''.join(m for m, _ in inner)}</div></details>"), below

    return "<div class='outline'>" + "".join(item(r, 0)[0] for r in roots) + "</div>"


def tree_html(edges: list[DrawnEdge], title: str, no_weights: frozenset[str] = frozenset()) -> str:
    """A family for a page: the drawing when it is small enough to read, and always the outline."""
    nodes = {e.child for e in edges} | {e.parent for e in edges if e.parent}
    drawing = (tree_svg(edges, title, no_weights) if len(nodes) <= DRAW_MAX_NODES else
               f"<p><b>{html.escape(title)}</b>: {len(nodes)} models, shown as a collapsible outline "
               f"(a drawing of more than {DRAW_MAX_NODES} is unreadable at page width).</p>")
    return f"<div class='tree'>{drawing}{tree_outline(edges, no_weights)}</div>"


def tree_page(edges: list[DrawnEdge], title: str, no_weights: frozenset[str] = frozenset()) -> str:
    """A standalone HTML page for one tree, with its legend."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>body {{ font-family: sans-serif; margin: 1.5em; }} {TREE_CSS}</style></head>"
            f"<body>{LEGEND}{tree_html(edges, title, no_weights)}</body></html>")


def histogram_svg(values: list[float], title: str, bins: int = 30, width: int = 420, height: int = 180) -> str:
    """Counts of ``values`` in equal bins, with both axes labelled, clipped to Tukey's far
    fences ``[Q1 - 3 IQR, Q3 + 3 IQR]``: values outside are counted in the title, so a few
    outliers (alpha of a layer whose fit failed) cannot squash the rest into one bar."""
    values = sorted(v for v in values if v is not None and math.isfinite(v))
    left, bottom = 44, 30  # room for the count axis and the value axis
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + left + 10}" height="{height + bottom + 24}" '
            f'font-family="sans-serif" font-size="11">')
    if not values:
        return f'{head}<text x="10" y="20">{html.escape(title)}: no values</text></svg>'
    q1, q3 = _quantile(values, 0.25), _quantile(values, 0.75)
    low, high = max(values[0], q1 - 3 * (q3 - q1)), min(values[-1], q3 + 3 * (q3 - q1))
    inside = [v for v in values if low <= v <= high]
    clipped = len(values) - len(inside)
    span = (high - low) or 1.0
    counts = [0] * bins
    for v in inside:
        counts[min(bins - 1, int((v - low) / span * bins))] += 1
    bar_w, top, y0 = width / bins, max(counts), 20 + height
    bars = "".join(
        f'<rect x="{left + i * bar_w:.1f}" y="{y0 - height * c / top:.1f}" width="{bar_w - 1:.1f}" '
        f'height="{height * c / top:.1f}" fill="#4f81bd"><title>{low + i * span / bins:.3g} to {low + (i + 1) * span / bins:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    note = f", {clipped} outside [{low:.3g}, {high:.3g}] not shown" if clipped else ""
    ticks = "".join(
        f'<line x1="{left + f * width:.1f}" y1="{y0}" x2="{left + f * width:.1f}" y2="{y0 + 4}" stroke="#333"/>'
        f'<text x="{left + f * width:.1f}" y="{y0 + 16}" text-anchor="middle">{low + f * span:.3g}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    ) + "".join(
        f'<text x="{left - 6}" y="{y0 - f * height + 4:.1f}" text-anchor="end">{round(f * top)}</text>'
        f'<line x1="{left - 3}" y1="{y0 - f * height:.1f}" x2="{left}" y2="{y0 - f * height:.1f}" stroke="#333"/>'
        for f in (0, 0.5, 1)
    )
    axes = (f'<line x1="{left}" y1="20" x2="{left}" y2="{y0}" stroke="#333"/>'
            f'<line x1="{left}" y1="{y0}" x2="{left + width}" y2="{y0}" stroke="#333"/>'
            f'<text x="12" y="{20 + height / 2}" transform="rotate(-90 12 {20 + height / 2})" text-anchor="middle">layers</text>')
    return (f'{head}<text x="0" y="12" font-weight="bold">{html.escape(title)} (n={len(values)}{note})</text>'
            f"{axes}{bars}{ticks}</svg>")


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def alpha_by_layer_svg(layers: list[tuple[str, float, float, float]], width: int = 860, height: int = 220) -> str:
    """Per layer (in name order) the median power-law alpha over models with its interquartile
    range, on WeightWatcher's 2-6 band (alpha < 2: over-trained; > 6: under-trained). ``layers``:
    (name, median, q1, q3). The y axis spans 0-10, values beyond are drawn on its edge."""
    left, y_max, y0 = 40, 10.0, 20 + height
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + left + 10}" height="{height + 50}" font-family="sans-serif" font-size="11">'
    if not layers:
        return f'{head}<text x="10" y="20">alpha per layer: no values</text></svg>'

    def y(v: float) -> float:
        return y0 - height * min(max(v, 0.0), y_max) / y_max

    step = width / len(layers)
    band = f'<rect x="{left}" y="{y(6):.1f}" width="{width}" height="{y(2) - y(6):.1f}" fill="#e2f0d9"><title>WeightWatcher 2-6</title></rect>'
    marks = "".join(
        f'<line x1="{left + (i + 0.5) * step:.1f}" y1="{y(lo):.1f}" x2="{left + (i + 0.5) * step:.1f}" y2="{y(hi):.1f}" stroke="#9bb7d4"/>'
        f'<circle cx="{left + (i + 0.5) * step:.1f}" cy="{y(mean):.1f}" r="{max(1.5, min(3.5, step / 3)):.1f}" '
        f'fill="{"#4f81bd" if 2 <= mean <= 6 else "#c0504d"}"><title>{html.escape(name)}: median {mean:.2f} (quartiles {lo:.2f}-{hi:.2f})</title></circle>'
        for i, (name, mean, lo, hi) in enumerate(layers)
    )
    ticks = "".join(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
                    f'<line x1="{left - 3}" y1="{y(v):.1f}" x2="{left + width}" y2="{y(v):.1f}" stroke="#ddd"/>' for v in (0, 2, 4, 6, 8, 10))
    axes = (f'<line x1="{left}" y1="20" x2="{left}" y2="{y0}" stroke="#333"/><line x1="{left}" y1="{y0}" x2="{left + width}" y2="{y0}" stroke="#333"/>'
            f'<text x="{left + width / 2}" y="{y0 + 18}" text-anchor="middle">layer (by name, {len(layers)} layers; hover for names)</text>')
    return (f'{head}<text x="0" y="12" font-weight="bold">power-law alpha per layer: median over models, interquartile bar; '
            f'green band = WeightWatcher 2-6, red dots outside it</text>{band}{ticks}{axes}{marks}</svg>')
