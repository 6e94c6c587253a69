"""What the site carries of a report at any N: a capped, class-balanced sample of points drawn on the map,
the few other points the pages show (class grids, variant tables, atlas anchors), and density images
of every point.

The full `ReportData` can hold millions of points; the site holds at most `max_points` drawn points plus
a bounded number of page points, so its size and first render stop growing with N past the cap. Counts,
metrics, histograms and density layers always come from the full data. `SiteView.site` is a
`ReportData` of the carried points only (point rows renumbered 0..m-1, thumbnails only theirs), so the
page and figure code works on it unchanged; `SiteView.local` maps full point rows to site rows (-1 = not
carried).

Neighbour lists stay the exact lists over all N points (as measure computed them): a neighbour the site
does not carry keeps its distance and class (`nb_real_class`, `nb_gen_class`) and has row -1 with a
finite distance, which the page shows as "not in this site" (padding has row -1 and no distance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import palette
from .data import COVER_DIFF, Neighbours, Ragged, ReportData

MAX_GRID = 60                        # thumbnails per grid on class pages
COMPARE_CLASSES, COMPARE_SEEDS = 8, 4   # the comparison page's same-seed grids: classes it opens on, seeds each
COMPARE_SEED_BUDGET = 2000           # seeds carried for the comparison page's class selector, over all classes (at least one each)
VARIANT_CLASSES, VARIANT_SEEDS = 8, 6  # the variants page opens on this many classes, with this many seeds each
VARIANT_SEED_BUDGET = 2000           # seeds carried for the page's class selector, over all classes (at least one each)
MAX_COVERED_BY = 12                  # covering generated samples listed (and carried) per drawn real point
DENSITY_BINS = 256                   # density cells per side over the map's extent
GALLERY_SIZE = 48                    # samples in each ranked gallery (off-manifold, nearest pairs)
GALLERY_CLASSES, GALLERY_PER_CLASS = 40, 8   # the uncovered-real gallery: classes shown, images each


@dataclass
class SiteView:
    full: ReportData
    site: ReportData
    rows: np.ndarray                 # (m,) full point row of each site row
    local: np.ndarray                # (n,) site row of each full point row, -1 when not carried
    drawn: np.ndarray                # (m,) bool: drawn as a point on the map (the capped sample)
    nb_real_class: np.ndarray        # (m, k) class of each real neighbour (full lists), -1 padding
    nb_gen_class: np.ndarray
    covered_count: np.ndarray        # (m,) how many generated samples cover each site point (all of them)
    max_points: int
    galleries: Galleries | None = None   # the ranked samples (full point rows), carried by the site
    tiled: bool = False              # the folder form past the cap: every point also in tiles loaded on zoom (tiles.py)

    @property
    def n_total(self) -> int:
        return len(self.full.points)

    @property
    def n_drawn(self) -> int:
        return int(self.drawn.sum())

    @property
    def capped(self) -> bool:
        return self.n_drawn < self.n_total


def _water_fill(counts: np.ndarray, budget: int) -> np.ndarray:
    """Quotas q <= counts with sum min(budget, counts.sum()), as equal as the counts allow: every group
    gets min(count, level); the remainder goes one each to the lowest-index groups still above the level."""
    counts = np.asarray(counts, np.int64)
    if budget >= counts.sum():
        return counts.copy()
    srt = np.sort(counts)
    # With level L, total(L) = sum(min(c, L)). Find the largest L with total(L) <= budget.
    below = np.concatenate([[0], np.cumsum(srt)])[:-1]          # sum of the smaller counts
    left = len(srt) - np.arange(len(srt))                          # groups at or above srt[i]
    totals = below + srt * left                                    # total(srt[i])
    i = np.searchsorted(totals, budget, side="right") - 1          # last sorted count with total <= budget
    if i < 0:
        level = budget // len(srt)
    else:
        level = int(srt[i] + (budget - totals[i]) // left[i + 1]) if i + 1 < len(srt) else int(srt[i])
    q = np.minimum(counts, level)
    extra = budget - int(q.sum())
    if extra > 0:
        up = np.flatnonzero(counts > level)[:extra]
        q[up] += 1
    return q


def balanced_sample(points: pd.DataFrame, max_points: int) -> np.ndarray:
    """Sorted point rows of a class-balanced sample of at most `max_points` points, or every row when
    there are no more than that. The budget is shared equally among the sets (real and each generated
    variant), then within each set equally among its classes (`_water_fill`: small groups are taken
    whole, their unused share goes to the others). Within a group, points are taken in the order of
    a hash of their sample_id: deterministic, and a point stays drawn when other points are added."""
    n = len(points)
    if n <= max_points:
        return np.arange(n)
    variant = pd.factorize(points["variant"], sort=False)[0]
    cls = points["class_id"].to_numpy(np.int64)
    group = pd.factorize(pd.MultiIndex.from_arrays([variant, cls]), sort=True)[0]
    n_groups = int(group.max()) + 1
    g_size = np.bincount(group, minlength=n_groups)
    g_variant = np.zeros(n_groups, np.int64)
    g_variant[group] = variant
    v_quota = _water_fill(np.bincount(variant), max_points)
    quota = np.zeros(n_groups, np.int64)
    for v, budget in enumerate(v_quota):  # one water-fill per set (a handful), vectorised over its classes
        gs = np.flatnonzero(g_variant == v)
        quota[gs] = _water_fill(g_size[gs], int(budget))
    key = pd.util.hash_pandas_object(points["sample_id"].astype(str), index=False).to_numpy()
    order = np.lexsort((np.arange(n), key, group))  # by group, then hash, ties by row
    starts = np.concatenate([[0], np.cumsum(g_size)])[:-1]
    rank = np.arange(n) - starts[group[order]]
    return np.sort(order[rank < quota[group[order]]])


def chosen_classes(data: ReportData) -> list[int]:
    present = data.points["class_id"][data.points["class_id"] >= 0]
    if data.chosen_classes:
        return [int(c) for c in data.chosen_classes if c in set(present)]
    counts = present.value_counts()
    return sorted(int(c) for c in counts.index[:data.max_class_pages])


def variant_selection(variants: pd.DataFrame, chosen: list[int]) -> tuple[list[int], pd.DataFrame]:
    """The classes the variants page opens on (the first VARIANT_CLASSES chosen ones), and the rows it carries for
    its class selector: every class with variant samples, VARIANT_SEEDS seeds each for the opening classes and,
    while all classes' seeds fit in VARIANT_SEED_BUDGET, for every class; past it an equal share, at least one
    (1,000 classes: two seeds each), so the page stays a bounded size at any class count."""
    v = variants
    present = list(dict.fromkeys(v["class_id"]))
    opening = [c for c in chosen if c in set(present)][:VARIANT_CLASSES] or present[:VARIANT_CLASSES]
    per_class = max(1, min(VARIANT_SEEDS, VARIANT_SEED_BUDGET // max(len(present), 1)))
    seeds = v.drop_duplicates(["class_id", "seed_index"])
    rank = seeds.groupby("class_id").cumcount().to_numpy()
    take = (rank < per_class) | (seeds["class_id"].isin(opening).to_numpy() & (rank < VARIANT_SEEDS))
    keep = pd.MultiIndex.from_frame(v[["class_id", "seed_index"]]).isin(
        pd.MultiIndex.from_frame(seeds[take][["class_id", "seed_index"]]))
    return [int(c) for c in opening], v[keep]


def class_grid_rows(points: pd.DataFrame, classes: list[int]) -> pd.DataFrame:
    """The first MAX_GRID real and class-conditioned generated points of each class (point rows as the
    index). Samples of the other conditionings carry their seed's class but were not asked for it."""
    sub = points[points["class_id"].isin(classes) & points["variant"].isin(["real", "class"])]
    return sub.groupby(["class_id", "set"], sort=False).head(MAX_GRID)


