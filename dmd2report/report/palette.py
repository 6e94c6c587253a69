"""Colours and marker shapes that stay readable with many classes, in light and dark mode.

Colour is never the only cue: each conditioning variant has its own marker shape, and hover,
legend labels and the search box name every class. Past LEGEND_CLASSES classes the most
populous classes keep their own colour and legend entry; the rest share one "other classes"
entry whose points get a stable hashed colour (the same class always gets the same colour).
"""

from __future__ import annotations

import zlib

# Mid-luminance colours: visible on white and on near-black backgrounds (no pastels, no near-black).
PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7",
    "#9c755f", "#1f9e89", "#d45087", "#6a8d2f", "#a05195", "#f95d6a", "#2f7ed8", "#c49c22",
    "#7b6fd6", "#e07b39", "#3caea3", "#b5656b",
]
LEGEND_CLASSES = 19          # own legend entries past which the rest are grouped
REAL_COLOUR = "#8d939b"
COVERED_COLOUR = "#2f7ed8"
UNCOVERED_COLOUR = "#e07b39"

VARIANT_MARKERS = {"class": "circle", "uniform": "square", "zero": "triangle", "blend": "diamond"}
_SPARE_MARKERS = ["inverted_triangle", "hex", "star", "square_pin", "triangle_pin", "plus"]
VARIANT_SYMBOLS = {"circle": "●", "square": "■", "triangle": "▲", "diamond": "◆", "inverted_triangle": "▼",
                   "hex": "⬢", "star": "★", "square_pin": "◼", "triangle_pin": "▴", "plus": "+"}


def variant_marker(variant: str, order: list[str]) -> str:
    if variant in VARIANT_MARKERS:
        return VARIANT_MARKERS[variant]
    extra = [v for v in order if v not in VARIANT_MARKERS]
    return _SPARE_MARKERS[extra.index(variant) % len(_SPARE_MARKERS)] if variant in extra else "circle"


def hashed_colour(key: int | str) -> str:
    return PALETTE[zlib.crc32(str(key).encode()) % len(PALETTE)]


def class_groups(counts: dict[int, int]) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """Split classes (id -> number of shown points) into legend classes and the rest.

    Returns ([(class_id, colour)] for classes with their own legend entry, {class_id: colour}
    for the grouped rest)."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    if len(ranked) <= LEGEND_CLASSES + 1:
        return [(c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(sorted(ranked))], {}
    own = sorted(ranked[:LEGEND_CLASSES])
    return [(c, PALETTE[i]) for i, c in enumerate(own)], {c: hashed_colour(c) for c in ranked[LEGEND_CLASSES:]}


def variant_colours(variants: list[str]) -> dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
