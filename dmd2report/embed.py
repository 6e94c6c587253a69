"""The 2-D map: standardise -> PCA -> UMAP, fitted once and reused for every projection.

The map is for display and navigation only; every metric is computed in the reduced
(PCA) feature space. `Embedding.inverse` walks back from map points to full features,
which is what lets the report generate images from an even grid over the map by masking
a layer with the inverted activations.

A fitted map is a pickle (the UMAP model has no other serialisation). It is only ever
loaded if its SHA-256 equals the one recorded when this tool wrote it, so a pickle from
elsewhere is never unpickled.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from .console import progress as progress_bar
from .errors import UserError
from .files import sha256_file
from .knn import knn


@dataclass
class Embedding:
    """A fitted map. `coords` are the 2-D points of the fitted set, in input order."""

    scaler: StandardScaler
    pca: PCA
    umap: object                     # umap.UMAP, fitted in PCA space on rows `fit_index`
    coords: np.ndarray               # (N, 2) float32
    fit_index: np.ndarray            # rows of the fitted set the UMAP itself was fitted on
    params: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.scaler.n_features_in_)

    @property
    def n_components(self) -> int:
        return int(self.pca.n_components_)

    def _check(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise UserError(f"features of shape {features.shape} do not match the fitted map "
                            f"({self.n_features} features per sample); fit the map again")
        return features

    def reduce(self, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Standardised, PCA-reduced features (n, n_components) float32: the metrics' space."""
        features = self._check(features)
        out = np.empty((len(features), self.n_components), np.float32)
        for s in range(0, len(features), batch_size):
            x = self.scaler.transform(features[s:s + batch_size].astype(np.float32, copy=False))
            out[s:s + batch_size] = self.pca.transform(x)
        return out

    def transform(self, features: np.ndarray, batch_size: int = 8192, progress: bool = True) -> np.ndarray:
        """Project new samples onto the map: (n, 2) float32, in batches."""
        return self._umap_transform(self.reduce(features), batch_size, progress)

    def _umap_transform(self, reduced: np.ndarray, batch_size: int, progress: bool, desc="project") -> np.ndarray:
        out = np.empty((len(reduced), 2), np.float32)
        starts = range(0, len(reduced), batch_size)
        for s in progress_bar(starts, desc=desc, unit="batch", enabled=progress and len(starts) > 0):
            out[s:s + batch_size] = self.umap.transform(reduced[s:s + batch_size])
        return out

    def inside(self, points_2d: np.ndarray) -> np.ndarray:
        """Whether each map point lies inside the convex hull of the UMAP's fitted points,
        the region where `inverse` is defined."""
        from scipy.spatial import Delaunay

        hull = Delaunay(np.asarray(self.umap.embedding_, np.float64), qhull_options="QJ")
        return hull.find_simplex(np.asarray(points_2d, np.float64)) >= 0

    def inverse_reduced(self, points_2d: np.ndarray) -> np.ndarray:
        """Map points -> PCA space (n, n_components) float32, through UMAP's inverse transform.

        UMAP's inverse is only defined inside the hull of its fitted points (outside it
        silently uses an unrelated simplex), so a point outside is first moved onto the
        nearest fitted point. Use `inside` or `even_grid` to stay within the map.
        """
        points = np.asarray(points_2d, np.float32).reshape(-1, 2)
        outside = ~self.inside(points)
        if outside.any():
            idx, _ = nearest_stored(points[outside], self.umap.embedding_, k=1)
            points = points.copy()
            points[outside] = self.umap.embedding_[idx[:, 0]]
        try:
            return np.asarray(self.umap.inverse_transform(points), np.float32)
        except ValueError as e:  # e.g. a metric without a gradient
            raise UserError(f"the map cannot be inverted: {e}") from None

    def inverse(self, points_2d: np.ndarray) -> np.ndarray:
        """Map points -> full features (n, n_features) float32: UMAP inverse, inverse PCA,
        inverse standardisation."""
        standardised = self.pca.inverse_transform(self.inverse_reduced(points_2d))
        return self.scaler.inverse_transform(standardised).astype(np.float32)


