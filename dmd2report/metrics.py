"""The measure engine: every declared metric of generated features against real features, exact and in bounded memory.

Notation: X the N real features, Y the M generated features of one conditioning variant (float32,
(N, D) and (M, D)), d the Euclidean distance, r_k(x) the distance from x to its k-th nearest OTHER
point of its own set (k-NN by index exclusion: a duplicate of x is another point, at distance 0).

Tie convention: a point lies inside a ball when its distance is `<=` the radius; a point at exactly
r_k(x) from x is inside. Distances near a radius are recomputed directly (see `knn.within_radius`),
so the decision is the one of the float32 direct distance.

The metrics themselves, their definitions and formulas, are declared in `metric_defs.METRICS`. This engine makes
the expensive evidence they share once per scope (`metric_defs.Evidence`): the exact k-NN passes (`knn.py`), the
radii, the per-point ball memberships, the real moments, the nearest real samples' and centroids' classes; then
`score` runs each declared metric's `compute` on it and adds its bootstrap interval.

Scopes: `overall` uses all of X and Y. `per_class[c]` restricts X to real samples of class c and Y to
samples conditioned on c, with radii recomputed inside those subsets (the `*_in_class` definitions);
its `coverage_global` is the fraction of real class-c points covered by ANY sample of the variant with
the radii of the whole real set, which also exists for variants without a class (uniform, zero).

Bootstrap intervals (percentile, seeded) hold the radii and ball memberships of the full sets fixed and
resample the scored points: generated samples for precision and density, real points for recall and
coverage. They show the sampling error of the scored set, not of the manifold estimate.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from .device import one_blas_thread
from .files import save_text
from .knn import DEFAULT_BLOCK_BYTES, as_device, knn, knn_grouped, radius_counts, to_tensor
from .metric_defs import (METRICS, Evidence, Metric, definitions, frechet_from_stats, markdown, mean_and_cov,
                          sqrt_psd)

log = logging.getLogger(__name__)

SCHEMA = "dmd2report-metrics/1"

NO_CLASS = -1   # conditioning class of samples without one (uniform, zero conditioning)


# ----------------------------------------------------------------------------------------------
# Building blocks.

def knn_radii(feats, ks, *, neighbours=None, device=None, max_block_bytes=DEFAULT_BLOCK_BYTES):
    """{k: r_k} for each k in ks from one exact search (k-th nearest other point of the same set),
    plus the (distances, indices) of that search for reuse. `neighbours`: (distances, indices) of that
    search made elsewhere on the same rows (max(ks) or more columns: its prefix is this search), used
    instead of searching again."""
    kmax = max(ks)
    if neighbours is not None and len(neighbours[1]) == len(feats) and neighbours[1].shape[1] >= kmax:
        d, i = (np.ascontiguousarray(a[:, :kmax]) for a in neighbours)
    else:
        d, i = knn(feats, None, kmax, exclude_self=True, device=device, max_block_bytes=max_block_bytes)
    return {k: d[:, k - 1].copy() for k in ks}, (d, i)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (each needs >= 2 rows)."""
    with one_blas_thread():
        return frechet_from_stats(*mean_and_cov(x), *mean_and_cov(y))


