"""The report's input contract: everything the pages show, in one typed object.

The site renderer reads only a `ReportData`; it never touches the model, the feature stores or
the embedding. The pipeline builds one from its stored results; tests/synthetic.py (outside the
package) builds a plausible one from random clusters for the tests and benchmarks.

Conventions shared by every table:
- a *point row* is a row position (0..n-1) in `ReportData.points`; neighbour lists, covered-by
  lists, variants and atlas anchors refer to points by row;
- a *thumbnail index* is a row in `ReportData.thumbnails` (-1 = no image); points, atlas grid
  cells and atlas anchors all draw from this one array, so the site stores one set of sprites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..files import short_hash

POINT_COLUMNS = ["set", "variant", "sample_id", "class_id", "x", "y", "trust", "covered", "source", "thumb"]
CLASS_COLUMNS = ["class_id", "synset", "name"]
OVERALL_COLUMNS = ["key", "label", "value", "ci_low", "ci_high", "explanation", "n_real", "n_gen", "headline"]
# Every feature space side by side: the class-conditioned set's overall entries, with the real set's own value.
SPACE_COLUMNS = ["space", "key", "label", "value", "ci_low", "ci_high", "real", "n_gen"]
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
    spaces: pd.DataFrame | None = None   # SPACE_COLUMNS, every feature space of metrics.json, the headline's first
    protocols: dict = field(default_factory=dict)   # a standard space's name -> how its numbers are made (protocol)
    # 95% intervals of the per-variant and per-class tables' entries where bootstrapped: {("variant", variant, key)
    # or ("class", class_id, key): (ci_low, ci_high)}
    intervals: dict = field(default_factory=dict)
    class_fd_real: dict = field(default_factory=dict)   # class_id -> FD between the class's rows in the real halves
    matched: str = ""   # per_variant's row of the class-conditioned set's first seeds (the other variants'), "" none


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
    # the steps' sample-size floor: as many real images as paths, held out and measured against the rest as a step
    # is (metrics.json's "floor": n_real, n_generated, precision, recall, density, coverage, fd); {} without
    floor: dict = field(default_factory=dict)

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


COMPARISON_COLUMNS = ["space", "generator", "key", "label", "value", "ci_low", "ci_high", "delta", "separated"]
CLASS_DELTA_COLUMNS = ["generator", "key", "class_id", "reference", "value", "delta"]
# optional columns of per_class: both 95% intervals (NaN without), and whether they do not overlap
CLASS_DELTA_INTERVALS = ["reference_low", "reference_high", "low", "high", "separated"]
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
    overall: COMPARISON_COLUMNS, per feature space (the headline first, then the other layers and the standard
        spaces), generator and overall metric of the class-conditioned set: value and 95% interval (NaN without),
        delta = value minus the reference's, separated = the two intervals do not overlap (False for the reference
        and without intervals).
    protocols: each standard space's protocol (what its numbers are comparable with); none for a UNet layer.
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
    protocols: dict[str, str] = field(default_factory=dict)
    fd_real: dict[str, float] = field(default_factory=dict)   # per space: the FD of the real set's two halves, its scale

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
    """Everything the report site shows, as the pipeline builds it (tests: tests/synthetic.py).

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
    converted: how many real images decoding converted to 8-bit RGB, by kind (sources.CONVERSIONS: 16-bit,
        grayscale, palette, CMYK, alpha), as the real store's manifest counts them.
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
    converted: dict[str, int] = field(default_factory=dict)
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
