"""Synthetic report data and work directories for the tests and the benchmarks; never shipped.

`synthetic_report_data` builds a plausible `ReportData` from Gaussian clusters in a small 'activation'
space, with k-NN, coverage and the headline metrics computed from those features, so the report can be
rendered and checked without a model. `write_synthetic_work_dir` writes, without the model, the stores the
extract and generate stages write (class-structured features at a preset's layer widths) and records those
stages as done, so fit, measure and render run on it as on a real run at any size. `replace` copies a
`ReportData` with fields changed, re-validated. The package imports nothing from here: it lives outside
`dmd2report/` and the wheel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dmd2report.classes import ClassIndex
from dmd2report.config import load_config
from dmd2report.context import Context
from dmd2report.features import block_shapes
from dmd2report.files import sha256_bytes
from dmd2report.knn import knn, within_radius
from dmd2report.layers import resolve_layer
from dmd2report.metric_defs import METRICS
from dmd2report.metrics import fd_real_halves, frechet_distance
from dmd2report.models import build_preset
from dmd2report.pipeline import stage_keys
from dmd2report.report.data import (COMPARISON_COLUMNS, OVERALL_COLUMNS, REFERENCE_COLUMNS, STEP_METRIC_COLUMNS, TRAJECTORY_COLUMNS, Atlas,
                                    AtlasAnchor, DataSource, FrechetDistance, Metrics, ModelInfo, Neighbours,
                                    ReportData, RunInfo, Trajectories, config_hash, package_versions)
from dmd2report.sampling import condition_vectors, sample_plan
from dmd2report.store import StoreWriter, metadata_frame, sparse_labels
from dmd2report.workdir import WorkDir

VARIANTS = ("uniform", "zero", "blend")     # the generated sets besides the class-conditioned one
DEFAULT_DIMS = {"encoder_bottleneck": 768, "midblock": 768}


# ---------------------------------------------------------------------------------------------
# Synthetic report data.

def _nearest(queries: np.ndarray, pool: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`knn.knn` on the CPU as (indices, distances), padded with -1/NaN to k columns when the pool is small.
    exclude_self: queries are `pool` itself, and a row is not its own neighbour."""
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


def with_comparison(data: ReportData, other: str = "step-9") -> ReportData:
    """`data` as a two-generator report (a [[generators]] run): every second class-conditioned sample becomes the
    other generator's (variant "<other>: class"), paired by class with the reference's as the same seeds; real
    points get a coverage-difference code (A: their `covered`, B: a seeded draw); the comparison's tables come from
    the overall and per-class metrics with a seeded change."""
    from dmd2report.metric_defs import METRICS
    from dmd2report.report.data import Comparison, compared_class_set

    rng = np.random.default_rng(7)
    p = data.points.copy()
    cls_rows = np.flatnonzero((p["variant"] == "class").to_numpy())
    theirs = cls_rows[1::2]
    p.loc[theirs, "variant"] = compared_class_set(other)
    gen = (p["set"] == "generated").to_numpy()
    p["generator"] = np.where(gen, "final", "")
    p.loc[theirs, "generator"] = other
    real = ~gen
    code = np.full(len(p), -1, np.int64)
    code[real] = p["covered"].to_numpy(bool)[real].astype(np.int64) + 2 * (rng.random(int(real.sum())) < 0.6)
    p["cover_diff"] = code
    seeds = []
    for c in np.unique(p["class_id"].to_numpy()[cls_rows]):
        a = cls_rows[0::2][p["class_id"].to_numpy()[cls_rows[0::2]] == c]
        b = theirs[p["class_id"].to_numpy()[theirs] == c]
        for s, (i, j) in enumerate(zip(a, b)):
            seeds += [(s, int(c), "final", int(i)), (s, int(c), other, int(j))]
    o = data.metrics.overall
    rows = []
    for r in o.itertuples():
        if r.key not in METRICS or METRICS[r.key].scope != "overall":
            continue
        shift = float(rng.normal(0, 0.03))
        for g, v, d in (("final", r.value, 0.0), (other, r.value + shift, shift)):
            rows.append(("synthetic", g, r.key, r.label, v, v - 0.02, v + 0.02, d, g != "final" and abs(d) > 0.04))
    pc = data.metrics.per_class
    deltas = pd.DataFrame([(other, "coverage", int(c), v, v + d, d) for c, v, d in
                           zip(pc["class_id"], pc["coverage"], rng.normal(0, 0.05, len(pc)))],
                          columns=["generator", "key", "class_id", "reference", "value", "delta"])
    deltas = deltas.iloc[np.argsort(-deltas["delta"].abs().to_numpy(), kind="stable")].reset_index(drop=True)
    comparison = Comparison(generators=["final", other], a="final", b=other,
                            overall=pd.DataFrame(rows, columns=COMPARISON_COLUMNS),
                            per_class=deltas, seeds=pd.DataFrame(seeds, columns=["seed_index", "class_id", "generator", "point"]),
                            feature_space="synthetic")
    return replace(data, points=p, comparison=comparison)