def bootstrap_ci(values: np.ndarray, n_boot: int, level: float, rng: np.random.Generator):
    """Percentile interval of the mean of `values` over `n_boot` resamples with replacement.

    A resample draws each of the n values with probability 1/n, so how often each distinct value is drawn
    is multinomial: when the values take few distinct levels (the 0/1 flags behind precision, recall and
    coverage; density's small counts) the resampled means come from one multinomial draw of the levels'
    counts per resample, O(levels) instead of O(n) each, with exactly the same distribution. Measured as a
    third of the measure stage's time with ~1,000 classes (16,000 intervals) before."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0 or n_boot <= 0:
        return None
    levels, counts = np.unique(values, return_counts=True)
    if len(levels) <= max(8, n // 16):
        means = rng.multinomial(n, counts / n, size=n_boot) @ levels / n
    else:
        means = np.empty(n_boot)
        per = max(1, 2_000_000 // n)   # resamples per batch: bounded index matrix
        for s in range(0, n_boot, per):
            b = min(per, n_boot - s)
            means[s:s + b] = values[rng.integers(0, n, size=(b, n))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def point_flags(real, gen, real_r_pr, real_r_dc, gen_r_pr, *, k_gen_real: int = 0, k_real_gen: int = 0,
                real_groups=None, gen_groups=None, device=None, max_block_bytes=DEFAULT_BLOCK_BYTES) -> dict:
    """Per-point indicators behind precision, recall, density and coverage (their means are the metrics),
    from one pass over the (generated, real) pairs (`knn.radius_counts`): density (per generated sample) and
    coverage (per real point) count the same test d(y, x) <= r_dc(x), by row and by column; precision tests
    r_pr(x), recall r_pr(y) of the generated sample. gen_r_pr None (too few generated points for r_k)
    leaves recall out. `k_gen_real` > 0 adds the exact k nearest real points of each generated sample
    ("nn_real": (distances, indices)) from the same matrix products, `k_real_gen` > 0 the exact k nearest
    generated samples of each real point ("nn_gen_of_real"; from the same blocks on the CPU). With groups
    (classes), each group on its own (the in-class scopes; radii NaN where a group has none)."""
    out = radius_counts(gen, real, col_radii=np.stack([real_r_pr, real_r_dc], axis=1), row_radius=gen_r_pr,
                        k=k_gen_real, k_base=k_real_gen, q_groups=gen_groups, b_groups=real_groups, device=device,
                        max_block_bytes=max_block_bytes)
    flags = {
        "gen_in_real_manifold": out["row_counts"][:, 0] > 0,
        "gen_density_count": out["row_counts"][:, 1],
        "real_cover_count": out["col_counts"][:, 1],
        "real_covered": out["col_counts"][:, 1] > 0,
        "nn_real": out["knn"],
        "nn_gen_of_real": out["knn_base"],
    }
    if gen_r_pr is not None:
        flags["real_in_gen_manifold"] = out["col_counts_row"] > 0
    return flags


def covered_by(real_gen_dist, real_gen_idx, real_r_dc, cover_cap):
    """The generated samples covering each real point (d(x, y) <= r_dc(x)), nearest first, at most cover_cap,
    -1 padded: the prefix of x's exact nearest generated samples within r_dc(x) (covering is monotone in the
    distance), so it has `knn`'s order and ties. Needs the nearest min(cover_cap, M) of each real point."""
    w = min(cover_cap, real_gen_idx.shape[1])
    out = np.full((len(real_gen_idx), cover_cap), -1, np.int64)
    inside = real_gen_dist[:, :w] <= np.asarray(real_r_dc, np.float32)[:, None]
    out[:, :w] = np.where(inside, real_gen_idx[:, :w], -1)
    return out


def real_halves(n: int, classes, seed: int) -> np.ndarray:
    """(n,) bool, True for the second half of a seeded split of the real set: within each class (the whole set
    without classes) its rows in a random order go alternately to the halves, so both halves hold every class
    in the same proportion and differ in size by at most one row per class."""
    rng = np.random.default_rng([seed, zlib.crc32(b"fd_real_halves")])
    cls = np.zeros(n, np.int64) if classes is None else np.asarray(classes, np.int64)
    order = np.lexsort((rng.random(n), cls))         # by class, randomly within a class
    srt = cls[order]
    start = np.searchsorted(srt, srt, "left")        # first sorted position of each row's class
    second = np.zeros(n, bool)
    second[order] = (np.arange(n) - start) % 2 == 1
    return second


