"""``.. layers::``: the package's layers, drawn as an SVG from ``docs/layers.txt``.

The text file is the one source: ``tests/test_structure.py`` checks the code against it (no
import points up a layer) and this directive draws it, so the picture cannot drift from the
rules. Each layer is a box, top to bottom, with what it does and its modules; an arrow down the
side says which way imports may point.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

SOURCE = Path(__file__).resolve().parent.parent / "layers.txt"
WIDTH, BOX_H, GAP, LEFT = 820, 58, 14, 60


def read_layers(path: Path = SOURCE) -> list[tuple[str, str, list[str]]]:
    """(name, what it does, modules) per layer, top to bottom."""
    layers = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        head, modules = line.split("|", 1)
        name, _, purpose = head.partition(":")
        layers.append((name.strip(), purpose.strip(), modules.split()))
    return layers


def svg(layers: list[tuple[str, str, list[str]]]) -> str:
    height = len(layers) * (BOX_H + GAP) + GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-label="Layers of cache_invalidation">',
        '<defs><marker id="down" markerWidth="10" markerHeight="10" refX="5" refY="9" '
        'orient="auto"><path d="M0,0 L10,0 L5,10 z" fill="#555"/></marker></defs>',
        f'<line x1="25" y1="{GAP}" x2="25" y2="{height - GAP - 8}" stroke="#555" '
        'stroke-width="2" marker-end="url(#down)"/>',
        f'<text x="18" y="{height / 2}" font-size="12" fill="#555" '
        f'transform="rotate(-90 18 {height / 2})" text-anchor="middle">imports point down</text>',
    ]
    for i, (name, purpose, modules) in enumerate(layers):
        y = GAP + i * (BOX_H + GAP)
        shade = "#e8eef7" if i % 2 else "#f3f6fa"
        parts += [
            f'<rect x="{LEFT}" y="{y}" width="{WIDTH - LEFT - 10}" height="{BOX_H}" rx="6" '
            f'fill="{shade}" stroke="#7a8ca8"/>',
            f'<text x="{LEFT + 12}" y="{y + 22}" font-size="15" font-weight="bold" '
            f'fill="#1d2b44">{escape(name)}</text>',
            f'<text x="{LEFT + 12 + 9 * len(name)}" y="{y + 22}" font-size="12" '
            f'fill="#3d4b63"> — {escape(purpose)}</text>',
            f'<text x="{LEFT + 12}" y="{y + 44}" font-size="11" font-family="monospace" '
            f'fill="#3d4b63">{escape(" ".join(modules))}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)


class LayersDirective(Directive):
    has_content = False

    def run(self) -> list[nodes.Node]:
        env: Any = self.state.document.settings.env
        env.note_dependency(str(SOURCE))
        layers = read_layers()
        picture = nodes.raw("", svg(layers), format="html")
        items = nodes.bullet_list()
        for name, purpose, modules in layers:
            text = f"{name} ({purpose}): " + ", ".join(modules)
            items += nodes.list_item("", nodes.paragraph(text=text))
        return [picture, items]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("layers", LayersDirective)
    return {"parallel_read_safe": True, "version": "1"}