# ---------------------------------------------------------------------------------------------
# Synthetic work directory.

class ClassStructuredFeatures:
    """Class-structured features of one layer: class means on a curved low-dimensional manifold,
    within-class variation along a few directions, isotropic noise."""

    def __init__(self, dim: int, classes: int, seed: int, latent: int = 8, within: int = 12):
        rng = np.random.default_rng([seed, dim, classes, 17])
        u = rng.standard_normal((classes, latent)).astype(np.float32)
        a = rng.standard_normal((latent, dim)).astype(np.float32) / math.sqrt(latent)
        b = rng.standard_normal((latent, dim)).astype(np.float32) / math.sqrt(latent)
        self.means = (u @ a + 0.5 * np.tanh(u @ b)) * 2.0          # (classes, dim)
        self.within = rng.standard_normal((within, dim)).astype(np.float32) / math.sqrt(within)
        self.shift = 0.3 * rng.standard_normal((classes, dim)).astype(np.float32) / math.sqrt(dim) * 4
        self.dim = dim

    def sample(self, rng, means: np.ndarray, spread: float, noise: float) -> np.ndarray:
        n = len(means)
        z = rng.standard_normal((n, self.within.shape[0]), dtype=np.float32)
        x = means + spread * (z @ self.within)
        x += noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        return x.astype(np.float16)


def _class_colours(classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 99]).integers(30, 226, (classes, 3), dtype=np.uint8)


def _thumbs(colours: np.ndarray, class_ids: np.ndarray, size: int) -> np.ndarray:
    c = colours[np.where(class_ids >= 0, class_ids, 0)]
    c[class_ids < 0] = 128
    return np.ascontiguousarray(np.broadcast_to(c[:, None, None, :], (len(c), size, size, 3)))


def write_config(path: Path, root: Path, *, preset: str, layers, n_gen: int, n_variant: int, seed: int,
                 chunk_size: int, full_per_class: int, device: str, extra: str = "", metrics_extra: str = "",
                 checkpoint: Path | None = None) -> Path:
    """The TOML config of a synthetic work directory. Without a checkpoint the trajectory is off (it needs
    the model); with one it follows its paths but takes no real references (there are no real images)."""
    layer_list = ", ".join(f'"{l}"' for l in layers)
    model_line = f'checkpoint = "{checkpoint}"' if checkpoint else ""
    trajectory = "enabled = true\nreal_references = 0" if checkpoint else "enabled = false"
    text = f"""# written by tests/synthetic.py: a synthetic work directory (no model)
[run]
name = "synthetic work directory"
workdir = "{root / 'work'}"
site = "{root / 'site'}"
seed = {seed}
device = "{device}"

[model]
preset = "{preset}"
{model_line}

[data]
source = "imagenet64-npz"
path = "{root / 'no-data'}"
max_samples = 0

[features]
layers = [{layer_list}]
chunk_size = {chunk_size}
full_per_class = {full_per_class}

[generate]
samples = {n_gen}
variant_samples = {n_variant}
variants = ["class", "uniform", "zero", "blend"]

[metrics]
layer = "{layers[-1]}"
{metrics_extra}

[trajectory]
{trajectory}
{extra}"""
    path.write_text(text, encoding="utf-8")
    return path