def _moments_by_half(x: np.ndarray, second: np.ndarray, chunk_bytes: int = 1 << 26):
    """[(mean, covariance)] of x's rows in the first and the second half, in float64, two passes over row
    chunks of x (it may be memory-mapped): never a float64 copy of x, never more than one chunk at a time."""
    n, d = x.shape
    rows = max(1, chunk_bytes // (8 * max(d, 1)))
    halves = (~second, second)
    sums, counts = [np.zeros(d) for _ in halves], [int(h.sum()) for h in halves]
    for a in range(0, n, rows):
        c = np.asarray(x[a:a + rows], np.float64)
        for s, h in zip(sums, halves):
            s += c[h[a:a + rows]].sum(axis=0)
    means = [s / max(m, 1) for s, m in zip(sums, counts)]
    scatter = [np.zeros((d, d)) for _ in halves]
    for a in range(0, n, rows):
        c = np.asarray(x[a:a + rows], np.float64)
        for sc, mu, h in zip(scatter, means, halves):
            z = c[h[a:a + rows]] - mu
            sc += z.T @ z
    return [(mu, sc / (m - 1)) for mu, sc, m in zip(means, scatter, counts)], counts


def fd_real_halves(real: np.ndarray, real_classes, seed: int) -> dict:
    """metrics.json's reference "fd" of a feature space: the Frechet distance between two halves of the real set
    (`real_halves`), the scale against which a generated set's FD reads (it is not 0 even for real data, and
    grows as samples get fewer). Exact (no subsample), from streamed float64 moments. An entry as every
    other (`n_real` the whole real count), plus `n_halves`; value None below 2 rows a half."""
    second = real_halves(len(real), real_classes, seed)
    n_b = int(second.sum())
    n_a = len(real) - n_b
    value = None
    if min(n_a, n_b) >= 2:
        with one_blas_thread():
            (mu_a, cov_a), (mu_b, cov_b) = _moments_by_half(real, second)[0]
            value = frechet_from_stats(mu_a, cov_a, mu_b, cov_b)
    return _entry(value, "fd_real", len(real), 0) | {"n_halves": [n_a, n_b]}


def fd_real_halves_per_class(real: np.ndarray, real_classes, seed: int) -> dict:
    """{class: entry} of metrics.json's "reference_per_class": within each class, the Frechet distance between its
    rows in the two halves of `real_halves` (the same split as the overall scale), the scale a class's FD reads
    against (`fd_real_in_class`). A class's halves are small, often fewer rows than dimensions: then the trace of
    the square root comes from the singular values of the two halves' centred rows' cross product
    (`frechet_from_rows`), never a (D, D) eigendecomposition per class. Value None below 2 rows a half."""
    if real_classes is None:
        return {}
    cls = np.asarray(real_classes, np.int64)
    second = real_halves(len(real), cls, seed)
    index = _ClassIndex(cls, np.unique(cls))
    out = {}
    with one_blas_thread():
        for i, c in enumerate(index.classes):
            rows = index.rows(i)
            xc, half = np.asarray(real[rows], np.float64), second[rows]
            n_a, n_b = int((~half).sum()), int(half.sum())
            value = frechet_from_rows(xc[~half], xc[half]) if min(n_a, n_b) >= 2 else None
            out[str(int(c))] = _entry(value, "fd_real_in_class", len(rows), 0) | {"n_halves": [n_a, n_b]}
    return out


def frechet_from_rows(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of Gaussians fitted to the rows of a and b (float64, unbiased covariances), as
    `frechet_from_stats` of their moments. With fewer rows than dimensions it works in the rows' space: S_a^1/2 S_b
    S_a^1/2 has the nonzero eigenvalues of (Z_b Z_a^T)(Z_b Z_a^T)^T / ((n_a - 1)(n_b - 1)), Z the centred rows, so
    the trace of its square root is the sum of Z_b Z_a^T's singular values over sqrt((n_a - 1)(n_b - 1))."""
    n_a, n_b, d = len(a), len(b), a.shape[1]
    if max(n_a, n_b) >= d:
        return frechet_from_stats(*mean_and_cov(a), *mean_and_cov(b))
    za, zb = a - a.mean(axis=0), b - b.mean(axis=0)
    ca, cb = n_a - 1, n_b - 1
    tr_sqrt = np.linalg.svd(zb @ za.T, compute_uv=False).sum() / math.sqrt(ca * cb)
    fd = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2) + (za * za).sum() / ca + (zb * zb).sum() / cb
               - 2 * tr_sqrt)
    return max(fd, 0.0)


def _entry(value, definition, n_real, n_gen, k=None, ci=None) -> dict:
    e = {"value": None if value is None else float(value), "definition": definition, "k": k,
         "n_real": int(n_real), "n_generated": int(n_gen)}
    if ci is not None:
        e["ci_low"], e["ci_high"] = ci
    return e


