"""Detail on zoom: every point of the map as spatial tiles, small script files the map page loads as it zooms in
(script tags load from file://, where fetch and XHR do not).

The points form a quadtree over the map's extent: level z cuts it into 2^z x 2^z tiles; a point sits at the
shallowest level whose tile still has room (TILE_POINTS, taken in the order of a hash of the sample id, so each
level is an even sample of what is left), the deepest level (MAX_LEVEL) holding whatever remains. Zoomed in s
times, site.js loads the tiles of the levels with 2^z <= 2s that meet the view: about TILE_POINTS per quarter
view per level, whatever N. A tile also records how many points its region holds at its level and below
(`sub`), so a tile's points stand for `sub / n` points each at the deepest level loaded: site.js redraws the
density images at the view's resolution from the loaded points, weighted so, an estimate of every point's density.

Each tile is `tiles/<z>/<x>_<y>.js`, one call `DMD2_TILE({...})`: its box, its column table and one base64
zlib blob (decompressed in the page by DecompressionStream) holding the columns, coordinates as uint16 across
the tile's box, the per-point filter fields as uint16 across their range over all N (65535: none), codes as
small integers, then the sample ids (a common prefix once, the rest newline-joined). The points drawn on the
map are in the tiles too (flag `drawn`; density counts them, the detail layers skip them).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from .view import Extent, SiteView

TILE_POINTS = 2000      # points a tile holds (the deepest level's tiles hold whatever remains)
MAX_LEVEL = 12          # 4096 x 4096 tiles at the deepest level
ZOOM_START = 1.5        # site.js loads tiles once the view is this many times smaller than the map
QUANT_NONE = 65535      # a quantised field's "no value"
TILE_DIR = "tiles"


def tile_levels(u: np.ndarray, v: np.ndarray, priority: np.ndarray, cap: int = TILE_POINTS,
                max_level: int = MAX_LEVEL) -> np.ndarray:
    """Each point's quadtree level: `u`, `v` in [0, 1) over the extent; points of lower `priority` first. One
    stable sort of the points still unplaced per level (vectorised; a dozen levels at most)."""
    n = len(u)
    level = np.full(n, max_level, np.int8)
    left = np.argsort(priority, kind="stable")          # unplaced points, in priority order
    for z in range(max_level):
        if not len(left):
            break
        side = 1 << z
        tile = (v[left] * side).astype(np.int64) * side + (u[left] * side).astype(np.int64)
        order = np.argsort(tile, kind="stable")          # by tile, priority order within
        ts = tile[order]
        first = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        rank = np.arange(len(ts)) - np.repeat(first, np.diff(np.r_[first, len(ts)]))
        take = rank < cap
        level[left[order[take]]] = z
        left = left[np.sort(order[~take])]
    return level


def _unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a - lo) / (hi - lo), 0, np.nextafter(1.0, 0))


def _quantise(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = np.asarray(a, np.float64)
    q = np.round(np.clip((a - lo) / ((hi - lo) or 1.0), 0, 1) * (QUANT_NONE - 1))
    return np.where(np.isfinite(a), q, QUANT_NONE).astype(np.uint16)


def _range(a: np.ndarray) -> list[float]:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return [float(a.min()), float(a.max())] if len(a) else [0.0, 1.0]


def point_columns(view: SiteView) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """The per-point columns tiles carry, over all N points (the fields the map's filters use, colour codes), and the
    range each quantised field is spread over."""
    full = view.full
    P = full.points
    n = len(P)
    variant_names = list(dict.fromkeys(P["variant"]))
    real = (P["set"] == "real").to_numpy()
    nb = full.neighbours
    dist = np.asarray(nb.real_dist, np.float64)[:, 0] if nb.real_dist.shape[1] else np.full(n, np.nan)
    gdist = np.asarray(nb.gen_dist, np.float64)[:, 0] if nb.gen_dist.shape[1] else np.full(n, np.nan)
    dist = np.where(np.asarray(nb.real_index)[:, 0] >= 0, dist, np.nan) if nb.real_index.shape[1] else dist
    gdist = np.where(np.asarray(nb.gen_index)[:, 0] >= 0, gdist, np.nan) if nb.gen_index.shape[1] else gdist
    radius = np.where(real, np.nan if full.cover_radius is None else np.asarray(full.cover_radius, np.float64), np.nan)
    floats = {"dist": dist, "gdist": gdist, "trust": P["trust"].to_numpy(np.float64), "radius": radius}
    ranges = {k: _range(a) for k, a in floats.items()}
    drawn = np.zeros(n, np.uint8)
    drawn[view.rows[view.drawn]] = 1
    cols = {k: _quantise(a, *ranges[k]) for k, a in floats.items()} | {
        "variant": pd.Categorical(P["variant"], categories=variant_names).codes.astype(np.uint8),
        "cls": P["class_id"].to_numpy(np.int64).clip(-1, 32767).astype(np.int16),
        "covered": P["covered"].fillna(False).astype(bool).to_numpy().astype(np.uint8),
        "covers": np.where(real, full.cover_counts(), 0).clip(0, 65535).astype(np.uint16),
        "drawn": drawn,
    }
    if full.comparison is not None:
        gens = {g: i for i, g in enumerate(full.comparison.generators)}
        cols["generator"] = P["generator"].map(gens).fillna(-1).to_numpy(np.int64).astype(np.int8)
        cols["coverDiff"] = P["cover_diff"].to_numpy(np.int64).astype(np.uint8)
    return cols, ranges


def _tile_script(key: str, box: list[float], x: np.ndarray, y: np.ndarray, cols: dict[str, np.ndarray],
                 ids: list[str], sub: int) -> str:
    arrays = {"x": _quantise(x, box[0], box[2]), "y": _quantise(y, box[1], box[3]), **cols}
    table, parts, at = [], [], 0
    for name, a in arrays.items():
        b = np.ascontiguousarray(a).tobytes()
        pad = -len(b) % 4                                  # each column 4-byte aligned: typed-array views
        table.append([name, a.dtype.str.lstrip("<|="), at, len(a)])
        parts += [b, b"\0" * pad]
        at += len(b) + pad
    prefix = os.path.commonprefix(ids) if len(ids) > 1 else ""
    text = "\n".join(s[len(prefix):] for s in ids).encode("utf-8")
    blob = zlib.compress(b"".join(parts) + text, 6)
    meta = {"key": key, "n": len(ids), "sub": int(sub), "box": box, "cols": table, "idAt": at, "prefix": prefix,
            "data": base64.b64encode(blob).decode("ascii")}
    return "DMD2_TILE(" + json.dumps(meta, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c") + ");\n"


def write_tiles(view: SiteView, out: Path, cap: int = TILE_POINTS, max_level: int = MAX_LEVEL) -> dict:
    """Write every point of `view.full` as tiles under `out` (the site's tiles/ folder) and return the index
    site.js reads (DMD2_DATA.tiles): the extent, levels, the quantised fields' ranges, and each tile's key with
    its point count and `sub` (points of its region at its level and deeper)."""
    P = view.full.points
    x, y = P["x"].to_numpy(np.float64), P["y"].to_numpy(np.float64)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    ext = Extent.of(x, y)
    u, v = _unit(x[ok], ext.x0, ext.x1), _unit(y[ok], ext.y0, ext.y1)
    priority = pd.util.hash_pandas_object(P["sample_id"].astype(str).iloc[ok], index=False).to_numpy()
    level = tile_levels(u, v, priority, cap, max_level)
    cols, ranges = point_columns(view)
    ids = P["sample_id"].astype(str).to_numpy()
    index = {}
    for z in range(int(level.max()) + 1 if len(level) else 0):
        side = 1 << z
        tx, ty = (u * side).astype(np.int64), (v * side).astype(np.int64)
        tile = ty * side + tx
        sub_keys, sub_n = np.unique(tile[level >= z], return_counts=True)   # no side x side array at depth
        at = np.flatnonzero(level == z)
        if not len(at):
            continue
        at = at[np.argsort(tile[at], kind="stable")]
        ts = tile[at]
        bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])
        for s, e in itertools.pairwise(bounds):
            t, members = int(ts[s]), at[s:e]
            rows = ok[members]
            bx, by = t % side, t // side
            w, h = (ext.x1 - ext.x0) / side, (ext.y1 - ext.y0) / side
            box = [ext.x0 + bx * w, ext.y0 + by * h, ext.x0 + (bx + 1) * w, ext.y0 + (by + 1) * h]
            key = f"{z}/{bx}_{by}"
            n_sub = int(sub_n[np.searchsorted(sub_keys, t)])
            files.save_text(out / f"{z}" / f"{bx}_{by}.js",
                            _tile_script(key, box, x[rows], y[rows], {k: c[rows] for k, c in cols.items()},
                                         ids[rows].tolist(), n_sub))
            index[key] = [len(rows), n_sub]
    return {"extent": [ext.x0, ext.y0, ext.x1, ext.y1], "levels": int(level.max()) + 1 if len(level) else 0,
            "cap": cap, "start": ZOOM_START, "fields": ranges, "none": QUANT_NONE, "tiles": index}