def coverage_k(data: ReportData) -> int:
    """The k of coverage's k-NN balls: the run's metrics.k_dc (the configured default when data has no config)."""
    from ..config import MetricsConfig
    k = (data.run.config.get("metrics") or {}).get("k_dc")
    return int(k if k is not None else MetricsConfig().k_dc)


def cover_diff_kinds(full: ReportData) -> list[tuple[str, str, int]]:
    """(words, colour, real points) of each COVER_DIFF kind, the pair named: neither, A only (name), B only (name),
    both; counts over every real point."""
    cmp, P = full.comparison, full.points
    codes = np.bincount(P["cover_diff"].to_numpy(np.int64)[P["set"].to_numpy() == "real"], minlength=len(COVER_DIFF))
    words = [w + {1: f" ({cmp.a})", 2: f" ({cmp.b})"}.get(i, "") for i, w in enumerate(COVER_DIFF)]
    return [(w, c, int(n)) for w, c, n in zip(words, palette.COVER_DIFF_COLOURS, codes)]


def shown_per_class(steps: pd.DataFrame) -> int:
    """Trajectory paths drawn by default for each class (the most any class has: classes with fewer stored show all)."""
    shown = steps[steps["shown"].astype(bool)]
    return int(shown.groupby("class_id")["path"].nunique().max()) if len(shown) else 0