def _rng(seed: int, variant: str, cls: int, metric: str) -> np.random.Generator:
    """A generator per (variant, scope, metric), from run.seed and those names alone: an interval depends on the
    data and the seed only, not on the order of computation, on how many sets are measured beside it or on the
    generator's name (a set labelled `<generator>/<variant>` in a comparison draws the stream of `<variant>`), so a
    generator measured alone and within a comparison gets the same intervals."""
    key = variant.rsplit("/", 1)[-1]
    return np.random.default_rng([seed, zlib.crc32(key.encode()), cls + 1, zlib.crc32(metric.encode())])


# The declared scopes (`Metric.scope`) a scope's entries come from: every variant's overall entry, a class's
# entries where samples are conditioned on it, and those of a class without such samples.
OVERALL, IN_CLASS, CLASS_ONLY = ("overall",), ("overall", "per_class"), ("per_class",)


def _has(e: Evidence, m: Metric) -> bool:
    """The metric is computed (`compute`, not measured elsewhere) and the scope has the evidence it needs."""
    return m.compute is not None and all(getattr(e, field) is not None for field in m.needs)


def _value(v):
    """A metric's value from what its `compute` returned: the mean of per-point values (None without points)."""
    if isinstance(v, np.ndarray):
        return np.mean(v) if len(v) else None
    return v


def score(e: Evidence, scopes: tuple[str, ...], *, in_class: bool, variant: str, cls: int = -1):
    """The entries of the declared metrics of `scopes` that the scope's evidence `e` has what they need for: each
    metric's `compute` once, with its bootstrap interval (seeded per variant, scope and metric: `_rng`); and the
    per-point values behind them ({key: array}, for the per-sample arrays)."""
    s = e.settings
    entries, points = {}, {}
    for key, m in METRICS.items():
        if m.scope not in scopes or not _has(e, m):
            continue
        v, ci = m.compute(e), None
        if isinstance(v, np.ndarray):
            points[key] = v
            if m.bootstrap:
                ci = bootstrap_ci(v, s["bootstrap"], s["ci_level"], _rng(s["seed"], variant, cls, key))
        n_gen = {"scope": e.n_generated, "set": e.n_set, "conditioned": len(e.cond) if e.cond is not None else 0}
        entries[key] = _entry(_value(v), f"{key}_in_class" if in_class and m.in_class else key, e.n_real,
                              n_gen[m.counts], m.k(s), ci)
    return entries, points


def reference_entries(e: Evidence) -> dict:
    """metrics.json's "reference" entries the engine makes: each `real_reference` metric with the real set scored
    as if it were generated (`e`), `<key>_real`."""
    return {key: _entry(_value(m.compute(e)), f"{key}_real", e.n_real, 0, m.k(e.settings))
            for key, m in METRICS.items() if m.real_reference and _has(e, m)}


# ----------------------------------------------------------------------------------------------
# Everything for one feature space.

