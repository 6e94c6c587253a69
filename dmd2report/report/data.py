"""The report's input contract: everything the pages show, in one typed object.

The site renderer reads only a `ReportData`; it never touches the model, the feature stores or
the embedding. The pipeline builds one from its stored results, `synthetic_report_data` builds
a plausible one from random clusters (tests, benchmarks, and a living example of the contract).

Conventions shared by every table:
- a *point row* is a row position (0..n-1) in `ReportData.points`; neighbour lists, covered-by
  lists, variants and atlas anchors refer to points by row;
- a *thumbnail index* is a row in `ReportData.thumbnails` (-1 = no image); points, atlas grid
  cells and atlas anchors all draw from this one array, so the site stores one set of sprites.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from ..files import sha256_bytes, short_hash
from ..metric_defs import METRICS

POINT_COLUMNS = ["set", "variant", "sample_id", "class_id", "x", "y", "trust", "covered", "source", "thumb"]
CLASS_COLUMNS = ["class_id", "synset", "name"]
OVERALL_COLUMNS = ["key", "label", "value", "ci_low", "ci_high", "explanation", "n_real", "n_gen", "headline"]
VARIANT_COLUMNS = ["seed_index", "class_id", "variant", "point"]
GRID_COLUMNS = ["x", "y", "thumb"]
TRAJECTORY_COLUMNS = ["path", "step", "sigma", "class_id", "x", "y", "thumb", "shown", "source"]
REFERENCE_COLUMNS = ["ref", "step", "sigma", "class_id", "x", "y", "thumb", "source"]
STEP_METRIC_COLUMNS = ["step", "sigma", "reference", "precision", "recall", "coverage", "n_real", "n_gen"]


@dataclass
class RunInfo:
    name: str                       # shown in every page header
    command: str                    # the exact command line that built the report
    built_at: str                   # ISO 8601 UTC
    versions: dict[str, str]        # package -> version (dmd2report, torch, bokeh, ...), shown in the footer
    config_hash: str                # short hash of the full config, shown in the footer
    config: dict                    # the full config as a plain dict (Config.to_dict())


@dataclass
class ModelInfo:
    preset: str
    checkpoint: str                 # file name (or "bundled weights"); never a secret-bearing URL
    sha256: str                     # of the checkpoint file, "" when unknown
    untrained: bool = False         # True: every page carries a banner saying the samples mean nothing


@dataclass
class DataSource:
    label: str                      # e.g. "real: ImageNet 64x64 NPZ" or "generated: class-conditioned"
    path: str                       # where it was read from (or a seed description for generated sets)
    count: int


@dataclass
class Neighbours:
    """k nearest real and k nearest generated points of every point, in activation space.

    All arrays have one row per point row; indices are point rows (-1 = padding when fewer than
    k exist), distances are in the metrics layer's feature space. A point is not its own neighbour.
    """
    real_index: np.ndarray          # (n, k) int
    real_dist: np.ndarray           # (n, k) float
    gen_index: np.ndarray           # (n, k) int
    gen_dist: np.ndarray            # (n, k) float
    layer: str = ""                 # which layer's activations the distances use


@dataclass
class Ragged:
    """Variable-length lists of point rows, one list per point row: list i is
    `values[offsets[i]:offsets[i + 1]]` (CSR layout, as measure stores them), so millions of rows
    need no Python object per row."""
    offsets: np.ndarray             # (n + 1,) int64, non-decreasing, offsets[0] == 0
    values: np.ndarray              # (offsets[-1],) int64 point rows

    @classmethod
    def from_dict(cls, lists: dict[int, list[int]], n: int) -> "Ragged":
        counts = np.zeros(n, np.int64)
        keys = np.array(sorted(lists), np.int64)
        counts[keys] = [len(lists[int(k)]) for k in keys]
        values = np.array([v for k in keys for v in lists[int(k)]], np.int64)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values)

    @classmethod
    def empty(cls, n: int) -> "Ragged":
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def nonempty(self) -> np.ndarray:
        return np.flatnonzero(self.counts())


class StackedThumbnails:
    """Thumbnail arrays (for example one memory-mapped file per store chunk) seen as one (n, t, t, 3)
    array without concatenating them: the report reads only the rows its site shows, so a million
    stored thumbnails never sit in memory at once. Indexing with an integer array returns a new array."""

    def __init__(self, parts: list[np.ndarray]):
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("StackedThumbnails needs at least one non-empty array")
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.shape = (int(self.starts[-1]),) + tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)
        if any(p.shape[1:] != parts[0].shape[1:] or p.dtype != self.dtype for p in parts):
            raise ValueError("StackedThumbnails: parts differ in shape or dtype")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        idx = np.asarray(index, np.int64)
        if idx.ndim == 0:
            return self[idx[None]][0]
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError("StackedThumbnails index out of range")
        out = np.empty((len(idx),) + self.shape[1:], self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(part):  # one gather per stored part (chunk), not per row
            sel = np.flatnonzero(part == k)
            out[sel] = self.parts[k][idx[sel] - self.starts[k]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.parts)
        return out if dtype is None else out.astype(dtype)


@dataclass
class FrechetDistance:
    value: float
    n_real: int
    n_gen: int
    layer: str
    note: str = ""                  # e.g. "few samples: biased upwards"
    real_halves: float | None = None    # the reference scale: FD between two halves of the real set (metrics.json fd_real)
    n_halves: tuple[int, int] = (0, 0)  # the two halves' sizes


@dataclass
class Metrics:
    """Metric tables. `overall` columns: OVERALL_COLUMNS (ci_low/ci_high NaN when no bootstrap;
    headline=True rows become cards on the index). `per_class`: class_id, n_real, n_gen and one
    column per metric key. `per_variant`: variant, n_gen and one column per metric key."""
    overall: pd.DataFrame
    per_class: pd.DataFrame
    per_variant: pd.DataFrame
    fd: FrechetDistance | None = None
    layer: str = ""                 # the headline layer the numbers are measured in


@dataclass
class AtlasAnchor:
    """A generation from the average activation of a stored sample's neighbours."""
    anchor: int                     # point row of the anchor sample
    neighbours: list[int]           # point rows whose activations were averaged
    thumb: int                      # thumbnail index of the generated image
    conditioning: str               # the conditioning used, e.g. "class 207 (golden retriever)"
    note: str = ""                  # e.g. "full activations of the nearest stored samples were recomputed"