@dataclass
class Galleries:
    """The samples that matter, ranked over every point (full point rows): the class-conditioned samples farthest
    from their nearest real image (off the real manifold) and nearest to it (memorisation, with that real image),
    and per class the real images no class-conditioned sample covers (mode dropping), farthest from any first."""
    far: np.ndarray                  # generated rows, distance to the nearest real descending
    far_dist: np.ndarray
    near: np.ndarray                 # generated rows, distance to the nearest real ascending
    near_real: np.ndarray            # each one's nearest real row
    near_dist: np.ndarray
    uncovered: pd.DataFrame          # class_id, row, dist (to the nearest class-conditioned sample), n_uncovered, n_real


def ranked_galleries(data: ReportData) -> Galleries:
    """The galleries from the measure stage's exact neighbour lists (headline space): a partial sort of one column,
    no pairwise matrix, so the same at a million points."""
    P = data.points
    cond = np.flatnonzero((P["variant"] == "class").to_numpy())
    d = np.asarray(data.neighbours.real_dist, np.float64)[cond, 0]
    ok = np.isfinite(d) & (np.asarray(data.neighbours.real_index)[cond, 0] >= 0)
    cond, d = cond[ok], d[ok]

    def top(key):
        k = min(GALLERY_SIZE, len(key))
        part = np.argpartition(key, k - 1)[:k] if 0 < k < len(key) else np.arange(len(key))
        return part[np.argsort(key[part], kind="stable")]
    far, near = top(-d), top(d)
    real = (P["set"] == "real").to_numpy()
    cls = P["class_id"].to_numpy(np.int64)
    unc = np.flatnonzero(real & ~P["covered"].fillna(False).astype(bool).to_numpy())
    gd = np.asarray(data.neighbours.gen_dist, np.float64)[unc, 0]
    n_real = pd.Series(cls[real]).value_counts()
    n_unc = pd.Series(cls[unc]).value_counts()
    table = pd.DataFrame({"class_id": cls[unc], "row": unc, "dist": np.where(np.isfinite(gd), gd, np.inf)})
    table["n_uncovered"] = n_unc.reindex(table["class_id"]).to_numpy()
    table["n_real"] = n_real.reindex(table["class_id"]).to_numpy()
    # Classes with the largest share of uncovered real images first; within a class the farthest first.
    share = table["n_uncovered"] / table["n_real"]
    table = table.assign(share=share).sort_values(["share", "class_id", "dist"], ascending=[False, True, False], kind="stable")
    keep = table["class_id"].isin(table["class_id"].drop_duplicates().head(GALLERY_CLASSES))
    table = table[keep].groupby("class_id", sort=False).head(GALLERY_PER_CLASS).drop(columns="share").reset_index(drop=True)
    near_rows = cond[near]
    return Galleries(far=cond[far], far_dist=d[far], near=near_rows, near_real=np.asarray(data.neighbours.real_index)[near_rows, 0],
                     near_dist=d[near], uncovered=table)


def _map_rows(idx: np.ndarray, local: np.ndarray) -> np.ndarray:
    return np.where(idx >= 0, local[np.clip(idx, 0, None)], -1)


