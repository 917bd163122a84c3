"""Small inline SVG charts (no JavaScript, no downloads): used by the dashboard and the static report."""

from __future__ import annotations

from html import escape
from typing import Iterable

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"]


def score_color(score: float | None, lo: float = 0.0, hi: float = 1.0) -> str:
    if score is None:
        return "#d1d5db"
    x = 0.0 if hi <= lo else max(0.0, min(1.0, (score - lo) / (hi - lo)))
    return f"hsl({int(120 * x)}, 65%, {48 + int(10 * (1 - x))}%)"


def line_chart(series: dict[str, list[float]], title: str, width: int = 360, height: int = 180,
               y_range: tuple[float, float] | None = None) -> str:
    values = [v for vs in series.values() for v in vs]
    if not values:
        return ""
    lo, hi = y_range or (min(values), max(values))
    hi = hi if hi > lo else lo + 1.0
    n = max(len(vs) for vs in series.values())
    left, right, top, bottom = 40, 10, 22, 22
    w, h = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> str:
        x = left + (w * i / max(1, n - 1))
        y = top + h * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#9ca3af"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#9ca3af"/>',
             f'<text x="4" y="{top + 8}" class="tick">{hi:.2f}</text><text x="4" y="{top + h}" class="tick">{lo:.2f}</text>',
             f'<text x="{left + w - 30}" y="{height - 4}" class="tick">{n} epochs</text>']
    for k, (label, vs) in enumerate(series.items()):
        if not vs:
            continue
        color = PALETTE[k % len(PALETTE)]
        points = " ".join(xy(i, v) for i, v in enumerate(vs))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"><title>{escape(label)}</title></polyline>')
        parts.append(f'<text x="{left + 6 + 110 * k}" y="{top + 12}" fill="{color}" class="legend">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(groups: list[str], series: dict[str, list[float | None]], title: str, width: int = 720, height: int = 220) -> str:
    """Grouped bars: one group per task, one bar per series (experiment), accuracies in [0, 1]."""
    if not groups or not series:
        return ""
    left, top, bottom = 36, 24, 44
    w, h = width - left - 10, height - top - bottom
    group_w = w / len(groups)
    bar_w = group_w * 0.8 / max(1, len(series))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#9ca3af"/>',
             f'<text x="2" y="{top + 8}" class="tick">1.0</text><text x="2" y="{top + h}" class="tick">0.0</text>']
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        parts.append(f'<text x="{x0:.1f}" y="{top + h + 16}" class="tick">{escape(group)}</text>')
        for k, (label, values) in enumerate(series.items()):
            value = values[g]
            if value is None:
                continue
            bh = h * max(0.0, min(1.0, value))
            parts.append(f'<rect x="{x0 + k * bar_w:.1f}" y="{top + h - bh:.1f}" width="{bar_w * 0.92:.1f}" height="{bh:.1f}" '
                         f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(label)}: {value:.4f}</title></rect>')
    for k, label in enumerate(series):
        parts.append(f'<text x="{left + 4 + (k % 4) * 175}" y="{height - 4 - 12 * (k // 4)}" fill="{PALETTE[k % len(PALETTE)]}" '
                     f'class="legend">{escape(label[:28])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_by_iteration(points: Iterable[tuple[int, float, str]], title: str, width: int = 720, height: int = 220) -> str:
    points = list(points)
    if not points:
        return ""
    left, top, bottom = 40, 24, 24
    w, h = width - left - 10, height - top - bottom
    xs = [p[0] for p in points]
    lo = min(p[1] for p in points)
    hi = max(p[1] for p in points)
    hi = hi if hi > lo else lo + 0.01
    nx = max(1, max(xs))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#9ca3af"/>',
             f'<text x="2" y="{top + 8}" class="tick">{hi:.3f}</text><text x="2" y="{top + h}" class="tick">{lo:.3f}</text>',
             f'<text x="{left + w - 60}" y="{height - 4}" class="tick">iteration</text>']
    best = -1.0
    path = []
    for x, y, label in sorted(points):
        px, py = left + w * x / nx, top + h * (1 - (y - lo) / (hi - lo))
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{score_color(y, lo, hi)}" stroke="#374151">'
                     f'<title>{escape(label)}: {y:.4f}</title></circle>')
        if y > best:
            best = y
        path.append(f"{px:.1f},{top + h * (1 - (best - lo) / (hi - lo)):.1f}")
    parts.append(f'<polyline fill="none" stroke="#6b7280" stroke-dasharray="4 3" points="{" ".join(path)}"><title>best so far</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def lineage_tree(nodes: list[dict], href: str = "/experiments/{id}", width: int = 900) -> str:
    """Parent -> child tree; nodes are dicts with id, name, parent_id, mean_score, status. Clickable."""
    if not nodes:
        return ""
    by_id = {n["id"]: n for n in nodes}
    children: dict[int | None, list[dict]] = {}
    for n in nodes:
        parent = n["parent_id"] if n["parent_id"] in by_id else None
        children.setdefault(parent, []).append(n)
    order: list[tuple[dict, int]] = []

    def walk(node: dict, depth: int) -> None:
        order.append((node, depth))
        for child in children.get(node["id"], []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    scored = [n["mean_score"] for n in nodes if n.get("mean_score") is not None]
    lo, hi = (min(scored), max(scored)) if scored else (0.0, 1.0)
    row_h, indent = 24, 22
    height = row_h * len(order) + 10
    pos = {node["id"]: (10 + depth * indent, 16 + i * row_h) for i, (node, depth) in enumerate(order)}
    parts = [f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="lineage">']
    for node, _ in order:
        parent = node["parent_id"]
        if parent in pos:
            (px, py), (cx, cy) = pos[parent], pos[node["id"]]
            parts.append(f'<path d="M{px + 5},{py + 5} V{cy} H{cx}" fill="none" stroke="#9ca3af"/>')
    for node, _ in order:
        x, y = pos[node["id"]]
        score = node.get("mean_score")
        color = "#f87171" if node.get("status") == "failed" else score_color(score, lo, hi)
        label = f'{node["name"]}  {score:.4f}' if score is not None else f'{node["name"]}  ({node.get("status")})'
        parts.append(f'<a href="{href.format(id=node["id"])}" class="node"><circle cx="{x + 5}" cy="{y + 1}" r="6" '
                     f'fill="{color}" stroke="#374151"/><text x="{x + 16}" y="{y + 5}" class="node-label">{escape(label)}</text></a>')
    parts.append("</svg>")
    return "".join(parts)


def score_grid(rows: dict[str, list[str]], columns: list[str], values: dict[str, dict[str, dict[str, float]]],
               title: str, note: str = "", marks: dict[str, dict[str, dict[str, str]]] | None = None) -> str:
    """A standalone heat table: one row per item (grouped under headings), one column per series, each cell
    coloured by its score in [0, 1] and labelled with it; grey where a series has no score yet.

    `rows` maps a group heading to its row labels; `values[column][group][label]` is a score and
    `marks[column][group][label]` an optional note after it (e.g. how many of its runs are done). The SVG
    carries its own styles, so it reads the same embedded in a page, opened alone, or shown by a repository.
    """
    label_w, row_h, head_h = 190, 17, 34
    cell_w = max(118, 7 * max((len(c) for c in columns), default=0) + 8)  # room for the column's name
    n_rows = sum(len(labels) + 1 for labels in rows.values())
    width = max(label_w + cell_w * len(columns) + 10, 6 * len(note) + 8)
    height = head_h + row_h * n_rows + (22 if note else 8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="grid" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{escape(title)}">',
             '<style>text{font-family:system-ui,sans-serif;font-size:11px;fill:#111827}.t{font-size:13px;font-weight:600}'
             '.g{font-weight:600}.m{fill:#6b7280}</style>',
             f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="4" y="14" class="t">{escape(title)}</text>']
    for c, column in enumerate(columns):
        parts.append(f'<text x="{label_w + c * cell_w + 4}" y="{head_h - 6}" class="g">{escape(column)}</text>')
    y = head_h
    for group, labels in rows.items():
        parts.append(f'<text x="4" y="{y + row_h - 5}" class="g">{escape(group)}</text>')
        y += row_h
        for label in labels:
            parts.append(f'<text x="14" y="{y + row_h - 5}">{escape(label)}</text>')
            for c, column in enumerate(columns):
                score = values.get(column, {}).get(group, {}).get(label)
                mark = (marks or {}).get(column, {}).get(group, {}).get(label)
                text = "not run" if score is None else f"{score:.4f}" + (f" {mark}" if mark else "")
                muted = ' class="m"' if score is None else ""
                x = label_w + c * cell_w
                parts.append(f'<rect x="{x}" y="{y + 1}" width="{cell_w - 3}" height="{row_h - 2}" '
                             f'fill="{score_color(score)}"><title>{escape(column)} {escape(group)} {escape(label)}: '
                             f'{escape(text)}</title></rect><text x="{x + 6}" y="{y + row_h - 5}"{muted}>{escape(text)}</text>')
            y += row_h
    if note:
        parts.append(f'<text x="4" y="{height - 6}" class="m">{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)