def measure(real: np.ndarray, real_classes, generated: Mapping[str, tuple], *, feature_space: str,
            k_pr: int = 3, k_dc: int = 5, k_fidelity: int = 10, k_neighbours: int = 8, bootstrap: int = 200,
            ci_level: float = 0.95, seed: int = 0, cover_cap: int = 16, per_class: bool = True,
            per_class_fd: bool = True, arrays: bool = True, device=None,
            max_block_bytes: int = DEFAULT_BLOCK_BYTES, real_neighbours: tuple | None = None,
            real_extra: Mapping | None = None, reference_moments: tuple | None = None) -> dict:
    """All metrics of one feature space: every variant overall and per class, plus per-point arrays.

    real: (N, D) features; real_classes: (N,) int class ids or None.
    generated: {variant: (features (M, D), conditioning classes (M,) with NO_CLASS = -1, or None[, extra])}.
    A standard feature space's evidence besides its features (`Evidence`): `extra` and `real_extra` may hold
    "predicted" ((M,) its classifier's top-1 class in the data's ids, -1 for none) and "score_logits" ((M, C), the
    Inception Score's); `reference_moments`: (mean, covariance) of a published reference set in the space.
    Returns {"feature_space", "dims", "n_real", "settings", "reference", "variants": {variant:
    {"overall": {metric: entry}, "per_class": {class: {metric: entry}}}}, "arrays": {"real": {...},
    "variants": {variant: {...}}}}; an entry is {"value", "definition", "k", "n_real", "n_generated"
    [, "ci_low", "ci_high"]}, value None where the sets are too small for the definition.

    arrays["real"]: r_pr, r_dc (radii), nn_real_dist/idx (k_neighbours nearest other real points).
    arrays["variants"][v]: per generated sample nn_real_*, nn_gen_* (nearest other generated), gen_in_real_manifold
    (precision flag), gen_density (its density term, count / k_dc), gen_fidelity (NaN without a class),
    gen_centroid_class; per real point real_covered, real_cover_count, real_covered_by (generated indices,
    nearest first, -1 padded, at most cover_cap), real_nn_gen_*. `arrays=False` (a layer whose per-point
    arrays are not kept) returns "arrays": None and skips the searches only they need (the neighbour
    lists, the real -> generated search). `real_neighbours`: (distances, indices) of the exact k-NN of the real
    rows among themselves (`knn(real, None, k, exclude_self=True)`) when the caller has that search already
    (the fit stage's, on the same rows); used when it has enough columns, since a prefix of it is the search
    this function would make.

    Work per variant: one pass over the (generated, real) pairs for the four k-NN metrics, the generated
    samples' nearest real points and (arrays only) the real points' nearest generated samples (`point_flags`;
    on a GPU the last is a search of its own); the per-class scopes for all classes at once in blocks of
    whole classes (`knn.knn_grouped`, `knn.radius_counts` with groups). Each step is logged at DEBUG level.
    """
    with one_blas_thread():
        return _measure(real, real_classes, generated, feature_space, k_pr, k_dc, k_fidelity, k_neighbours,
                        bootstrap, ci_level, seed, cover_cap, per_class, per_class_fd, arrays, device,
                        max_block_bytes, real_neighbours, dict(real_extra or {}), reference_moments)


class _ClassIndex:
    """Rows of each class of a label array, without an (N x classes) mask: one stable sort, then the rows
    of class c are order[start[c]:end[c]] in their original order (the order of `labels == c`)."""

    def __init__(self, labels: np.ndarray, classes):
        self.labels = labels
        self.order = np.argsort(labels, kind="stable")
        srt = labels[self.order]
        self.classes = np.asarray(classes, np.int64)
        self.start = np.searchsorted(srt, self.classes, "left")
        self.end = np.searchsorted(srt, self.classes, "right")

    def rows(self, i: int) -> np.ndarray:
        """Rows of the i-th class of `classes`."""
        return self.order[self.start[i]:self.end[i]]


def _nan_where_inf(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan).astype(np.float32)