def write_synthetic_work_dir(root, n_real: int, n_gen_class: int, n_variant: int, classes: int = 1000,
                             dims: dict | None = None, seed: int = 0, *, preset: str = "dmd2-imagenet64",
                             chunk_size: int = 4096, full_per_class: int = 1, thumb_size: int = 32,
                             device: str = "auto", extra_config: str = "", metrics_config: str = "",
                             checkpoint: Path | None = None) -> Path:
    """Write `<root>/work` (stores + stages.json) and `<root>/config.toml`; returns the config path.

    The stores are those the extract and generate stages write (StoreWriter, metadata_frame,
    sparse_labels, the same manifest keys), filled with synthetic data chunk by chunk, vectorised.
    extract and generate are recorded as done under the keys `pipeline.stage_keys` gives the config,
    so only fit and the stages after it run. `extra_config` is TOML appended to the file (sections other
    than those written), `metrics_config` lines added to its [metrics] section."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dims = dict(dims or DEFAULT_DIMS)
    layers = list(dims)
    net = build_preset(preset, device="meta")
    if classes > net.label_dim:
        raise ValueError(f"{classes} classes: preset {preset} takes {net.label_dim}")
    cfg_path = write_config(root / "config.toml", root, preset=preset, layers=layers, n_gen=n_gen_class,
                            n_variant=n_variant, seed=seed, chunk_size=chunk_size, full_per_class=full_per_class,
                            device=device, extra=extra_config, metrics_extra=metrics_config, checkpoint=checkpoint)
    config = load_config(cfg_path)
    mask_layer = config.atlas.mask_layer
    full_shape = tuple(block_shapes(net)[resolve_layer(net, mask_layer)])
    wd = WorkDir(config.run.workdir)
    ctx = Context.create(config, command="tests/synthetic.py")
    checksum = ctx.generator.checksum
    compute = ctx.generator.compute_identity()
    index = ClassIndex.imagenet()
    K = net.label_dim
    structures = {l: ClassStructuredFeatures(d, classes, seed + i) for i, (l, d) in enumerate(dims.items())}
    colours = _class_colours(classes, seed)
    common = {"model_checksum": checksum, "versions": {"synthetic": "tests/synthetic.py"}, "layers": layers,
              "feature_dims": dims, "reduction": "mean", "dtype": "float16", "chunk_size": chunk_size,
              "num_classes": K, "resolution": net.img_resolution, "thumb_size": thumb_size}

    def write_store(name: str, kind: str, key: dict, info: dict, n: int, chunk) -> None:
        writer = StoreWriter(wd.store_path(name), key, kind)
        writer.prepare(overwrite=True, info=info)
        n_chunks = -(-n // chunk_size)

        def one(i):
            sl = slice(i * chunk_size, min((i + 1) * chunk_size, n))
            writer.write_chunk(i, **chunk(i, sl), first_row=sl.start)

        # Chunks are independent files drawn from their own seeds: written by a thread each (numpy's
        # generators, matrix products and file writes release the GIL), so 1.5M rows take minutes, not ten.
        with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 16)) as pool:
            list(pool.map(one, range(n_chunks)))
        (writer.path / "class_index.json").write_text(json.dumps(index.to_mapping()), encoding="utf-8")
        writer.finalize(n_chunks, info)

    # Real: classes in turn (every class the same count), the first full_per_class of each keep full activations.
    real_classes = (np.arange(n_real) % classes).astype(np.int64)

    def real_chunk(i, sl):
        rng = np.random.default_rng([seed, 0, i])
        c = real_classes[sl]
        feats = {l: s.sample(rng, s.means[c], 1.0, 0.35) for l, s in structures.items()}
        has_full = np.arange(sl.start, sl.stop) < classes * full_per_class
        onehot = np.zeros((len(c), K), np.float32)
        onehot[np.arange(len(c)), c] = 1
        li, lw = sparse_labels(onehot)
        meta = metadata_frame(np.arange(sl.start, sl.stop), c, index, variant="real",
                              source=[f"synthetic #{j}" for j in range(sl.start, sl.stop)], seed=seed,
                              seed_index=np.arange(sl.start, sl.stop), label_index=li, label_weight=lw,
                              has_full=has_full)
        full = {mask_layer: rng.standard_normal((int(has_full.sum()), *full_shape), dtype=np.float32)}
        return {"features": feats, "meta": meta, "thumbs": _thumbs(colours, c, thumb_size), "full": full}

    real_key = {"stage": "real", "synthetic": True, "n": n_real, "classes": classes, "seed": seed, "dims": dims,
                "model_checksum": checksum, "num_classes": K, "thumb_size": thumb_size, "full_layer": mask_layer,
                "full_per_class": full_per_class, "compute": compute}
    write_store("real", "real", real_key, common | {"full_layer": mask_layer, "planned": n_real}, n_real, real_chunk)

    gen_classes, seeds = sample_plan(real_classes, n_gen_class)

    def gen_chunk(variant: str, set_index: int):
        def chunk(i, sl):
            rng = np.random.default_rng([seed, set_index, i])
            c = gen_classes[sl]
            if variant == "class":
                vectors = condition_vectors("class", K, classes=c).numpy()
                src = {l: s.means[c] + s.shift[c] for l, s in structures.items()}
                spread, noise = 0.9, 0.35
            elif variant == "blend":  # the shown class and another, weighted as a neighbour blend would be
                other = rng.integers(0, classes, len(c))
                vectors = np.zeros((len(c), K), np.float32)
                vectors[np.arange(len(c)), c] += 0.7
                vectors[np.arange(len(c)), other] += 0.3
                src = {l: 0.7 * s.means[c] + 0.3 * s.means[other] for l, s in structures.items()}
                spread, noise = 1.0, 0.4
            else:  # uniform / zero: a class the label does not choose, drawn wider (mode mixing)
                drawn = rng.integers(0, classes, len(c))
                vectors = condition_vectors(variant, K, count=len(c)).numpy()
                src = {l: (0.8 if variant == "uniform" else 0.5) * s.means[drawn] for l, s in structures.items()}
                spread, noise = 1.3, 0.5
            feats = {l: s.sample(rng, src[l], spread, noise) for l, s in structures.items()}
            li, lw = sparse_labels(vectors)
            meta = metadata_frame(np.arange(sl.start, sl.stop), c, index, variant=variant,
                                  source=[f"seed {seed} #{s}" for s in seeds[sl]], seed=seed, seed_index=seeds[sl],
                                  label_index=li, label_weight=lw)
            return {"features": feats, "meta": meta, "thumbs": _thumbs(colours, c, thumb_size)}
        return chunk

    for set_index, (variant, n) in enumerate([("class", n_gen_class)] + [(v, n_variant) for v in VARIANTS], 1):
        key = {"stage": "generated", "synthetic": True, "variant": variant, "n": n, "classes": classes, "seed": seed,
               "dims": dims, "model_checksum": checksum, "num_classes": K, "thumb_size": thumb_size,
               "compute": compute}
        info = common | {"variant": variant, "seed": seed, "planned": n, "full_layer": None,
                         "generated_features": "reencode"}
        write_store(f"gen-{variant}", "generated", key, info, n, gen_chunk(variant, set_index))

    keys = stage_keys(ctx)
    for stage in ("extract", "generate"):
        wd.record(stage, keys[stage], 0.0)
    return cfg_path
