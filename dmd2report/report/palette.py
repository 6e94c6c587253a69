"""Colours and marker shapes that stay readable with many classes, in light and dark mode.

Colour is never the only cue: each conditioning variant has its own marker shape, hover, legend
labels and the search box name every class, and class labels sit on their clusters. Classes get
CLASS_COLOURS, ten hues chosen to stay apart from each other and from the grey of real points;
where they run out, the next ten classes reuse them with a dark-and-light outline (a ring), so the
first 2 x 10 classes each have a style of their own. Past LEGEND_CLASSES the most populous classes
keep their own style and key entry; the rest share one "other classes" entry whose points get a
stable hashed colour (the same class always gets the same colour).
"""

from __future__ import annotations

import zlib

# Mid-luminance hues, visible on white and on near-black (no pastels, no near-black, no grey).
CLASS_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#6a5acd"]
PALETTE = CLASS_COLOURS + ["#1f9e89", "#d45087", "#6a8d2f", "#a05195", "#f95d6a", "#2f7ed8", "#c49c22",
                           "#7b6fd6", "#e07b39", "#b5656b"]   # other charts' series colours
LEGEND_CLASSES = 2 * len(CLASS_COLOURS) - 1    # own styles past which the rest are grouped (+1 kept whole)
RING_COLOUR = "#1d2129"                          # the outline of the second ten classes (white halo in dark mode)
REAL_COLOUR = "#8d939b"
COVERED_COLOUR = "#2f7ed8"
UNCOVERED_COLOUR = "#e07b39"
# Real points by which of two generators covers them (data.COVER_DIFF order: neither, A only, B only, both).
COVER_DIFF_COLOURS = ["#e07b39", "#2f7ed8", "#d45087", "#59a14f"]
# Sequential ramp for map trust and distances, good (blue) to bad (red), all stops visible on both backgrounds.
RAMP = ["#2b6cb0", "#3a9a9a", "#8fb339", "#e0a030", "#d1495b"]

VARIANT_MARKERS = {"class": "circle", "uniform": "square", "zero": "triangle", "blend": "diamond"}
VARIANT_COLOURS = {"class": "#3b82c4", "uniform": "#e8871e", "zero": "#9b59b6", "blend": "#2a9d8f"}
_SPARE_MARKERS = ["inverted_triangle", "hex", "star", "square_pin", "triangle_pin", "plus"]
_SPARE_COLOURS = ["#c0392b", "#7f8c2d", "#d35400", "#16a085", "#8e44ad", "#b7950b"]
VARIANT_SYMBOLS = {"circle": "●", "square": "■", "triangle": "▲", "diamond": "◆", "inverted_triangle": "▼",
                   "hex": "⬢", "star": "★", "square_pin": "◼", "triangle_pin": "▴", "plus": "+"}
# Each conditioning in a few words (the map's key) and what it feeds the generator (hover; built by
# sampling.condition_vectors).
VARIANT_WORDS = {"class": ("class-conditioned", "one-hot label of its class"),
                 "uniform": ("uniform label", "1/K for every class"),
                 "zero": ("zero label", "no class at all"),
                 "blend": ("blended label", "mean one-hot of its class-conditioned twin's 10 nearest real images")}


def variant_marker(variant: str, order: list[str]) -> str:
    if variant in VARIANT_MARKERS:
        return VARIANT_MARKERS[variant]
    extra = [v for v in order if v not in VARIANT_MARKERS]
    return _SPARE_MARKERS[extra.index(variant) % len(_SPARE_MARKERS)] if variant in extra else "circle"


def hashed_colour(key: int | str) -> str:
    return PALETTE[zlib.crc32(str(key).encode()) % len(PALETTE)]


def class_style(i: int) -> tuple[str, bool]:
    """(colour, ringed) of the i-th class with a style of its own."""
    return CLASS_COLOURS[i % len(CLASS_COLOURS)], i >= len(CLASS_COLOURS)


def class_groups(counts: dict[int, int]) -> tuple[list[tuple[int, str, bool]], dict[int, str]]:
    """Split classes (id -> number of points) into classes with a style of their own and the rest.

    Returns ([(class_id, colour, ringed)] in class order, {class_id: colour} for the grouped rest)."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    n_own = len(ranked) if len(ranked) <= LEGEND_CLASSES + 1 else LEGEND_CLASSES
    own = sorted(ranked[:n_own])
    return [(c, *class_style(i)) for i, c in enumerate(own)], {c: hashed_colour(c) for c in ranked[n_own:]}


def generator_colours(names: list[str]) -> dict[str, str]:
    """One colour per compared generator, in their order (the reference's first)."""
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}


def variant_colours(variants: list[str]) -> dict[str, str]:
    extra = [v for v in variants if v not in VARIANT_COLOURS]
    return {v: VARIANT_COLOURS.get(v) or _SPARE_COLOURS[extra.index(v) % len(_SPARE_COLOURS)] for v in variants}