def balanced_subsample(classes: np.ndarray | None, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of `size` rows with classes as equal as possible.

    Every class gets the same share; a class with fewer rows gives all it has and the
    rest is shared among the others; the last few rows go to classes in a seeded order.
    """
    n = len(classes)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(classes, return_inverse=True)
    counts = np.bincount(inverse)
    take = np.zeros_like(counts)
    remaining = size
    while remaining > 0:
        open_ = np.flatnonzero(take < counts)
        share = remaining // len(open_)
        if share == 0:  # fewer rows left than open classes: one each to a seeded choice
            take[rng.choice(open_, remaining, replace=False)] += 1
            break
        add = np.minimum(share, counts[open_] - take[open_])
        take[open_] += add
        remaining -= int(add.sum())
    members = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    chosen = [rng.choice(members[bounds[c]:bounds[c + 1]], take[c], replace=False) for c in range(len(counts))]
    return np.sort(np.concatenate(chosen))


def fit_embedding(features: np.ndarray, classes: np.ndarray | None, *, pca_components: int = 50, n_neighbors: int = 15,
                  min_dist: float = 0.1, metric: str = "euclidean", seed: int = 0, fit_subsample: int = 50000,
                  progress: bool = True, with_map: bool = True) -> Embedding:
    """Fit the map on `features` (N, D), whatever set the caller chose (real, generated or both).

    Standardisation and PCA are fitted on all N rows; the UMAP on a class-balanced seeded
    subsample of `fit_subsample` rows when N is larger, and the other rows are projected
    with `transform` in batches. `with_map=False` stops after the PCA: a layer that is measured
    but not drawn needs only the reduction (its `umap` is None and `coords` NaN).
    """
    import umap  # slow to import (numba); only the stages that fit or project need it

    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    n, d = features.shape
    if classes is not None and len(classes) != n:
        raise ValueError(f"{len(classes)} classes for {n} feature rows")
    if n < 4:
        raise UserError(f"fitting a map needs at least 4 samples, got {n}")
    if fit_subsample < 4:
        raise UserError(f"embedding.fit_subsample must be at least 4, got {fit_subsample}")
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} of {n} feature rows contain NaN or infinity (first: row {np.flatnonzero(bad)[0]})")

    x = features.astype(np.float32, copy=False)
    scaler = StandardScaler().fit(x)  # a constant feature keeps scale 1 rather than dividing by 0
    components = min(pca_components, d, n - 1)
    pca = PCA(n_components=components, random_state=seed).fit(scaler.transform(x))
    emb = Embedding(scaler, pca, None, np.empty((n, 2), np.float32), np.arange(n))
    reduced = emb.reduce(x)
    emb.params = dict(pca_components=components, seed=seed, n_fitted=n, n_features=d)
    if not with_map:
        emb.coords[:] = np.nan
        return emb

    fit_index = balanced_subsample(classes if classes is not None else np.zeros(n, int), fit_subsample, seed)
    neighbours = min(n_neighbors, len(fit_index) - 1)
    emb.umap = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=min_dist, metric=metric,
                         random_state=seed, n_jobs=1)  # a seed makes UMAP single-threaded anyway
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(n_jobs|spectral|graph is not fully connected).*")
        emb.umap.fit(reduced[fit_index])
    emb.fit_index = fit_index
    emb.coords[fit_index] = emb.umap.embedding_
    rest = np.setdiff1d(np.arange(n), fit_index, assume_unique=True)
    if len(rest):
        emb.coords[rest] = emb._umap_transform(reduced[rest], 8192, progress, desc="project the rest of the fitted set")
    emb.params = dict(pca_components=components, n_neighbors=neighbours, min_dist=min_dist, metric=metric,
                      seed=seed, fit_subsample=fit_subsample, n_fitted=n, n_umap_fit=len(fit_index), n_features=d)
    return emb


# ---------------------------------------------------------------- persistence


_sha256 = sha256_file  # the one file hash (files.py)


def save_embedding(emb: Embedding, path: str | os.PathLike) -> str:
    """Write the map atomically (files.atomic_write, flushed to disk); returns the SHA-256 (hex) of
    the bytes written, which the caller records in the fit manifest and must hand back to
    `load_embedding`."""
    from .files import atomic_write

    return atomic_write(path, lambda f: joblib.dump(emb, f), sha256=True, fsync=True)


def load_embedding(path: str | os.PathLike, expected_sha256: str) -> Embedding:
    """Load a map this tool wrote. The file's hash is checked before anything is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: fitted map not found; run `dmd2report fit` first")
    if not isinstance(expected_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
        raise UserError(f"{path}: no valid SHA-256 recorded for this map; refusing to load it (run `dmd2report fit` again)")
    actual = _sha256(path)
    if actual != expected_sha256:
        raise UserError(f"{path}: SHA-256 {actual[:16]}... differs from the {expected_sha256[:16]}... recorded when "
                        "it was written; refusing to load it (run `dmd2report fit` again)")
    emb = joblib.load(path)
    if not isinstance(emb, Embedding):
        raise UserError(f"{path}: not a fitted map (holds a {type(emb).__name__})")
    return emb


# ---------------------------------------------------------------- map points and neighbours


def nearest_stored(points_2d: np.ndarray, coords: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k stored samples nearest each map point, on the map: (indices (m, k), distances (m, k) float32),
    nearest first, equal distances by lower index (`knn.knn`, KD-tree path).
    For layers whose stored features cannot be inverted, their full activations stand in."""
    if not 1 <= k <= len(coords):
        raise ValueError(f"k={k} needs 1..{len(coords)}")
    dist, idx = knn(np.asarray(points_2d).reshape(-1, 2), np.asarray(coords).reshape(-1, 2), k)
    return idx, dist


def even_grid(coords: np.ndarray, n: int, margin: float = 0.05, radius: float | None = None,
              return_cells: bool = False):
    """An even n x n grid over the box of `coords`, inset by `margin` of its extent on each
    side, keeping only points with a real point within `radius` (default: half a cell
    diagonal, i.e. roughly the cell around the point is occupied), so inverting them stays
    in distribution. Returns (m, 2) float32 points, row by row (y then x ascending), and
    with `return_cells` also their (row, col) grid cells (m, 2)."""
    coords = np.asarray(coords, np.float64)
    if n < 1 or len(coords) == 0:
        raise ValueError("even_grid needs n >= 1 and at least one point")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = hi - lo
    xs = np.linspace(lo[0] + margin * span[0], hi[0] - margin * span[0], n)
    ys = np.linspace(lo[1] + margin * span[1], hi[1] - margin * span[1], n)
    step = (1 - 2 * margin) * span / max(n - 1, 1)
    if radius is None:
        radius = 0.5 * float(np.hypot(*step)) if n > 1 else float(np.hypot(*span))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    _, idx = knn(points, coords, 1)
    # the nearest point's distance again in float64 from the float64 grid point, as the radius is
    keep = np.sqrt(np.square(points - coords[idx[:, 0]]).sum(axis=1)) <= radius
    cells = np.stack(np.divmod(np.arange(n * n), n), axis=1)[keep]
    points = points[keep].astype(np.float32)
    return (points, cells) if return_cells else points


# ---------------------------------------------------------------- trust


def trust_scores(query_feats: np.ndarray, query_2d: np.ndarray, ref_feats: np.ndarray, ref_2d: np.ndarray,
                 k: int = 10, exclude_self: bool = False, device=None) -> np.ndarray:
    """How faithfully the map shows each query point's neighbourhood, in [0, 1]: the fraction
    of its k nearest reference (real) points in feature space that are also among its k
    nearest reference points on the map. Pass reduced features (`Embedding.reduce`), the
    space the metrics use. With `exclude_self` the queries are the reference set itself
    (row i is reference row i) and a point is not its own neighbour.

    Both searches are exact with equal distances by lower index (`knn.knn`): in feature space the
    chunked search on `device` (None: CUDA when present), on the map the KD-tree."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(query_feats) != len(query_2d) or len(ref_feats) != len(ref_2d):
        raise ValueError("features and map coordinates must have the same number of rows")
    available = len(ref_feats) - int(exclude_self)
    if k > available:
        raise UserError(f"the trust score with k={k} needs more than {k} reference samples, got {len(ref_feats)}")
    if exclude_self and len(query_feats) != len(ref_feats):
        raise ValueError("exclude_self needs the query set to be the reference set")
    base_feats, base_2d = (None, None) if exclude_self else (ref_feats, ref_2d)
    _, in_features = knn(query_feats, base_feats, k, exclude_self=exclude_self, device=device)
    _, on_map = knn(query_2d, base_2d, k, exclude_self=exclude_self)
    # each row holds k distinct indices per set, so equal neighbours after sorting are shared ones
    both = np.sort(np.concatenate([in_features, on_map], axis=1), axis=1)
    shared = (both[:, 1:] == both[:, :-1]).sum(axis=1)
    return (shared / k).astype(np.float32)


def trust_summary(scores: np.ndarray) -> dict:
    """Mean and quantiles of trust scores, for metrics.json and the report."""
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return {"n": 0}
    q = np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(len(s)), "mean": float(s.mean()), "q10": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4]), "min": float(s.min())}
