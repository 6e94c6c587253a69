"""The trajectory stage: where each step of a few-step DMD2 sample lies on the real map.

Paths follow `sampling.sample_paths` (schedule `trajectory.sigmas`, default 80, 14, 1, 0.05). A step's
features are made as the generated sets' are (`features.generated`): by default ("reencode") each step's
output image D_s is quantised as stored and fed back as real images are (`sampling.reencode_steps`), so a
step's point and metrics compare its image with the real images, like with like (the last step's metrics
are those of a few-step generated set); with "generation" the layers are captured during the step's own
call, what the generator sees at that step. Reduced as the stores reduce them (`features.Reducer`).

Real references: real images x noised to each sigma (x + sigma eps, eps fixed per image) and passed
through the model with their class, G(x + sigma eps, sigma, one_hot(label)) (`sampling.noised_real`);
their features are made the same way as the steps' (the output image re-encoded, or the call's own).

The stage writes, under `<workdir>/trajectory/`:

    paths/          a store (store.py layout): one row per sample and step (sample-major), with
                    `path`, `step` and `sigma` columns; thumbnails are each step's output D_s
    real/           a store of the real references, one row per image and step, thumbnails D_s
    points.parquet  both projected onto the real map with the headline layer's fitted embedding
    metrics.json    per step: precision, recall, density, coverage and FD of the step's samples
                    against the real set, and against the real references at the same sigma
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..chunks import Progress, versions
from ..config import check_schedule
from ..context import Context, Stage, compute_identity
from ..errors import UserError
from ..features import Reducer, feature_dims, parse_reduce
from ..files import array_digest, bytes_digest, save_json, save_parquet
from ..layers import resolve_layer
from ..metric_defs import STEP_REFERENCES
from ..metrics import measure
from ..runtime import auto_batch_size
from ..sampling import (REAL_NOISE_OFFSET, condition_vectors, noised_real, reencode_labels, reencode_steps, sample_paths,
                        sample_plan, thumbnails)
from ..sources import open_source
from ..store import Store, StoreWriter, load_pca, metadata_frame, sparse_labels
from ..workdir import generated_sets

log = logging.getLogger(__name__)

METRIC_KEYS = ("precision", "recall", "density", "coverage", "fd")


def _rows_of_steps(a: np.ndarray) -> np.ndarray:
    """(S, n, ...) -> (n * S, ...): sample-major rows (sample i's steps are rows i*S .. i*S+S-1)."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]))


def _write_steps_store(path: Path, key: dict, info: dict, overwrite: bool, n: int, per_chunk: int, compute,
                       meta_of, dims: dict, thumb_size: int, dtype) -> None:
    """A store of n items x S steps, `per_chunk` items per chunk; compute(sl) -> (images, feats) for items sl."""
    class_index = info.pop("class_index")
    writer = StoreWriter(path, key, "trajectory")
    writer.prepare(overwrite, info)
    n_chunks = -(-n // per_chunk) if n else 0
    todo = [i for i in range(n_chunks) if not writer.done(i)]
    bar = Progress(sum(min(per_chunk, n - i * per_chunk) for i in todo), f"trajectory {path.name}", unit="paths")
    try:
        for i in todo:
            sl = slice(i * per_chunk, min((i + 1) * per_chunk, n))
            images, feats = compute(sl)
            S = images.shape[0]
            thumbs = thumbnails(images.reshape(-1, *images.shape[2:]), thumb_size).numpy()
            thumbs = _rows_of_steps(thumbs.reshape(S, -1, *thumbs.shape[1:]))
            finite = _rows_of_steps(torch.isfinite(images).flatten(2).all(2).cpu().numpy())
            writer.write_chunk(i, {l: _rows_of_steps(f).astype(dtype) for l, f in feats.items()}, meta_of(sl), thumbs,
                               first_row=i * per_chunk * S, outputs_finite=finite)
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    save_json(path / "class_index.json", class_index)
    writer.finalize(n_chunks, info)


def _reference_rows(real_classes: np.ndarray, n: int) -> np.ndarray:
    """Real rows spread over the classes: each class's first sample, then each one's second, ..."""
    rank = pd.Series(real_classes).groupby(real_classes).cumcount().to_numpy()
    order = np.lexsort((real_classes, rank))
    return np.sort(order[:n])


def run(ctx: Context, overwrite: bool = False) -> None:
    """The trajectory stage: sample the paths and the real references, project, measure."""
    cfg, t, wd = ctx.config, ctx.config.trajectory, ctx.workdir
    out = wd.trajectory
    if not t.enabled:
        shutil.rmtree(out, ignore_errors=True)  # no stale paths in the report
        ctx.log.info("[trajectory] disabled (trajectory.enabled = false)")
        return
    sigmas = check_schedule(t.sigmas)
    S = len(sigmas)
    fit_id = wd.fit_id(wd.fit_manifest())  # first: a fit of other stores is refused before any work
    real = wd.store("real", reader="trajectory")
    real_meta = real.metadata()
    real_classes = real_meta["class_id"].to_numpy().astype(np.int64)
    net, checksum = ctx.generator.net, ctx.generator.checksum
    device = next(net.parameters()).device
    f = cfg.features
    layers = list(real.layers)
    for name in layers:
        resolve_layer(net, name)
    mode, _ = parse_reduce(f.reduce)
    pca, pca_digest = None, None
    if mode == "pca":
        pca_path = real.path / "pca.safetensors"
        pca_digest = bytes_digest(pca_path.read_bytes())
        pca = load_pca(pca_path)
    reducer = Reducer(f.reduce, f.dtype, pca, device)
    dims = feature_dims(net, layers, f.reduce)
    K = net.label_dim
    index = ctx.classes
    ts = min(cfg.report.thumb_size, net.img_resolution)
    per_chunk = max(1, f.chunk_size // S)
    common = {"model_checksum": checksum, "sigmas": sigmas, "seed": cfg.run.seed, "resolution": net.img_resolution,
              "num_classes": K, "features": {"layers": layers, "reduce": f.reduce, "dtype": f.dtype, "pca": pca_digest,
                                             "generated": f.generated},
              "thumb_size": cfg.report.thumb_size, "per_chunk": per_chunk, "compute": compute_identity(device, net.use_fp16)}
    info = {"model_checksum": checksum, "versions": versions(), "layers": layers, "feature_dims": dims,
            "reduction": f.reduce, "dtype": f.dtype, "sigmas": sigmas, "steps": S, "seed": cfg.run.seed,
            "num_classes": K, "resolution": net.img_resolution, "thumb_size": cfg.report.thumb_size,
            "full_layer": None, "class_index": index.to_mapping(), "generated_features": f.generated}

    # Paths.
    class_ids, seeds = sample_plan(real_classes, t.samples)
    if t.conditioning == "class":
        vectors = condition_vectors("class", K, classes=class_ids)
    elif t.conditioning == "blend":
        # A path's blend is the one the generate stage made for the same seed (its neighbours' classes).
        if "blend" not in cfg.generate.variants:
            raise UserError("trajectory.conditioning = 'blend' needs 'blend' in generate.variants")
        blend = wd.store(dict(generated_sets(cfg, ctx.generator.name))["blend"])   # the reference generator's
        if len(blend) < len(seeds):
            raise UserError(f"trajectory.samples ({len(seeds)}) exceeds the blend set's {len(blend)} samples "
                            f"(generate.variant_samples): a path's blend comes from that set")
        vectors = torch.from_numpy(blend.label_vectors(K)[: len(seeds)])
    else:
        vectors = condition_vectors(t.conditioning, K, count=len(seeds))
        class_ids = np.full(len(seeds), -1, np.int64)
    n = len(seeds)

    def steps_extra(sl):
        """The columns of a steps store that follow sample_id: each item's path number, step and sigma."""
        n_items = sl.stop - sl.start
        return {"path": np.repeat(np.arange(sl.start, sl.stop), S), "step": np.tile(np.arange(S), n_items),
                "sigma": np.tile(np.asarray(sigmas, np.float64), n_items)}

    def rep(a):
        return np.repeat(np.asarray(a), S)

    def path_meta(sl):
        ids, idx = class_ids[sl], seeds[sl]
        li, lw = sparse_labels(vectors[sl].numpy())
        return metadata_frame(np.arange(sl.start * S, sl.stop * S), rep(ids), index, variant=t.conditioning,
                              source=rep([f"seed {cfg.run.seed} #{s}" for s in idx]), seed=cfg.run.seed,
                              seed_index=rep(idx), label_index=[a for a in li for _ in range(S)],
                              label_weight=[w for w in lw for _ in range(S)], extra=steps_extra(sl))

    reencode = f.generated == "reencode"
    batch = auto_batch_size(device, f.batch_size)

    def path_compute(sl):
        images, feats = sample_paths(net, cfg.run.seed, seeds[sl], vectors[sl], sigmas,
                                     layers=() if reencode else layers, reducer=reducer, batch_size=batch)
        if reencode:
            feats = reencode_steps(net, images, reencode_labels(class_ids[sl], vectors[sl], K), layers, reducer, batch)
        return images, feats

    ctx.log.info("[trajectory] %d samples x %d steps (sigmas %s)", n, S, ", ".join(f"{s:g}" for s in sigmas))
    _write_steps_store(out / "paths", {"stage": "trajectory", **common, "conditioning": t.conditioning,
                                       "class_ids": array_digest(class_ids), "seed_indices": array_digest(seeds)},
                       info | {"variant": t.conditioning, "planned": n * S, "chunk_size": per_chunk * S},
                       overwrite, n, per_chunk, path_compute, path_meta, dims, ts, np.dtype(f.dtype))

    # Real references: real images noised to each sigma.
    ref_rows = _reference_rows(real_classes, min(t.real_references, len(real_meta)))
    ref_ids = real_meta["sample_id"].to_numpy().astype(np.int64)[ref_rows]
    ref_images = np.zeros((0, 3, net.img_resolution, net.img_resolution), np.uint8)
    if len(ref_rows):
        with open_source(cfg, net.img_resolution, ctx.generator.class_index(), wd.demo_data) as source:
            positions = pd.Index(source.samples["sample_id"].to_numpy().astype(np.int64)).get_indexer(ref_ids)
            if (positions < 0).any():
                raise UserError(f"data: real sample {ref_ids[positions < 0][0]} is no longer in {cfg.data.path or 'the data'}; "
                                "rerun the extract stage")
            loaded = []
            for pos in positions.tolist():   # one read per reference image (trajectory.real_references of them)
                got = source.load(pos, pos + 1)
                if not got.kept.all():
                    raise UserError(f"data: real sample {ref_ids[positions == pos][0]} can no longer be read; "
                                    "rerun the extract stage")
                loaded.append(got.images)
            ref_images = np.concatenate(loaded)

    def ref_meta(sl):
        rows = real_meta.iloc[ref_rows[sl]]
        li, lw = sparse_labels(F.one_hot(torch.tensor(rows["class_id"].to_numpy(np.int64)), K).numpy().astype(np.float32))
        return metadata_frame(np.arange(sl.start * S, sl.stop * S), rep(rows["class_id"]), index, variant="real",
                              source=rep(rows["source"].astype(str)), seed=cfg.run.seed,
                              seed_index=rep(REAL_NOISE_OFFSET + rows["sample_id"].to_numpy(np.int64)),
                              label_index=[a for a in li for _ in range(S)],
                              label_weight=[w for w in lw for _ in range(S)],
                              extra=steps_extra(sl) | {"real_row": rep(ref_rows[sl])})

    def ref_compute(sl):
        images, feats = noised_real(net, ref_images[sl], real_classes[ref_rows[sl]], ref_ids[sl], cfg.run.seed, sigmas,
                                    layers=() if reencode else layers, reducer=reducer, batch_size=batch)
        if reencode:
            labels = F.one_hot(torch.as_tensor(real_classes[ref_rows[sl]]), K).float()
            feats = reencode_steps(net, images, labels, layers, reducer, batch)
        return images, feats

    ctx.log.info("[trajectory] %d real references x %d sigmas", len(ref_rows), S)
    _write_steps_store(out / "real", {"stage": "trajectory-real", **common, "real_store": real.manifest["config_hash"],
                                      "reference_ids": array_digest(ref_ids)},
                       info | {"variant": "real", "planned": len(ref_rows) * S, "chunk_size": per_chunk * S},
                       overwrite, len(ref_rows), per_chunk, ref_compute, ref_meta, dims, ts, np.dtype(f.dtype))

    # Projection onto the map and metrics per step, in the headline layer.
    headline = cfg.metrics.layer
    emb = wd.fitted(headline)
    paths, refs = Store(out / "paths", "trajectory"), Store(out / "real", "trajectory")
    frames, reduced = [], {}
    for kind, store in (("path", paths), ("real", refs)):
        meta, x = _store_rows(store, headline)
        reduced[kind] = (emb.reduce(x), meta)
        xy = emb.transform(x, progress=False) if len(x) else np.zeros((0, 2), np.float32)
        frames.append(pd.DataFrame({"kind": kind, "row": np.arange(len(meta)), "path": meta["path"].to_numpy(np.int64),
                                    "step": meta["step"].to_numpy(np.int64), "sigma": meta["sigma"].to_numpy(np.float64),
                                    "class_id": meta["class_id"].to_numpy(np.int64),
                                    "source": meta["source"].astype(str).to_numpy(),
                                    "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32)}))
    points = pd.concat(frames, ignore_index=True)
    real_red = emb.reduce_chunks(real.iter_features(headline), total=len(real), progress=False)
    doc = measure_steps(real_red, real_classes, reduced["path"], reduced["real"], sigmas,
                        cfg, feature_space=f"{headline}:{f.reduce}+standardise+pca{emb.n_components}",
                        real_neighbours=wd.fit_real_neighbours(headline, real_red))
    doc.update({"layer": headline, "conditioning": t.conditioning, "samples": n, "real_references": int(len(ref_rows)),
                "paths_per_class": t.paths_per_class, "fit": fit_id})
    save_parquet(out / "points.parquet", points)
    save_json(out / "metrics.json", doc)


def _store_rows(store, layer: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(metadata, features) of a store, also when it holds no chunks at all."""
    if store.manifest["chunks"] == 0:
        cols = ["path", "step", "sigma", "class_id", "source"]
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in cols}), \
            np.zeros((0, store.manifest["feature_dims"][layer]), np.float32)
    return store.metadata(), store.features(layer)


def measure_steps(real_red: np.ndarray, real_classes: np.ndarray, paths: tuple[np.ndarray, pd.DataFrame],
                  refs: tuple[np.ndarray, pd.DataFrame], sigmas: Sequence[float], config, feature_space: str,
                  real_neighbours: tuple | None = None) -> dict:
    """Per step: the step's samples against the real set, and against the real references at that sigma.

    paths/refs: (reduced features, store metadata with `step`). A comparison whose sets are too small
    for the metrics' k is left out (value None). `real_neighbours`: the real set's own k-NN when the fit
    stage has it (`WorkDir.fit_real_neighbours`; at ImageNet scale the largest search here)."""
    m = config.metrics
    kw = dict(k_pr=m.k_pr, k_dc=m.k_dc, k_fidelity=m.k_fidelity, k_neighbours=1, bootstrap=m.bootstrap,
              seed=config.run.seed, per_class=False, per_class_fd=False)
    g_feat, g_meta = paths
    r_feat, r_meta = refs
    g_step, r_step = g_meta["step"].to_numpy(), r_meta["step"].to_numpy()
    need = max(m.k_pr, m.k_dc) + 1

    def usable(real_x, gen_x):
        return len(real_x) >= need and len(gen_x) >= 2

    def entry(result, tag, n_real, n_gen):
        out = {"n_real": n_real, "n_generated": n_gen}
        if result is None:
            return out | {k: None for k in METRIC_KEYS}
        return out | _step_values(result["variants"][tag]["overall"])

    # Against the real set: every step in one `measure` call, so the real set's radii are found once.
    per_step = {f"step{s}": g_feat[g_step == s] for s in range(len(sigmas))}
    kept = {tag: (g, None) for tag, g in per_step.items() if usable(real_red, g)}
    vs_real = measure(real_red, real_classes, kept, feature_space=feature_space, arrays=False,
                      real_neighbours=real_neighbours, **kw) if kept else None
    steps = []
    for s, sigma in enumerate(sigmas):
        tag, g = f"step{s}", per_step[f"step{s}"]
        r_s = r_feat[r_step == s]
        noised = measure(r_s, None, {tag: (g, None)}, feature_space=f"{feature_space} {tag}-noised", arrays=False,
                         **kw) if usable(r_s, g) else None
        steps.append({"step": s, "sigma": float(sigma),
                      "vs_real": entry(vs_real if tag in kept else None, tag, len(real_red), len(g)),
                      "vs_noised_real": entry(noised, tag, len(r_s), len(g))})
    mode = config.features.generated
    floor = real_floor(real_red, real_classes, g_meta["class_id"].to_numpy(np.int64)[g_step == 0], config.run.seed,
                       kw, feature_space, real_neighbours)
    return {"feature_space": feature_space, "sigmas": [float(s) for s in sigmas], "steps": steps, "features": mode,
            "floor": floor,
            "definitions": {"vs_real": STEP_REFERENCES["real"][mode],
                            "vs_noised_real": STEP_REFERENCES["noised real"][mode],
                            "floor": "as many real images as there are paths, of the paths' classes (drawn at random, "
                                     "seeded by run.seed), held out of the real set and measured against the rest as "
                                     "a step is: what real data itself scores at this sample count"}}


def floor_rows(real_classes: np.ndarray, path_classes: np.ndarray, seed: int) -> np.ndarray:
    """Real rows, one per path, of the path's class where it has one (else any class), drawn at random without
    replacement (seeded): a real sample the size and class mix of the paths'."""
    rng = np.random.default_rng([seed, 0x666C6F6F72])   # "floor"
    n = len(real_classes)
    order = np.lexsort((rng.random(n), real_classes))          # by class, randomly within a class
    srt = real_classes[order]
    rank = np.arange(n) - np.searchsorted(srt, srt, "left")    # each row's place in its class's random order
    classes, need = np.unique(path_classes[path_classes >= 0], return_counts=True)
    want = np.zeros(n, np.int64)
    at = np.searchsorted(classes, srt).clip(0, max(len(classes) - 1, 0))
    if len(classes):
        want = np.where(classes[at] == srt, need[at], 0)
    held = order[rank < want]
    rest = np.setdiff1d(rng.permutation(n), held, assume_unique=True)[: int((path_classes < 0).sum())]
    return np.sort(np.concatenate([held, rest]).astype(np.int64))


def _neighbours_without(neighbours: tuple, held: np.ndarray, n: int) -> tuple | None:
    """The real rows' exact k-NN (distances, indices) with the `held` rows taken out of the set: their own rows
    dropped, and every list closed up over them and renumbered (the k nearest of the rest are the first k that are
    not held). None where that leaves no column (the caller then searches)."""
    kept = np.ones(n, bool)
    kept[held] = False
    d, i = (np.asarray(a)[kept] for a in neighbours)
    gone = ~kept[i]
    order = np.argsort(gone, axis=1, kind="stable")
    width = int((~gone).sum(axis=1).min()) if len(i) else 0
    if width == 0:
        return None
    d, i = (np.take_along_axis(a, order, axis=1)[:, :width] for a in (d, i))
    return np.ascontiguousarray(d), (np.cumsum(kept) - 1)[i]


def real_floor(real_red: np.ndarray, real_classes: np.ndarray, path_classes: np.ndarray, seed: int, kw: dict,
               feature_space: str, real_neighbours: tuple | None) -> dict:
    """The per-step metrics' sample-size floor: as many real images as paths (`floor_rows`), held out and measured
    against the rest of the real set as a step's samples are (FD and coverage of 48 real images are far from 0 and
    1: a step is read against this). The fit stage's real k-NN is reused with the held rows taken out."""
    n = len(path_classes)
    held = floor_rows(real_classes, path_classes, seed)
    need = max(kw["k_pr"], kw["k_dc"]) + 1
    out = {"n_real": int(len(real_red) - len(held)), "n_generated": int(len(held))}
    if len(held) < 2 or len(real_red) - len(held) < need or n == 0:
        return out | {k: None for k in METRIC_KEYS}
    rest = np.ones(len(real_red), bool)
    rest[held] = False
    nbrs = None if real_neighbours is None else _neighbours_without(real_neighbours, held, len(real_red))
    res = measure(real_red[rest], real_classes[rest], {"floor": (real_red[held], None)}, arrays=False,
                  feature_space=f"{feature_space} floor", real_neighbours=nbrs, **kw)
    return out | _step_values(res["variants"]["floor"]["overall"])


def _step_values(overall: dict) -> dict:
    """A per-step row's metrics from a `measure` result's overall entries: each value, and its interval where one was
    drawn."""
    out = {}
    for k in METRIC_KEYS:
        e = overall.get(k) or {}
        out[k] = e.get("value")
        if "ci_low" in e:
            out[k + "_ci"] = [e["ci_low"], e["ci_high"]]
    return out


STAGE = Stage(
    "trajectory", run, "Few-step sampling paths and noised-real references, projected and measured per step.",
    writes="trajectory/", after=("fit",),
    reads=("trajectory", "report.thumb_size", "metrics.layer", "metrics.k_pr", "metrics.k_dc", "metrics.k_fidelity",
           "metrics.bootstrap"),
    content=lambda ctx: ctx.real_images if ctx.config.trajectory.enabled else {},
    outputs=lambda ctx: [ctx.workdir.trajectory], uses_model=True)
