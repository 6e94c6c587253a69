"""The 2-D map: standardise -> PCA -> UMAP, fitted once and reused for every projection.

The map is for display and navigation only; every metric is computed in the reduced
(PCA) feature space. `Embedding.inverse` walks back from map points to full features,
which is what lets the report generate images from an even grid over the map by masking
a layer with the inverted activations.

Scale (issue 20). Standardisation and PCA are fitted from chunks (`fit_reduction`: the exact mean and
covariance accumulated in float64 on the run's device, then one eigendecomposition), so no full copy of
a layer is ever held. The UMAP is fitted on a class-balanced subsample, on the exact k-NN graph of
`knn.knn` (the run's device); every other point is placed by `Embedding.project`: its exact nearest
fitted points (`knn.knn`), UMAP's membership weights and initialisation for new points, then a few
epochs of umap-learn's own layout optimiser with the fitted map held fixed, one fixed-size chunk at a
time. `embedding.projection = "umap"` keeps umap-learn's `transform` (and its search index) instead.

Reproducibility (`embedding.reproducible`): false (default) lets umap-learn use every core without a
seed: faster (at 50,000 points 1.4x on 2 cores, 9x on 16), but the map's layout differs from run to run
(the reductions, the k-NN graph and the subsample stay exact and identical). true seeds the UMAP, which
makes umap-learn single-threaded: the same features, settings and library versions give the same map,
twice. The start is the first two principal components (`embedding.init = "pca"`), instant, where
umap-learn's spectral start solves an eigenproblem of the graph (about half of a seeded 50,000-point fit
on 2 cores; benchmarks/umap_modes.py). The projection is deterministic either way
and uses every core: with the map fixed, points are independent (`_layout_points`).

A fitted map is a pickle (the UMAP model has no other serialisation). It is only ever
loaded if its SHA-256 equals the one recorded when this tool wrote it, so a pickle from
elsewhere is never unpickled.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from .console import progress as progress_bar
from .device import one_blas_thread
from .errors import UserError
from .files import sha256_file
from .knn import knn

log = logging.getLogger(__name__)

# Below this many fitted points umap-learn's one-thread layout is faster than its parallel one (whose
# per-epoch thread start costs more than the epoch: 2,400 demo points fit in 1.9 s on one thread, 6.2 s on
# two; benchmarks/umap_modes.py), so a fit that need not be reproducible is seeded and one-threaded anyway.
PARALLEL_MIN_POINTS = 10000
PROJECT_CHUNK = 65536          # points per projection chunk: fixed, so a chunk's seeded layout does not depend on N


@functools.cache
def _umap():
    """umap-learn, with numba's on-disk cache switched on for its compiled functions (numba's own
    `Dispatcher.enable_caching`; umap-learn compiles them afresh in every process otherwise; the fit's
    UMAP step on the H200: 26.3 s in the first process, compiling, 5.1 s in later ones; `benchmarks/HISTORY.md`,
    "numba's disk cache and the shared real k-NN"). A function numba cannot cache here (no writable cache directory) is compiled as before."""
    import sys

    import umap  # slow to import (numba); only the stages that fit or project need it
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if name == "umap" or name.startswith("umap."):
            for fn in list(vars(module).values()):
                if isinstance(fn, Dispatcher):
                    with contextlib.suppress(Exception):   # RuntimeError: no cache locator for its file
                        fn.enable_caching()
    return umap


def _layout_points():
    """The projection's layout kernel (`projection_kernel.layout_points`), imported on first use: numba and
    umap-learn load only when a projection runs."""
    from .projection_kernel import layout_points
    return layout_points


REDUCE_BATCH = 16384           # rows per reduction batch (a float64 copy of 16,384 x 768 is 100 MB)
FAST_METRICS = ("euclidean", "l2")  # the metrics `knn.knn` searches exactly (the fast path's graph and projection)


def release(a) -> None:
    """Drop a memory-mapped chunk's pages from this process's resident memory once it has been read
    (they stay in the page cache): a pass over a store then holds one chunk at a time, not the layer."""
    m = getattr(a, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed or not page-aligned: nothing to release
            pass


Chunks = Callable[[], Iterable[np.ndarray]]


def as_chunks(features) -> Chunks:
    """A callable giving a fresh iterable of (n, D) row blocks: a store's chunks pass through; an
    array is cut into REDUCE_BATCH rows."""
    if callable(features):
        return features
    x = np.asarray(features)
    return lambda: (x[s:s + REDUCE_BATCH] for s in range(0, max(len(x), 1), REDUCE_BATCH))


class ExactSearchIndex:
    """The search index umap-learn's `UMAP.transform` queries (`query(X, k, epsilon)` -> (indices, distances),
    nearest first; `_angular_trees` picks its epsilon), answered exactly by `knn.knn` over the fitted points in
    PCA space, Euclidean: the neighbours the map's fit graph was built from, where pynndescent's index would
    approximate them (and compile for a minute on first use)."""
    _angular_trees = False

    def __init__(self, data: np.ndarray):
        self._raw_data = data

    def query(self, X: np.ndarray, k: int, epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        # epsilon: how far pynndescent's approximate search looks past its candidates; nothing to an exact search
        dist, idx = knn(np.asarray(X, np.float32), self._raw_data, k)
        return idx.astype(np.int32), dist


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
        features = np.asarray(features) if not hasattr(features, "shape") else features
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise UserError(f"features of shape {features.shape} do not match the fitted map "
                            f"({self.n_features} features per sample); fit the map again")
        return features

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Standardise + PCA as one affine map x @ W + c (float64): one matrix product per batch instead of
        sklearn's two passes."""
        cached = self.__dict__.get("_affine_cache")
        if cached is None:
            comps = np.asarray(self.pca.components_, np.float64)
            scale = np.asarray(self.scaler.scale_, np.float64)
            w = comps.T / scale[:, None]
            c = -(np.asarray(self.scaler.mean_, np.float64) / scale) @ comps.T - np.asarray(self.pca.mean_, np.float64) @ comps.T
            cached = self.__dict__["_affine_cache"] = (w, c)
        return cached

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_affine_cache", None)
        return state

    def reduce(self, features: np.ndarray, batch_size: int = REDUCE_BATCH) -> np.ndarray:
        """Standardised, PCA-reduced features (n, n_components) float32: the metrics' space.

        Computed in float64 and rounded once, so a row's value does not depend on the rows reduced with it
        (a float32 product's rounding does, through the BLAS kernel its batch shape picks): the stages reduce
        a store chunk by chunk and must agree with each other and with a whole-array reduction."""
        features = self._check(features)
        w, c = self._affine()
        out = np.empty((len(features), self.n_components), np.float32)
        for s in range(0, len(features), batch_size):
            out[s:s + batch_size] = np.asarray(features[s:s + batch_size], np.float64) @ w + c
        return out

    def reduce_chunks(self, chunks: Iterable[np.ndarray], total: int | None = None, progress: bool = True,
                      desc: str = "reduce") -> np.ndarray:
        """`reduce` over row blocks (a store's memory-mapped chunks), each released once reduced: (N, k) float32."""
        parts = []
        with progress_bar(total=total, desc=desc, enabled=progress) as bar:
            for a in chunks:
                parts.append(self.reduce(a))
                bar.update(len(a))
                release(a)
        return np.concatenate(parts) if parts else np.empty((0, self.n_components), np.float32)

    def transform(self, features: np.ndarray, batch_size: int = 8192, progress: bool = True,
                  method: str | None = None) -> np.ndarray:
        """Project new samples onto the map: (n, 2) float32.

        `method` (default: the map's `params["projection"]`; "umap" for maps fitted before it existed):
        "fast" is `project`, "umap" umap-learn's `UMAP.transform` in batches of `batch_size` (on a map fitted with
        "fast", its neighbour search is the exact one of `ExactSearchIndex`)."""
        return self.transform_reduced(self.reduce(features), batch_size, progress, method)

    def transform_reduced(self, reduced: np.ndarray, batch_size: int = 8192, progress: bool = True,
                          method: str | None = None, desc: str = "project", device=None,
                          neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """`transform` of already reduced features (n, n_components); `device` and `neighbours` go to the
        fast projection (`project`)."""
        method = method or self.params.get("projection", "umap")
        if method == "fast":
            return self.project(reduced, progress=progress, desc=desc, device=device, neighbours=neighbours)
        if method != "umap":
            raise ValueError(f"unknown projection {method!r} (fast or umap)")
        _umap()
        self._search_index()
        out = np.empty((len(reduced), 2), np.float32)
        with progress_bar(total=len(reduced), desc=desc, enabled=progress) as bar:
            for s in range(0, len(reduced), batch_size):
                out[s:s + batch_size] = self.umap.transform(reduced[s:s + batch_size])
                bar.update(len(out[s:s + batch_size]))
        return out

    def _search_index(self) -> None:
        """umap-learn's transform asks a search index for each new point's nearest fitted points; a map fitted on
        the exact k-NN graph carries none (building and pickling pynndescent's costs minutes at scale): given
        here, on first use, as the same exact search the graph was made with (`ExactSearchIndex`)."""
        model = self.umap
        if getattr(model, "_small_data", True) or getattr(model, "_knn_search_index", None) is not None:
            return
        model._knn_search_index = ExactSearchIndex(model._raw_data)

    def project(self, reduced: np.ndarray, *, n_epochs: int | None = None, device=None, progress: bool = True,
                desc: str = "project", neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The fast projection of reduced features (n, n_components): (n, 2) float32.

        Per chunk of PROJECT_CHUNK points, what umap-learn's `transform` does, with an exact search:
        1. each point's `n_neighbors` nearest UMAP-fitted points in PCA space, exact (`knn.knn` on `device`,
           None: CUDA when present);
        2. their membership weights for new points (umap-learn's `smooth_knn_dist` with the local
           connectivity less one, `compute_membership_strengths`);
        3. the start: the weight-normalised mean of those fitted points' map positions (a point equal to
           a fitted one starts on it);
        4. `n_epochs` (default `params["projection_epochs"]`) epochs of umap-learn's own layout optimiser
           (its single epoch, reordered per point: `_layout_points`) with the fitted map fixed: each edge is
           sampled in proportion to its weight over the point's largest (that one every epoch; edges below
           1 / n_epochs of it dropped), with negative sampling from a random state per point (the seed and
           the point's start), so a point lands at the same place whichever points are projected with it
           and on any number of threads.

        `neighbours`: (distances, indices) of `knn.knn(reduced, fitted rows, k >= n_neighbors)`, when the
        caller has that search already (the fit stage shares it with the trust scores); the first
        n_neighbors columns are used.
        """
        _umap()
        from umap.umap_ import compute_membership_strengths, smooth_knn_dist

        reduced = np.asarray(reduced, np.float32)
        model = self.umap
        n_epochs = int(self.params.get("projection_epochs", 100) if n_epochs is None else n_epochs)
        seed = int(self.params.get("seed", 0))
        base = np.ascontiguousarray(model._raw_data, np.float32)
        fitted = np.ascontiguousarray(model.embedding_, np.float32)
        k = min(int(model._n_neighbors), len(base))
        connectivity = max(0.0, float(model.local_connectivity) - 1.0)
        # umap-learn's layout draws negatives from a state per point: this seed plus the point's start
        # position, so a point's result does not depend on which other points are projected with it
        rng_state = np.random.default_rng([seed, 20]).integers(-(2**31) + 1, 2**31 - 1, 3).astype(np.int64)
        out = np.empty((len(reduced), 2), np.float32)
        bar = progress_bar(total=len(reduced), desc=desc, enabled=progress)
        for s in range(0, len(reduced), PROJECT_CHUNK):
            if neighbours is None:
                dist, idx = knn(reduced[s:s + PROJECT_CHUNK], base, k, device=device)
            else:
                dist = np.ascontiguousarray(neighbours[0][s:s + PROJECT_CHUNK, :k], np.float32)
                idx = np.ascontiguousarray(neighbours[1][s:s + PROJECT_CHUNK, :k])
            m = len(idx)
            sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=connectivity)
            _, _, vals, _ = compute_membership_strengths(idx.astype(np.int32), dist, sigmas, rhos, bipartite=True)
            w = np.asarray(vals, np.float64).reshape(m, k)   # row-major (point, neighbour), constant degree
            # start: on a fitted point the point equals (weight 1), else the weighted mean of its neighbours
            exact = w >= 1.0
            start = (w[..., None] * fitted[idx]).sum(1) / np.maximum(w.sum(1), 1e-300)[:, None]
            on = exact.any(1)
            start[on] = fitted[idx[on, exact[on].argmax(1)]]
            y = np.ascontiguousarray(start, np.float32)
            # each edge sampled in proportion to its weight relative to the point's strongest edge (sampled
            # every epoch); umap-learn's transform divides by the batch's strongest edge instead, which
            # would make a point's result depend on the other points of its batch
            rel = w / np.maximum(w.max(1, keepdims=True), 1e-300)
            keep = (rel >= 1.0 / max(n_epochs, 1)).ravel()
            if n_epochs > 0 and keep.any():
                head = np.repeat(np.arange(m, dtype=np.int32), k)[keep]
                tail = idx.astype(np.int32).ravel()[keep]
                epochs_per_sample = 1.0 / rel.ravel()[keep]
                offsets = np.concatenate([[0], np.cumsum(np.bincount(head, minlength=m))]).astype(np.int64)
                states = np.full((m, len(rng_state)), rng_state, np.int64) + \
                    y[:, 0].astype(np.float64).view(np.int64).reshape(-1, 1)   # umap-learn's state per point
                _layout_points()(y, fitted, offsets, tail, epochs_per_sample, float(model._a), float(model._b), states,
                                 float(model.repulsion_strength), float(model._initial_alpha) / 4.0,
                                 float(model.negative_sample_rate), n_epochs)
            out[s:s + m] = y
            bar.update(m)
        bar.close()
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
        _umap()
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


def _non_finite(a: np.ndarray, row0: int, n_total: int | None = None) -> None:
    bad = ~np.isfinite(np.asarray(a, np.float32)).all(axis=1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} feature rows of a block of {len(a)} contain NaN or infinity "
                        f"(first: row {row0 + int(np.flatnonzero(bad)[0])})")


def fit_reduction(features, pca_components: int = 50, *, seed: int = 0, device=None, progress: bool = True,
                  check_finite: bool = True, desc: str = "standardise + PCA", total: int | None = None) -> Embedding:
    """Standardisation + PCA fitted on every row of `features` (an array or `as_chunks` blocks, e.g. a
    store's memory-mapped chunks, read once and released one by one): an Embedding without a map.

    Exact and streaming: the column sums and the Gram matrix of the rows, shifted by the first block's
    mean (which keeps the cancellation of E[x x^T] - mean mean^T small), are accumulated in float64 on
    `device` (None: CUDA when present); the covariance of the standardised rows then gives the principal
    axes by one symmetric eigendecomposition. This is sklearn's StandardScaler (population variance, a
    constant feature keeps scale 1) followed by PCA with the full solver (sample covariance, n - 1), up
    to float64 rounding; each axis's sign is fixed so its largest coordinate is positive (sklearn's
    convention), so the result is deterministic. `seed` is recorded only: nothing here is random.
    """
    import torch

    from .knn import as_device

    dev = as_device(device)
    fdt = torch.float64 if dev.type != "mps" else torch.float32  # MPS has no float64; accumulate on the CPU
    if dev.type == "mps":
        dev = torch.device("cpu")
    total = len(features) if hasattr(features, "shape") else total   # rows of chunks: the caller's count
    n, shift, s1, gram = 0, None, None, None
    with torch.no_grad(), progress_bar(total=total, desc=desc, enabled=progress) as bar:
        for a in as_chunks(features)():
            if a.ndim != 2:
                raise ValueError(f"features must be (N, D), got shape {a.shape}")
            if check_finite:
                _non_finite(a, n)
            t = torch.from_numpy(np.array(a, np.float32)).to(dev, fdt)  # a copy of one chunk: memmaps are read-only
            release(a)
            if shift is None:
                d = t.shape[1]
                shift = t.mean(0)
                s1 = torch.zeros(d, dtype=fdt, device=dev)
                gram = torch.zeros(d, d, dtype=fdt, device=dev)
            t -= shift
            s1 += t.sum(0)
            gram.addmm_(t.T, t)
            n += len(t)
            bar.update(len(t))
    if n < 4:
        raise UserError(f"fitting a map needs at least 4 samples, got {n}")
    mean_c = s1 / n
    cov = gram / n - torch.outer(mean_c, mean_c)              # population covariance
    var = cov.diagonal().clamp(min=0.0)
    scale = var.sqrt()
    scale = torch.where(scale < 10 * torch.finfo(torch.float64).eps, torch.ones_like(scale), scale)
    cov_std = cov / torch.outer(scale, scale) * (n / (n - 1))  # sample covariance of the standardised rows
    with one_blas_thread(torch_cpu=True):   # on the CPU: LAPACK's threads would fight torch's (device.one_blas_thread)
        evals, evecs = torch.linalg.eigh(cov_std)
    evals, evecs = evals.flip(0).clamp(min=0.0), evecs.flip(1)
    components = min(pca_components, d, n - 1)
    comps = evecs[:, :components].T
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    ev = evals[:components]

    def host(t):
        return t.double().cpu().numpy()

    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = host(shift + mean_c), host(var), host(scale)
    scaler.n_features_in_, scaler.n_samples_seen_ = d, n
    pca = PCA(n_components=components, random_state=seed)
    pca.components_, pca.mean_ = host(comps), np.zeros(d)    # standardised rows have mean 0
    pca.n_components_, pca.n_features_in_, pca.n_samples_ = components, d, n
    pca.explained_variance_ = host(ev)
    pca.explained_variance_ratio_ = host(ev / evals.sum().clamp(min=1e-300))
    pca.singular_values_ = host((ev * (n - 1)).sqrt())
    pca.noise_variance_ = float(evals[components:].mean()) if components < min(n, d) else 0.0
    emb = Embedding(scaler, pca, None, np.full((n, 2), np.nan, np.float32), np.arange(n))
    emb.params = dict(pca_components=components, seed=seed, n_fitted=n, n_features=d)
    return emb


def fit_embedding(features, classes: np.ndarray | None, *, pca_components: int = 50, n_neighbors: int = 15,
                  min_dist: float = 0.1, metric: str = "euclidean", init: str = "pca", seed: int = 0,
                  fit_subsample: int = 50000, projection: str = "fast", projection_epochs: int = 100,
                  reproducible: bool = False, device=None,
                  progress: bool = True, with_map: bool = True) -> Embedding:
    """Fit the map on `features` (an (N, D) array or `as_chunks` blocks), whatever set the caller chose.

    `fit_reduction` on all N rows, then (with `with_map`) `fit_map` on their reduction. `with_map=False`
    stops after the PCA: a layer that is measured but not drawn needs only the reduction (its `umap` is
    None and `coords` NaN)."""
    if fit_subsample < 4:
        raise UserError(f"embedding.fit_subsample must be at least 4, got {fit_subsample}")
    if hasattr(features, "shape") and (features.ndim != 2):
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if hasattr(features, "shape") and classes is not None and len(classes) != len(features):
        raise ValueError(f"{len(classes)} classes for {len(features)} feature rows")
    emb = fit_reduction(features, pca_components, seed=seed, device=device, progress=progress)
    if not with_map:
        return emb
    chunks = as_chunks(features)
    reduced = emb.reduce_chunks(chunks(), total=emb.params["n_fitted"], progress=progress)
    fit_map(emb, reduced, classes, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, init=init,
            fit_subsample=fit_subsample, projection=projection, projection_epochs=projection_epochs,
            reproducible=reproducible, device=device, progress=progress)
    return emb


def fit_map(emb: Embedding, reduced: np.ndarray, classes: np.ndarray | None, *, n_neighbors: int = 15,
            min_dist: float = 0.1, metric: str = "euclidean", init: str = "pca", fit_subsample: int = 50000, projection: str = "fast",
            projection_epochs: int = 100, reproducible: bool = False, device=None, progress: bool = True,
            graph_knn: tuple[np.ndarray, np.ndarray] | None = None, on_fitted=None) -> Embedding:
    """Fit the UMAP of `emb` on its reduced rows (N, n_components): on a class-balanced seeded subsample
    of `fit_subsample` rows when N is larger, every other row placed by the projection (`project` for
    "fast", umap-learn's transform for "umap"), which later projections of the map use too.

    With "fast" and a Euclidean metric the UMAP gets the exact k-NN graph of the subsample from `knn.knn`
    on `device` as `precomputed_knn` (deterministic; no pynndescent index is built or saved). Other
    metrics, which `knn.knn` does not search, use umap-learn's own search and transform.
    `reproducible`: seeded and single-threaded (the same map twice) or every core without a seed (from
    PARALLEL_MIN_POINTS fitted points; below that one thread is faster, and then seeded anyway).

    The graph is each fitted row itself followed by its n_neighbors - 1 nearest other fitted rows
    (`knn.knn(..., exclude_self=True)`): `graph_knn` hands that search in when the caller has it (the fit
    stage shares it with the real set's trust scores when every real row is fitted); its first columns
    are used. `on_fitted()`, when given, is called once the UMAP is fitted, before the other rows are
    projected (the fit stage starts its background searches there)."""
    umap = _umap()

    n = len(reduced)
    if classes is not None and len(classes) != n:
        raise ValueError(f"{len(classes)} classes for {n} feature rows")
    if projection not in ("fast", "umap"):
        raise UserError(f"embedding.projection must be fast or umap, got {projection!r}")
    if projection == "fast" and metric not in FAST_METRICS:
        log.warning("embedding.projection = fast searches Euclidean distances only; metric %r uses umap-learn's "
                    "transform", metric)
        projection = "umap"
    seed = int(emb.params.get("seed", 0))
    fit_index = balanced_subsample(classes if classes is not None else np.zeros(n, int), fit_subsample, seed)
    neighbours = min(n_neighbors, len(fit_index) - 1)
    fit_red = np.ascontiguousarray(reduced[fit_index])
    if init not in ("pca", "spectral"):
        raise UserError(f"embedding.init must be pca or spectral, got {init!r}")
    parallel = not reproducible and len(fit_index) >= PARALLEL_MIN_POINTS
    kw = dict(n_components=2, n_neighbors=neighbours, min_dist=min_dist, metric=metric, init=init,
              random_state=None if parallel else seed, n_jobs=-1 if parallel else 1)
    if projection == "fast":
        if graph_knn is None:
            graph_knn = knn(fit_red, None, neighbours - 1, exclude_self=True, device=device)
        dist, idx = graph_knn[0][:, :neighbours - 1], graph_knn[1][:, :neighbours - 1]
        if dist.shape != (len(fit_red), neighbours - 1):
            raise ValueError(f"graph_knn of shape {dist.shape}: need {len(fit_red)} rows of >= {neighbours - 1}")
        rows = np.arange(len(fit_red))[:, None]
        kw["precomputed_knn"] = (np.concatenate([rows, idx], 1).astype(np.int32),
                                 np.concatenate([np.zeros_like(rows, np.float32), dist], 1).astype(np.float32))
    emb.umap = umap.UMAP(**kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(n_jobs|spectral|graph is not fully connected|precomputed_knn).*")
        emb.umap.fit(fit_red)
    emb.fit_index = fit_index
    emb.coords = np.empty((n, 2), np.float32)
    emb.coords[fit_index] = emb.umap.embedding_
    emb.params.update(n_neighbors=neighbours, min_dist=min_dist, metric=metric, init=init, fit_subsample=fit_subsample,
                      n_umap_fit=len(fit_index), projection=projection, projection_epochs=projection_epochs,
                      reproducible=reproducible, parallel=parallel)
    log.debug("UMAP fitted on %d of %d points (%s)", len(fit_index), n, "every core" if parallel else "one thread, seeded")
    if on_fitted is not None:
        on_fitted()
    rest = np.setdiff1d(np.arange(n), fit_index, assume_unique=True)
    if len(rest):
        emb.coords[rest] = emb.transform_reduced(reduced[rest], progress=progress, device=device,
                                                 desc="project the rest of the fitted set")
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
        raise UserError(f"{path}: no valid SHA-256 recorded for this map; refusing to load it; rerun "
                        "`dmd2report fit --overwrite` or `dmd2report build --force fit`")
    actual = _sha256(path)
    if actual != expected_sha256:
        raise UserError(f"{path}: SHA-256 {actual[:16]}... differs from the {expected_sha256[:16]}... recorded when "
                        "it was written; refusing to load it; rerun "
                        "`dmd2report fit --overwrite` or `dmd2report build --force fit`")
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
                 k: int = 10, exclude_self: bool = False, device=None,
                 feature_neighbours: np.ndarray | None = None) -> np.ndarray:
    """How faithfully the map shows each query point's neighbourhood, in [0, 1]: the fraction
    of its k nearest reference (real) points in feature space that are also among its k
    nearest reference points on the map. Pass reduced features (`Embedding.reduce`), the
    space the metrics use. With `exclude_self` the queries are the reference set itself
    (row i is reference row i) and a point is not its own neighbour.

    Both searches are exact with equal distances by lower index (`knn.knn`): in feature space the
    chunked search on `device` (None: CUDA when present), on the map the KD-tree. `feature_neighbours`:
    the indices of that feature-space search with k or more columns, when the caller has it already."""
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
    if feature_neighbours is None:
        _, in_features = knn(query_feats, base_feats, k, exclude_self=exclude_self, device=device)
    elif feature_neighbours.shape[0] != len(query_feats) or feature_neighbours.shape[1] < k:
        raise ValueError(f"feature_neighbours of shape {feature_neighbours.shape}: need {len(query_feats)} rows of >= {k}")
    else:
        in_features = feature_neighbours[:, :k]
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