def _measure(real, real_classes, generated, feature_space, k_pr, k_dc, k_fidelity, k_neighbours, bootstrap,
             ci_level, seed, cover_cap, per_class, per_class_fd, want_arrays, device, max_block_bytes,
             real_neighbours=None, real_extra=None, reference_moments=None) -> dict:
    dev = as_device(device)
    kw = dict(device=dev, max_block_bytes=max_block_bytes)
    real_np = np.ascontiguousarray(real, dtype=np.float32)
    n_real, dims = real_np.shape
    if n_real <= max(k_pr, k_dc):
        raise ValueError(f"{feature_space}: {n_real} real samples, need more than k = {max(k_pr, k_dc)}")
    x = to_tensor(real_np, dev)
    rc = None if real_classes is None else np.asarray(real_classes, dtype=np.int64)
    if rc is not None and rc.shape != (n_real,):
        raise ValueError(f"{feature_space}: real_classes of shape {rc.shape} for {n_real} real samples")
    classes = np.zeros(0, np.int64) if rc is None else np.unique(rc)
    settings = dict(k_pr=k_pr, k_dc=k_dc, k_fidelity=k_fidelity, k_neighbours=k_neighbours, bootstrap=bootstrap,
                    ci_level=ci_level, seed=seed, cover_cap=cover_cap)

    log.debug("%s: radii of %d real samples", feature_space, n_real)
    k_rr = min(max(k_pr, k_dc, k_neighbours if want_arrays else 0), n_real - 1)
    real_r, (rr_d, rr_i) = knn_radii(x, sorted({k_pr, k_dc, k_rr}), neighbours=real_neighbours, **kw)
    stats_real = mean_and_cov(real_np)
    real_moments = (*stats_real, sqrt_psd(stats_real[1]))
    arrays = {"real": {"r_pr": real_r[k_pr], "r_dc": real_r[k_dc], "nn_real_dist": rr_d[:, :k_neighbours],
                       "nn_real_idx": rr_i[:, :k_neighbours]}, "variants": {}} if want_arrays else None
    del rr_d, rr_i
    centroids = rcls = real_centroid = None
    if rc is not None:
        rcls = _ClassIndex(rc, classes)
        centroids = np.stack([real_np[rcls.rows(i)].astype(np.float64).mean(axis=0)
                              for i in range(len(classes))]).astype(np.float32)
        real_centroid = classes[knn(x, centroids, 1, **kw)[1][:, 0]]
    real_extra = real_extra or {}
    reference = reference_entries(Evidence(   # the real set scored as if generated
        settings, n_real, n_generated=n_real, n_set=n_real, gen=real_np, cond=rc, centroid_class=real_centroid,
        gen_predicted=real_extra.get("predicted") if rc is not None else None,
        gen_score_logits=real_extra.get("score_logits")))

    in_class = {}   # real radii inside each class (NaN for classes too small) and per-class Gaussian statistics

    def real_in_class():
        if not in_class:
            log.debug("%s: radii inside %d real classes", feature_space, len(classes))
            d, _ = knn_grouped(real_np, rc, max(k_pr, k_dc), **kw)
            in_class["r_pr"], in_class["r_dc"] = _nan_where_inf(d[:, k_pr - 1]), _nan_where_inf(d[:, k_dc - 1])
            in_class["stats"] = {}
        return in_class

    def class_moments(i):
        st = in_class["stats"]
        if i not in st:
            xc = real_np[rcls.rows(i)]
            if per_class_fd and len(xc) >= 2:
                mu, cov = mean_and_cov(xc)
                st[i] = (mu, cov, sqrt_psd(cov))
            else:
                st[i] = None
        return st[i]

    variants = {}
    for name in sorted(generated):
        feats, cond, *more = generated[name]
        extra = more[0] if more else {}
        gen_np = np.ascontiguousarray(feats, dtype=np.float32)
        n_gen = len(gen_np)
        if gen_np.ndim != 2 or gen_np.shape[1] != dims or n_gen == 0:
            raise ValueError(f"{feature_space}/{name}: generated features of shape {gen_np.shape}, real have D={dims}")
        cond = np.full(n_gen, NO_CLASS, np.int64) if cond is None else np.asarray(cond, dtype=np.int64)
        if cond.shape != (n_gen,):
            raise ValueError(f"{feature_space}/{name}: conditioning classes of shape {cond.shape} for {n_gen} samples")
        log.debug("%s/%s: %d generated samples", feature_space, name, n_gen)
        y = to_tensor(gen_np, dev)
        arr: dict = {}
        gen_r_pr = None
        k_gg = min(max(k_pr, k_neighbours if want_arrays else 0), n_gen - 1)
        if n_gen >= 2 and (want_arrays or n_gen > k_pr):
            gen_r, (gg_d, gg_i) = knn_radii(y, sorted({k_gg} | ({k_pr} if n_gen > k_pr else set())), **kw)
            gen_r_pr = gen_r.get(k_pr)
            arr["nn_gen_dist"], arr["nn_gen_idx"] = gg_d[:, :k_neighbours], gg_i[:, :k_neighbours]
        k_gr = min(max(k_fidelity if rc is not None else 0, k_neighbours if want_arrays else 0), n_real)
        k_rg = min(max(k_neighbours, cover_cap), n_gen) if want_arrays else 0
        log.debug("%s/%s: generated x real pass", feature_space, name)
        flags = point_flags(x, y, real_r[k_pr], real_r[k_dc], gen_r_pr, k_gen_real=k_gr, k_real_gen=k_rg, **kw)
        arr["real_cover_count"] = flags["real_cover_count"]
        gr_i = None
        if flags["nn_real"] is not None:
            gr_d, gr_i = flags["nn_real"]
            arr["nn_real_dist"], arr["nn_real_idx"] = gr_d[:, :k_neighbours], gr_i[:, :k_neighbours]
        if want_arrays:
            rg_d, rg_i = flags["nn_gen_of_real"]
            arr["real_covered_by"] = covered_by(rg_d, rg_i, real_r[k_dc], cover_cap)
            arr["real_nn_gen_dist"], arr["real_nn_gen_idx"] = rg_d[:, :k_neighbours], rg_i[:, :k_neighbours]
            del rg_d, rg_i

        has_class = cond != NO_CLASS
        predicted = extra.get("predicted")
        evidence = dict(gen_in_real_manifold=flags["gen_in_real_manifold"],
                        gen_density_count=flags["gen_density_count"], real_covered=flags["real_covered"],
                        real_in_gen_manifold=flags.get("real_in_gen_manifold"), real_moments=real_moments,
                        gen_score_logits=extra.get("score_logits"), reference_moments=reference_moments)
        if rc is not None:
            arr["gen_centroid_class"] = centroid_class = classes[knn(y, centroids, 1, **kw)[1][:, 0]]
            evidence |= dict(cond=cond[has_class], nn_real_class=rc[gr_i[has_class, :k_fidelity]],
                             centroid_class=centroid_class[has_class],
                             gen_predicted=None if predicted is None else predicted[has_class])
        overall, points = score(Evidence(settings, n_real, n_gen, n_gen, gen_np, **evidence), OVERALL,
                                in_class=False, variant=name)
        for key, v in points.items():   # the per-point values the report draws, by the metric's array name
            if METRICS[key].array:
                arr[METRICS[key].array] = _scatter(v, has_class) if METRICS[key].counts == "conditioned" else v
        scopes = {}
        if rc is not None and per_class:
            scopes = _class_scopes(name, real_np, rcls, gen_np, cond, gr_i, centroid_class, flags["real_covered"],
                                   real_in_class, class_moments, settings, kw, predicted)
        variants[name] = {"overall": overall, "per_class": scopes}
        if want_arrays:
            arrays["variants"][name] = arr
    return {"feature_space": feature_space, "dims": int(dims), "n_real": int(n_real), "settings": settings,
            "reference": reference, "variants": variants, "arrays": arrays}