def site_view(data: ReportData, max_points: int) -> SiteView:
    """The sample drawn on the map, the page points, and `site`: the ReportData of those points only."""
    p = data.points
    n = len(p)
    drawn_rows = balanced_sample(p, max_points)
    chosen = chosen_classes(data)
    page_rows = [drawn_rows, class_grid_rows(p, chosen).index.to_numpy(np.int64)]
    if len(data.variants):
        page_rows.append(variant_selection(data.variants, chosen)[1]["point"].to_numpy(np.int64))
    if data.comparison is not None:
        page_rows.append(data.comparison.seeds["point"].to_numpy(np.int64))
    if data.atlas is not None:
        page_rows += [np.array([a.anchor for a in data.atlas.anchors], np.int64),
                      np.array([j for a in data.atlas.anchors for j in a.neighbours if 0 <= j < n], np.int64)]
    galleries = ranked_galleries(data)
    page_rows += [galleries.far, galleries.near, galleries.near_real, galleries.uncovered["row"].to_numpy(np.int64)]
    # Covering generated samples listed for drawn real points (the first MAX_COVERED_BY of each).
    cb = data.covered_by
    cnt = cb.counts()[drawn_rows]
    take = np.minimum(cnt, MAX_COVERED_BY)
    starts = np.repeat(cb.offsets[drawn_rows], take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    page_rows.append(cb.values[starts + within])
    rows = np.unique(np.concatenate(page_rows).astype(np.int64))
    local = np.full(n, -1, np.int64)
    local[rows] = np.arange(len(rows))
    drawn = np.zeros(len(rows), bool)
    drawn[local[drawn_rows]] = True

    # Thumbnails: only those of carried points, the atlas and the trajectories, renumbered.
    t_used = [p["thumb"].to_numpy(np.int64)[rows]]
    if data.atlas is not None:
        t_used += [data.atlas.grid["thumb"].to_numpy(np.int64), np.array([a.thumb for a in data.atlas.anchors], np.int64)]
    traj = data.trajectories
    if traj is not None:
        t_used += [traj.steps["thumb"].to_numpy(np.int64), traj.real["thumb"].to_numpy(np.int64)]
    need = np.unique(np.concatenate(t_used))
    need = need[need >= 0]
    tmap = np.full(len(data.thumbnails), -1, np.int64)
    tmap[need] = np.arange(len(need))
    thumbs = np.asarray(data.thumbnails[need], np.uint8).reshape((len(need),) + tuple(data.thumbnails.shape[1:]))

    def remap_thumb(a):
        a = np.asarray(a, np.int64)
        return np.where(a >= 0, tmap[np.clip(a, 0, None)], -1)

    pts = p.iloc[rows].reset_index(drop=True)
    pts = pts.assign(thumb=remap_thumb(pts["thumb"]))
    nb = data.neighbours
    cls_all = p["class_id"].to_numpy(np.int64)

    def nb_class(idx):
        return np.where(idx >= 0, cls_all[np.clip(idx, 0, None)], -1)
    ri, gi = np.asarray(nb.real_index)[rows], np.asarray(nb.gen_index)[rows]
    neighbours = Neighbours(_map_rows(ri, local), np.asarray(nb.real_dist)[rows], _map_rows(gi, local),
                            np.asarray(nb.gen_dist)[rows], layer=nb.layer)
    # covered_by of site points: the carried covering samples, in stored order, at most MAX_COVERED_BY.
    c_cnt = data.cover_counts()[rows]
    c_take = np.minimum(c_cnt, MAX_COVERED_BY)
    c_starts = np.repeat(cb.offsets[rows], c_take)
    c_within = np.arange(int(c_take.sum())) - np.repeat(np.cumsum(c_take) - c_take, c_take)
    c_vals = local[cb.values[c_starts + c_within]]
    keep = c_vals >= 0
    c_owner = np.repeat(np.arange(len(rows)), c_take)[keep]
    covered_by = Ragged(np.concatenate([[0], np.cumsum(np.bincount(c_owner, minlength=len(rows)))]).astype(np.int64),
                        c_vals[keep].astype(np.int64))

    variants = data.variants.assign(point=_map_rows(data.variants["point"].to_numpy(np.int64), local)) \
        if len(data.variants) else data.variants
    variants = variants[variants["point"] >= 0] if len(variants) else variants
    comparison = data.comparison
    if comparison is not None:
        comparison = dataclasses.replace(comparison, seeds=comparison.seeds.assign(
            point=_map_rows(comparison.seeds["point"].to_numpy(np.int64), local)).reset_index(drop=True))
    atlas = data.atlas
    if atlas is not None:
        atlas = dataclasses.replace(
            atlas, grid=atlas.grid.assign(thumb=remap_thumb(atlas.grid["thumb"])),
            anchors=[dataclasses.replace(a, anchor=int(local[a.anchor]), thumb=int(remap_thumb([a.thumb])[0]),
                                         neighbours=[int(local[j]) for j in a.neighbours if 0 <= j < n])
                     for a in atlas.anchors])
    if traj is not None:
        traj = dataclasses.replace(traj, steps=traj.steps.assign(thumb=remap_thumb(traj.steps["thumb"])),
                                   real=traj.real.assign(thumb=remap_thumb(traj.real["thumb"])))
    radius = None if data.cover_radius is None else np.asarray(data.cover_radius, np.float64)[rows]
    site = dataclasses.replace(data, points=pts, thumbnails=thumbs, neighbours=neighbours, covered_by=covered_by,
                               cover_count=c_cnt, cover_radius=radius,
                               variants=variants.reset_index(drop=True), atlas=atlas, trajectories=traj,
                               chosen_classes=chosen, comparison=comparison)
    return SiteView(full=data, site=site, rows=rows, local=local, drawn=drawn, nb_real_class=nb_class(ri),
                    nb_gen_class=nb_class(gi), covered_count=c_cnt, max_points=max_points, galleries=galleries)


# ---- density layers ----

def _rgb(colour: str) -> np.ndarray:
    c = colour.lstrip("#")
    return np.array([int(c[i:i + 2], 16) for i in (0, 2, 4)], np.float64)


@dataclass
class Extent:
    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "Extent":
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            return cls(0.0, 0.0, 1.0, 1.0)
        x0, x1, y0, y1 = float(x[ok].min()), float(x[ok].max()), float(y[ok].min()), float(y[ok].max())
        px, py = (x1 - x0) * 0.01 or 0.5, (y1 - y0) * 0.01 or 0.5   # a margin so edge points fall inside
        return cls(x0 - px, y0 - py, x1 + px, y1 + py)


def density_rgba(x: np.ndarray, y: np.ndarray, extent: Extent, colour: str | None = None,
                 colours: np.ndarray | None = None, bins: int = DENSITY_BINS,
                 max_alpha: int = 200) -> tuple[np.ndarray, Extent] | None:
    """The points' 2-D histogram over `extent` as an (h, w, 4) uint8 RGBA image (row 0 = top), cropped
    to the cells that hold points (a class's layer is a small patch of the map), and the part of
    `extent` it covers. Alpha grows with the log of the count (one point faint but visible, the
    densest cell `max_alpha`); colour is `colour`, or the count-weighted mean of the per-point
    `colours` (n, 3). None when no point is finite."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x):
        return None
    ix = np.clip(((x - extent.x0) / (extent.x1 - extent.x0) * bins).astype(np.int64), 0, bins - 1)
    iy = np.clip(((extent.y1 - y) / (extent.y1 - extent.y0) * bins).astype(np.int64), 0, bins - 1)
    cell = iy * bins + ix
    count = np.bincount(cell, minlength=bins * bins).astype(np.float64)
    rgba = np.zeros((bins * bins, 4), np.uint8)
    if colours is None:
        rgba[:, :3] = _rgb(colour or "#808080")
    else:
        colours = np.asarray(colours, np.float64)[ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            for ch in range(3):
                rgba[:, ch] = np.nan_to_num(np.bincount(cell, colours[:, ch], bins * bins) / count).round().astype(np.uint8)
    level = np.log1p(count) / np.log1p(count.max())
    rgba[:, 3] = np.where(count > 0, np.round(40 + (max_alpha - 40) * level), 0).astype(np.uint8)
    r0, r1, c0, c1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    cw, ch_ = (extent.x1 - extent.x0) / bins, (extent.y1 - extent.y0) / bins
    crop = Extent(extent.x0 + c0 * cw, extent.y1 - r1 * ch_, extent.x0 + c1 * cw, extent.y1 - r0 * ch_)
    return np.ascontiguousarray(rgba.reshape(bins, bins, 4)[r0:r1, c0:c1]), crop


def colours_of(hexes: list[str]) -> np.ndarray:
    return np.stack([_rgb(h) for h in hexes]) if hexes else np.zeros((0, 3))