@dataclass
class Atlas:
    """Images generated by masking the mask layer with activations inverse-projected from an even
    grid over the map. `grid` columns: GRID_COLUMNS (map coordinates + thumbnail index)."""
    grid: pd.DataFrame
    anchors: list[AtlasAnchor] = field(default_factory=list)
    mask_layer: str = ""
    note: str = ""


@dataclass
class Trajectories:
    """Few-step sampling paths on the map, and real images noised to each sigma of the schedule.

    steps: columns TRAJECTORY_COLUMNS, one row per path and step (path int, step 0..S-1 in order,
        sigma float, class_id int (-1 none), x/y map coordinates, thumb = that step's output image,
        shown bool = drawn on the map (the first few paths per class), source str).
    real: columns REFERENCE_COLUMNS, one row per reference image and step (may be empty).
    metrics: columns STEP_METRIC_COLUMNS, one row per step and reference ('real': the real set;
        'noised real': the real references at the step's sigma); values NaN when not measurable.
    """
    sigmas: list[float]
    steps: pd.DataFrame
    real: pd.DataFrame
    metrics: pd.DataFrame
    conditioning: str = "class"
    note: str = ""

    def validate(self, n_thumbs: int) -> None:
        s, S = self.steps, len(self.sigmas)
        for name, table, cols in (("steps", s, TRAJECTORY_COLUMNS), ("real", self.real, REFERENCE_COLUMNS),
                                  ("metrics", self.metrics, STEP_METRIC_COLUMNS)):
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise ValueError(f"trajectories.{name}: missing columns {missing}")
        if not S or any(b >= a for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ValueError("trajectories.sigmas must be non-empty and strictly decreasing")
        for name, table, key in (("steps", s, "path"), ("real", self.real, "ref")):
            if any(g.tolist() != list(range(S)) for _, g in table.groupby(key, sort=False)["step"]):
                raise ValueError(f"trajectories.{name}: every {key} needs steps 0..{S - 1} in order")
            if len(table) and (table["thumb"].max() >= n_thumbs or table["thumb"].min() < -1):
                raise ValueError(f"trajectories.{name}.thumb out of range of thumbnails")


COMPARISON_COLUMNS = ["generator", "key", "label", "value", "ci_low", "ci_high", "delta", "separated"]
CLASS_DELTA_COLUMNS = ["generator", "key", "class_id", "reference", "value", "delta"]
CLASS_DELTA_METRICS = ("coverage", "class_fidelity")   # the per-class deltas compared: what gained or lost coverage or fidelity
SEED_COLUMNS = ["seed_index", "class_id", "generator", "point"]
COVER_DIFF = ("neither", "A only", "B only", "both")   # points.cover_diff codes 0..3: bit 0 covered by A, bit 1 by B


def compared_class_set(generator: str) -> str:
    """The points' variant of another generator's class-conditioned set in a comparison (a layer of the map)."""
    return f"{generator}: class"


def is_class_set(variant: str) -> bool:
    """Whether a points' variant is a class-conditioned set (the reference's `class`, or another generator's)."""
    return variant == "class" or variant.endswith(": class")


@dataclass
class Comparison:
    """Several generators measured by one reference encoder against one real map (a [[generators]] run).

    generators: names, the reference encoder's first (the other pages show it); a, b: the pair of the
        coverage-difference view (the reference and the next generator).
    overall: COMPARISON_COLUMNS, per generator and overall metric of the class-conditioned set: value and
        95% interval (NaN without), delta = value minus the reference's, separated = the two intervals do not
        overlap (False for the reference and without intervals).
    per_class: CLASS_DELTA_COLUMNS, per non-reference generator, per-class metric and class: the reference's
        value, this one's and the delta, sorted by |delta|, largest first.
    seeds: SEED_COLUMNS, the same seed's class-conditioned sample of every generator (point rows).
    With a comparison, `ReportData.points` carries two more columns: `generator` (who made a generated
    point, "" for real ones) and `cover_diff` (real points: COVER_DIFF code by the a and b class-conditioned
    sets; -1 for generated points).
    """
    generators: list[str]
    a: str
    b: str
    overall: pd.DataFrame
    per_class: pd.DataFrame
    seeds: pd.DataFrame
    feature_space: str = ""

    def validate(self, points: pd.DataFrame) -> None:
        for name, table, cols in (("overall", self.overall, COMPARISON_COLUMNS),
                                  ("per_class", self.per_class, CLASS_DELTA_COLUMNS), ("seeds", self.seeds, SEED_COLUMNS)):
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise ValueError(f"comparison.{name}: missing columns {missing}")
        if not {"generator", "cover_diff"} <= set(points.columns):
            raise ValueError("points: a comparison needs the generator and cover_diff columns")
        if len(self.seeds) and self.seeds["point"].max() >= len(points):
            raise ValueError("comparison.seeds.point out of range")


@dataclass
class ReportData:
    """Everything the report site shows. Build with the pipeline or `synthetic_report_data`.

    points: one row per real or generated sample, columns POINT_COLUMNS:
        set 'real'|'generated'; variant 'real' for real points, else the conditioning
        ('class'|'uniform'|'zero'|'blend'|...); sample_id str (unique); class_id int (the real
        label, or the class a generated sample was conditioned on, -1 when none); x, y map
        coordinates; trust float in [0, 1] (NaN when unknown); covered bool (real points: inside
        some generated sample's k-NN ball; False for generated); source str (file path for real,
        "seed S index I" for generated); thumb int (thumbnail index, -1 = none).
    classes: columns CLASS_COLUMNS, every class that may appear (class_id int, synset str, name str).
    thumbnails: uint8 (m, t, t, 3): an array, or a `StackedThumbnails` over stored chunks (the site
        reads only the rows it shows).
    covered_by: per point row, the generated point rows whose k-NN balls contain it (empty for
        generated points), nearest first, as `Ragged` (measure keeps at most its `cover_cap` of them);
        a dict {real row: [generated rows]} is converted on creation.
    cover_count: (n,) int, how many class-conditioned generated samples cover each real point (all of
        them, past covered_by's cap; 0 for generated points); None: the lengths of covered_by.
    cover_radius: (n,) float, each real point's k-NN radius r_k(x) that coverage tests against (NaN
        for generated points); None when unknown.
    nn_real_real / nn_gen_real: k-th-NN distances for the histograms (real to real, generated to real).
    variants: columns VARIANT_COLUMNS, the same seed under each conditioning.
    chosen_classes: the classes given their own page and shown on the variants page ([] = let
        the renderer pick the most populous ones, up to `max_class_pages`).
    skipped: the real images the source could not read and left out (`data.on_bad_image = skip`),
        as the real store's manifest lists them: {"source": path under the data folder, "error": why}.
    """
    run: RunInfo
    model: ModelInfo
    sources: list[DataSource]
    classes: pd.DataFrame
    points: pd.DataFrame
    thumbnails: np.ndarray
    neighbours: Neighbours
    covered_by: Ragged
    metrics: Metrics
    nn_real_real: np.ndarray
    nn_gen_real: np.ndarray
    variants: pd.DataFrame
    atlas: Atlas | None = None
    chosen_classes: list[int] = field(default_factory=list)
    max_class_pages: int = 100
    trajectories: Trajectories | None = None
    skipped: list[dict] = field(default_factory=list)
    cover_count: np.ndarray | None = None
    cover_radius: np.ndarray | None = None
    comparison: Comparison | None = None   # several generators ([[generators]]): the comparison page and map views

    def __post_init__(self):
        if isinstance(self.covered_by, dict):
            self.covered_by = Ragged.from_dict(self.covered_by, len(self.points))

    def cover_counts(self) -> np.ndarray:
        """(n,) true number of covering generated samples of each point (see cover_count)."""
        return self.covered_by.counts() if self.cover_count is None else np.asarray(self.cover_count, np.int64)

    def validate(self) -> None:
        """Check the cross-references; raises ValueError naming the first inconsistency."""
        p = self.points
        missing = [c for c in POINT_COLUMNS if c not in p.columns]
        if missing:
            raise ValueError(f"points: missing columns {missing}")
        if not set(p["set"].unique()) <= {"real", "generated"}:
            raise ValueError("points.set must be 'real' or 'generated'")
        if p["sample_id"].duplicated().any():
            raise ValueError(f"points.sample_id not unique: {p['sample_id'][p['sample_id'].duplicated()].iloc[0]!r}")
        t = self.thumbnails
        if t.dtype != np.uint8 or t.ndim != 4 or t.shape[3] != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(f"thumbnails must be uint8 (n, t, t, 3), got {t.dtype} {t.shape}")
        if len(p) and (p["thumb"].max() >= len(t) or p["thumb"].min() < -1):
            raise ValueError("points.thumb out of range of thumbnails")
        for name in ("real_index", "real_dist", "gen_index", "gen_dist"):
            a = getattr(self.neighbours, name)
            if a.shape[0] != len(p):
                raise ValueError(f"neighbours.{name}: {a.shape[0]} rows for {len(p)} points")
        for name in ("real_index", "gen_index"):
            a = getattr(self.neighbours, name)
            if a.size and (a.max() >= len(p) or a.min() < -1):
                raise ValueError(f"neighbours.{name} refers to a point row out of range")
        if len(self.variants) and self.variants["point"].max() >= len(p):
            raise ValueError("variants.point out of range")
        cb = self.covered_by
        if len(cb) != len(p):
            raise ValueError(f"covered_by: {len(cb)} lists for {len(p)} points")
        has = cb.counts() > 0
        if has.any() and (p["set"].to_numpy()[has] != "real").any():
            raise ValueError(f"covered_by[{int(np.flatnonzero(has & (p['set'].to_numpy() != 'real'))[0])}] is not a real point")
        if cb.values.size and (cb.values.min() < 0 or cb.values.max() >= len(p)):
            raise ValueError("covered_by refers to a point row out of range")
        for name in ("cover_count", "cover_radius"):
            a = getattr(self, name)
            if a is not None and np.shape(a) != (len(p),):
                raise ValueError(f"{name}: shape {np.shape(a)} for {len(p)} points")
        if self.cover_count is not None:
            short = np.flatnonzero(self.cover_counts() < cb.counts())
            if len(short):
                raise ValueError(f"cover_count[{int(short[0])}] is below the length of its covered_by list")
        if self.atlas is not None:
            g = self.atlas.grid
            if len(g) and g["thumb"].max() >= len(t):
                raise ValueError("atlas.grid.thumb out of range")
            for a in self.atlas.anchors:
                if not (0 <= a.anchor < len(p)) or not (-1 <= a.thumb < len(t)):
                    raise ValueError(f"atlas anchor {a.anchor} out of range")
        if self.trajectories is not None:
            self.trajectories.validate(len(t))
        if self.comparison is not None:
            self.comparison.validate(p)
        for s in self.skipped:
            if not isinstance(s, dict) or not isinstance(s.get("source"), str):
                raise ValueError(f"skipped: expected {{'source': str, 'error': str}} entries, got {s!r}")


def config_hash(config: dict) -> str:
    return short_hash(config)


def package_versions() -> dict[str, str]:
    """Versions shown in every page footer."""
    from importlib import metadata
    out = {}
    for pkg in ("dmd2report", "torch", "numpy", "umap-learn", "bokeh", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _nearest(queries: np.ndarray, pool: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`knn.knn` on the CPU as (indices, distances), padded with -1/NaN to k columns when the pool is small.
    exclude_self: queries are `pool` itself, and a row is not its own neighbour."""
    from ..knn import knn
    idx = np.full((len(queries), k), -1, np.int64)
    dist = np.full((len(queries), k), np.nan, np.float32)
    kk = min(k, len(pool) - int(exclude_self))
    if kk <= 0 or len(queries) == 0:
        return idx, dist
    d, i = knn(queries, None if exclude_self else pool, kk, exclude_self=exclude_self, device="cpu")
    idx[:, :kk], dist[:, :kk] = i, d
    return idx, dist


def synthetic_report_data(n_real: int = 600, n_gen: int = 300, n_classes: int = 6, seed: int = 0, *,
                          thumb_size: int = 16, k: int = 5, variants_per_class: int = 4,
                          class_names: dict[int, str] | None = None, untrained: bool = False,
                          trajectories: bool = False) -> ReportData:
    """A plausible ReportData from Gaussian clusters in a small 'activation' space.

    Real points: one cluster per class. Generated: class-conditioned samples near their class
    (slightly shrunk, so coverage is imperfect), plus `variants_per_class` seeds per class drawn
    under class, uniform, zero and blend conditioning. Thumbnails are noisy colour patches tinted
    by class. `class_names` overrides names (tests use it to inject hostile strings).
    `trajectories=True` adds few-step paths (4 steps, 2 per class drawn) from the mean towards each
    class centre, and noised-real references, with thumbnails appended.
    """
    rng = np.random.default_rng(seed)
    dim = 8
    centres = rng.normal(0, 4, (n_classes, dim))
    plane = rng.normal(0, 1, (dim, 2))
    synsets = [f"n{1440764 + 9973 * c:08d}" for c in range(n_classes)]
    names = [f"class {c}" for c in range(n_classes)]
    for c, nm in (class_names or {}).items():
        names[c] = nm
    classes = pd.DataFrame({"class_id": np.arange(n_classes), "synset": synsets, "name": names})

    real_cls = rng.integers(0, n_classes, n_real)
    real_f = centres[real_cls] + rng.normal(0, 1, (n_real, dim))
    gen_cls = rng.integers(0, n_classes, n_gen)
    gen_f = centres[gen_cls] + rng.normal(0, 0.7, (n_gen, dim)) + 0.5
    variant_names = ["class", "uniform", "zero", "blend"]
    var_f, var_cls, var_variant, var_seed = [], [], [], []
    for c in range(n_classes):
        for s in range(variants_per_class):
            z = rng.normal(0, 0.7, dim)
            mean_centre = centres.mean(0)
            for v, where in zip(variant_names, (centres[c], mean_centre, mean_centre * 0.2, 0.5 * (centres[c] + mean_centre))):
                var_f.append(where + z)
                var_cls.append(c if v != "zero" else -1)
                var_variant.append(v)
                var_seed.append(c * variants_per_class + s)
    var_f = np.array(var_f).reshape(-1, dim)
    feats = np.concatenate([real_f, gen_f, var_f])
    xy = feats @ plane
    n_var = len(var_f)
    n = n_real + n_gen + n_var
    sets = ["real"] * n_real + ["generated"] * (n_gen + n_var)
    variants = ["real"] * n_real + ["class"] * n_gen + var_variant
    cls = np.concatenate([real_cls, gen_cls, np.array(var_cls, int)]).astype(int)
    sample_ids = [f"real-{i:06d}" for i in range(n_real)] + [f"gen-{i:06d}" for i in range(n_gen)] + \
                 [f"var-{v}-{s:04d}" for v, s in zip(var_variant, var_seed)]
    sources = [f"data/train/{synsets[c]}/{synsets[c]}_{i}.JPEG" for i, c in enumerate(real_cls)] + \
              [f"seed {seed} index {i}" for i in range(n_gen)] + [f"seed {seed} index {s} ({v})" for v, s in zip(var_variant, var_seed)]
    real_rows = np.arange(n_real)
    gen_rows = np.arange(n_real, n)

    # Neighbours in feature space; rows of the pools map back to point rows. The real pool
    # includes the query's own row for real points, so ask for one more and drop self matches.
    def neighbours(pool_rows):
        idx, dist = _nearest(feats, feats[pool_rows], k + 1)
        idx = np.where(idx >= 0, pool_rows[np.clip(idx, 0, None)], -1)
        own = idx == np.arange(n)[:, None]
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]  # self matches sort last
        return np.take_along_axis(idx, keep, 1), np.take_along_axis(dist, keep, 1)
    ri, rd = neighbours(real_rows)
    gi, gd = neighbours(gen_rows)
    # Coverage (Naeem et al. 2020): a real point is covered when a generated sample lies within its k-NN radius.
    from ..knn import within_radius
    radius = _nearest(real_f, real_f, k, exclude_self=True)[1][:, -1]
    cover = within_radius(real_f, feats[gen_rows], radius, radius_of="query", cap=20, device="cpu")
    covered_by: dict[int, list[int]] = {int(r): gen_rows[cover.nearest[r][cover.nearest[r] >= 0]].tolist()
                                        for r in np.flatnonzero(cover.counts)}
    covered = np.zeros(n, bool)
    covered[list(covered_by)] = True
    cover_count = np.zeros(n, np.int64)
    cover_count[:n_real] = cover.counts
    cover_radius = np.full(n, np.nan)
    cover_radius[:n_real] = radius
    trust = np.clip(rng.normal(0.85, 0.08, n), 0, 1)

    # Thumbnails: class-tinted noise with a bright square, so grids look like distinct images.
    t = thumb_size
    hue = rng.uniform(40, 215, (n_classes + 1, 3))
    base = hue[np.where(cls >= 0, cls, n_classes)]
    thumbs = np.clip(base[:, None, None, :] + rng.normal(0, 25, (n, t, t, 3)), 0, 255)
    for i in range(n):
        a, b = rng.integers(0, t // 2, 2)
        thumbs[i, a:a + t // 3, b:b + t // 3] = 255 - base[i]
    grid_n = 8
    gx, gy = np.meshgrid(np.linspace(xy[:n_real, 0].min(), xy[:n_real, 0].max(), grid_n),
                         np.linspace(xy[:n_real, 1].min(), xy[:n_real, 1].max(), grid_n))
    grid_thumbs = np.clip(rng.uniform(40, 215, (grid_n * grid_n, 1, 1, 3)) + rng.normal(0, 20, (grid_n * grid_n, t, t, 3)), 0, 255)
    n_anchor = min(n_classes * 2, n_real)
    anchor_rows = rng.choice(n_real, n_anchor, replace=False)
    anchor_thumbs = thumbs[anchor_rows] * 0.7 + 40
    all_thumbs = np.concatenate([thumbs, grid_thumbs, anchor_thumbs]).astype(np.uint8)
    grid = pd.DataFrame({"x": gx.ravel(), "y": gy.ravel(), "thumb": n + np.arange(grid_n * grid_n)})
    cname = dict(zip(classes["class_id"], classes["name"]))
    anchors = [AtlasAnchor(anchor=int(r), neighbours=[int(j) for j in ri[r] if j >= 0],
                           thumb=n + grid_n * grid_n + i, conditioning=f"class {real_cls[r]} ({cname[real_cls[r]]})",
                           note="full activations of the nearest stored samples were recomputed" if i % 2 else "")
               for i, r in enumerate(anchor_rows)]
    atlas = Atlas(grid=grid, anchors=anchors, mask_layer="midblock", note="synthetic")

    points = pd.DataFrame({"set": sets, "variant": variants, "sample_id": sample_ids, "class_id": cls,
                           "x": xy[:, 0], "y": xy[:, 1], "trust": trust, "covered": covered,
                           "source": sources, "thumb": np.arange(n)})
    var_df = pd.DataFrame({"seed_index": var_seed, "class_id": np.repeat(np.arange(n_classes), variants_per_class * 4),
                           "variant": var_variant, "point": n_real + n_gen + np.arange(n_var)})

    # Metrics computed from the synthetic features (Kynkaanniemi et al. 2019; Naeem et al. 2020).
    gen_to_real, gen_to_real_d = _nearest(feats[gen_rows], real_f, k)
    precision = float((gen_to_real_d <= radius[gen_to_real]).any(1).mean())
    density = float((gen_to_real_d <= radius[gen_to_real]).sum(1).mean() / k)
    gen_radius = _nearest(feats[gen_rows], feats[gen_rows], k, exclude_self=True)[1][:, -1]
    real_to_gen, real_to_gen_d = _nearest(real_f, feats[gen_rows], k)
    recall = float((real_to_gen_d <= gen_radius[real_to_gen]).any(1).mean())
    coverage = float(covered[:n_real].mean())
    gen_r = gen_to_real_d

    def boot(v):  # a plausible interval shape; the real pipeline bootstraps
        return max(v - 0.03, 0.0), min(v + 0.03, 1.0)
    rows = []
    for key, v in (("precision", precision), ("recall", recall), ("density", density), ("coverage", coverage)):
        lo, hi = boot(v)
        rows.append((key, METRICS[key].label, v, lo, hi, METRICS[key].explanation, n_real, n_gen + n_var, True))
    rows.append(("trust", METRICS["trust"].label, float(trust.mean()), np.nan, np.nan, METRICS["trust"].explanation,
                 n_real, n_gen + n_var, False))
    from ..metrics import fd_real_halves, frechet_distance
    halves = fd_real_halves(real_f, real_cls, seed)
    fd = FrechetDistance(value=frechet_distance(real_f, feats[gen_rows]), n_real=n_real, n_gen=n_gen + n_var,
                         layer="midblock", note="synthetic features", real_halves=halves["value"],
                         n_halves=tuple(halves["n_halves"]))
    rows.append(("fd", METRICS["fd"].label, fd.value, np.nan, np.nan, METRICS["fd"].explanation, n_real, n_gen + n_var,
                 METRICS["fd"].headline))
    overall = pd.DataFrame(rows, columns=OVERALL_COLUMNS)
    per_class = []
    for c in range(n_classes):
        rr, gg = real_cls == c, cls[gen_rows] == c
        per_class.append({"class_id": c, "n_real": int(rr.sum()), "n_gen": int(gg.sum()),
                          "precision": float(rng.uniform(0.4, 1.0)) if gg.any() else np.nan,
                          "recall": float(rng.uniform(0.2, 0.9)) if gg.any() else np.nan,
                          "coverage": float(covered[:n_real][rr].mean()) if rr.any() else np.nan})
    per_variant = pd.DataFrame([{"variant": v, "n_gen": int((np.array(variants) == v).sum()),
                                 "precision": float(rng.uniform(0.3, 1.0)), "recall": float(rng.uniform(0.1, 0.8)),
                                 "coverage": float(rng.uniform(0.1, 0.8))} for v in variant_names])
    metrics = Metrics(overall=overall, per_class=pd.DataFrame(per_class), per_variant=per_variant, fd=fd, layer="midblock")

    config = {"run": {"name": "synthetic", "seed": seed}, "model": {"preset": "tiny"}, "report": {"thumb_size": t}}
    run = RunInfo(name="synthetic report", command=f"synthetic_report_data({n_real}, {n_gen}, {n_classes}, {seed})",
                  built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), versions=package_versions(),
                  config_hash=config_hash(config), config=config)
    data = ReportData(
        run=run, model=ModelInfo(preset="tiny", checkpoint="synthetic.safetensors", sha256=sha256_bytes(b"synthetic"), untrained=untrained),
        sources=[DataSource("real: synthetic clusters", "data/train", n_real),
                 DataSource("generated: class-conditioned", f"seed {seed}", n_gen),
                 DataSource("generated: variants (class, uniform, zero, blend)", f"seed {seed}", n_var)],
        classes=classes, points=points, thumbnails=all_thumbs,
        neighbours=Neighbours(ri, rd.astype(np.float32), gi, gd.astype(np.float32), layer="midblock"),
        covered_by=covered_by, cover_count=cover_count, cover_radius=cover_radius, metrics=metrics,
        nn_real_real=radius,
        nn_gen_real=gen_r[:, -1], variants=var_df, atlas=atlas)
    if trajectories:
        data = _synthetic_trajectories(data, centres, plane, rng)
    data.validate()
    return data


def _synthetic_trajectories(data: ReportData, centres: np.ndarray, plane: np.ndarray, rng,
                            per_class: int = 3, shown: int = 2) -> ReportData:
    """Paths from the clusters' mean (pure noise) towards their class centre, one point per sigma."""
    sigmas = [80.0, 14.0, 1.0, 0.05]
    S, t = len(sigmas), data.thumbnails.shape[1]
    mean = centres.mean(0)
    frac = np.array([0.0, 0.55, 0.9, 1.0])          # how far each step has moved towards the class
    rows, refs, thumbs = [], [], []
    base = len(data.thumbnails)
    for c in range(len(centres)):
        for j in range(per_class):
            z = rng.normal(0, 1.5, centres.shape[1])
            end = centres[c] + rng.normal(0, 0.6, centres.shape[1])
            for s, sigma in enumerate(sigmas):
                xy = (mean + z * (1 - frac[s]) + (end - mean) * frac[s]) @ plane
                rows.append((len(rows) // S, s, sigma, c, xy[0], xy[1], base + len(thumbs), j < shown,
                             f"seed 0 #{c * per_class + j}"))
                thumbs.append(np.full((t, t, 3), 40 + 50 * s, np.float64) + rng.normal(0, 20, (t, t, 3)))
        for s, sigma in enumerate(sigmas):
            xy = (centres[c] + rng.normal(0, 1.0 + 2.0 * (S - 1 - s) / S, centres.shape[1])) @ plane
            refs.append((c, s, sigma, c, xy[0], xy[1], base + len(thumbs), f"data/train/{c}.JPEG"))
            thumbs.append(np.full((t, t, 3), 200 - 40 * s, np.float64) + rng.normal(0, 20, (t, t, 3)))
    steps = pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)
    real = pd.DataFrame(refs, columns=REFERENCE_COLUMNS)
    metrics = pd.DataFrame([(s, sigma, ref, *(np.clip(frac[s] * q + rng.normal(0, 0.03, 3), 0, 1)),
                             int((data.points["set"] == "real").sum()), len(steps) // S)
                            for s, sigma in enumerate(sigmas) for ref, q in (("real", np.array([0.8, 0.5, 0.6])),
                                                                             ("noised real", np.array([0.9, 0.7, 0.7])))],
                           columns=STEP_METRIC_COLUMNS)
    traj = Trajectories(sigmas=sigmas, steps=steps, real=real, metrics=metrics, conditioning="class",
                        note="synthetic paths")
    return dataclasses.replace(data, thumbnails=np.concatenate([data.thumbnails, np.clip(thumbs, 0, 255).astype(np.uint8)]),
                               trajectories=traj)


def replace(data: ReportData, **changes) -> ReportData:
    """A copy of `data` with fields replaced (dataclasses.replace, re-validated)."""
    out = dataclasses.replace(data, **changes)
    out.validate()
    return out