def _scatter(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-sample values of the rows with a conditioning class into a full-length array, NaN elsewhere."""
    out = np.full(len(rows), np.nan)
    out[rows] = values
    return out


def _class_scopes(variant, real_np, rcls, gen_np, cond, nn_real_idx, centroid_class, real_covered, real_in_class,
                  class_moments, settings, kw, predicted=None) -> dict:
    """Every class's scope: metrics of real class c against the samples conditioned on c, radii inside
    those subsets (the `*_in_class` definitions), computed for all classes at once by grouped searches;
    then one small loop per class slicing its evidence and scoring the declared metrics on it."""
    k_pr, k_dc, k_fid = settings["k_pr"], settings["k_dc"], settings["k_fidelity"]
    classes, n_gen = rcls.classes, len(gen_np)
    has = np.isin(cond, classes)          # samples conditioned on a class the real set has
    yi = np.flatnonzero(has)
    gcls = _ClassIndex(cond, classes)
    flags = None
    if len(yi):
        rin = real_in_class()
        yc = cond[yi]
        d, _ = knn_grouped(gen_np[yi], yc, k_pr, **kw)
        gen_r = np.full(n_gen, np.nan, np.float32)
        gen_r[yi] = _nan_where_inf(d[:, k_pr - 1])
        log.debug("in-class pass: %d samples of %d classes", len(yi), len(np.unique(yc)))
        f = point_flags(real_np, gen_np[yi], rin["r_pr"], rin["r_dc"], gen_r[yi], real_groups=rcls.labels,
                        gen_groups=yc, **kw)
        flags = {k: np.zeros(n_gen, v.dtype) if k.startswith("gen_") else v for k, v in f.items()
                 if not k.startswith("nn_")}
        for k in ("gen_in_real_manifold", "gen_density_count"):
            flags[k][yi] = f[k]
    n_min = max(k_pr, k_dc)
    scopes = {}
    for i, c in enumerate(classes):
        r_rows, g_rows = rcls.rows(i), gcls.rows(i)
        n_r, n_g = len(r_rows), len(g_rows)
        evidence = dict(real_covered_global=real_covered[r_rows])
        if n_g:
            evidence |= dict(real_moments=class_moments(i), cond=cond[g_rows], centroid_class=centroid_class[g_rows],
                             nn_real_class=rcls.labels[nn_real_idx[g_rows, :k_fid]],
                             gen_predicted=None if predicted is None else predicted[g_rows])
            if n_r > n_min:   # enough real points of the class for its radii
                evidence |= dict(gen_in_real_manifold=flags["gen_in_real_manifold"][g_rows],
                                 gen_density_count=flags["gen_density_count"][g_rows],
                                 real_covered=flags["real_covered"][r_rows],
                                 real_in_gen_manifold=flags["real_in_gen_manifold"][r_rows] if n_g > k_pr else None)
        e = Evidence(settings, n_r, n_g, n_gen, gen_np[g_rows], **evidence)
        scopes[str(int(c))] = score(e, IN_CLASS if n_g else CLASS_ONLY, in_class=True, variant=variant, cls=int(c))[0]
    return scopes


# ----------------------------------------------------------------------------------------------
# metrics.json

REQUIRED_PROVENANCE = ("model_checksum", "data", "config_hash")


def _round(v, digits: int = 6):
    """Floats to `digits` significant digits (stable diffs), non-finite to null; containers recursively."""
    if isinstance(v, dict):
        return {str(k): _round(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x, digits) for x in v]
    if isinstance(v, (np.integer, bool, np.bool_)):
        return v.item() if isinstance(v, np.generic) else v
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return None
        return float(f"{v:.{digits}g}") + 0.0   # + 0.0 turns -0.0 into 0.0
    return v


def metrics_document(results, provenance: Mapping) -> dict:
    """The metrics.json content: scalars of one or several `measure` results (arrays left out)."""
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {', '.join(missing)}")
    results = [results] if isinstance(results, Mapping) else list(results)
    spaces, used = {}, set()
    for r in results:
        if r["feature_space"] in spaces:
            raise ValueError(f"feature space {r['feature_space']!r} given twice")
        spaces[r["feature_space"]] = {k: r[k] for k in ("dims", "n_real", "settings", "reference",
                                                        "reference_per_class", "variants", "matched", "protocol") if k in r}
    def collect(node):
        if isinstance(node, dict):
            if "definition" in node:
                used.add(node["definition"])
            for v in node.values():
                collect(v)
    collect(spaces)
    texts = definitions()
    return _round({"schema": SCHEMA, "provenance": dict(provenance),
                   "definitions": {k: texts[k] for k in sorted(used)}, "feature_spaces": spaces})


def comparison_document(documents: Mapping[str, dict], encoder: str) -> dict:
    """metrics.json of several generators measured by one reference encoder: {"schema", "encoder",
    "generators": {name: that generator's own metrics document (`metrics_document`)}}."""
    return {"schema": SCHEMA, "encoder": encoder, "generators": dict(documents)}


def generator_documents(doc: Mapping) -> dict[str, dict]:
    """{generator name: its metrics document} of a metrics.json in either form: a comparison's generators,
    or {"": doc} for a one-generator file."""
    return dict(doc["generators"]) if "generators" in doc else {"": dict(doc)}


def write_metrics_json(path, results, provenance: Mapping) -> Path:
    """Write the metrics.json of `results` and `provenance` atomically (`save_metrics_document`)."""
    return save_metrics_document(path, metrics_document(results, provenance))


def save_metrics_document(path, document: Mapping) -> Path:
    """Write a metrics.json document atomically: sorted keys, floats rounded to 6 significant digits, one value a line."""
    path = Path(path)
    save_text(path, json.dumps(document, sort_keys=True, indent=1, allow_nan=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m dmd2report.metrics", description="The metric declarations.")
    p.add_argument("--markdown", action="store_true", required=True, help="print the guide's metrics table (docs/metrics.md)")
    p.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
