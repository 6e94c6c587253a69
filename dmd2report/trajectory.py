"""Few-step sampling paths: where each step of a multi-step DMD2 sample lies on the real map.

A schedule sigma_0 > sigma_1 > ... > sigma_{S-1} > 0 (default 80, 14, 1, 0.05) samples as DMD2's
few-step generators do:

    x_0 = sigma_0 z                      z = sample_noise(seed, i)            (the one-step sample's noise)
    D_s = G(x_s, sigma_s, c)             step s denoises at sigma_s
    x_{s+1} = D_s + sigma_{s+1} eps_s    eps_s = sample_noise(seed, (s + 1) * 2^32 + i)

so one step with sigma_0 = 80 is exactly the one-step sample G(80 z, 80, c), and every step's noise
depends only on (seed, sample, step): the paths do not depend on the batch size. The chosen layers
are captured during each step's call and reduced as the stores reduce them (`extract.Reducer`);
a step's point is what the generator sees at that step, as a generated set's point is what it sees
at sigma = 80.

Real references: real images x noised to each sigma (x + sigma eps, eps fixed per image) and passed
through the model with their class, G(x + sigma eps, sigma, one_hot(label)): what the model sees of
real data at each noise level.

The trajectory stage writes, under `<workdir>/trajectory/`:

    paths/          a store (store.py layout): one row per sample and step (sample-major), with
                    `path`, `step` and `sigma` columns; thumbnails are each step's output D_s
    real/           a store of the real references, one row per image and step, thumbnails D_s
    points.parquet  both projected onto the real map with the headline layer's fitted embedding
    metrics.json    per step: precision, recall, density, coverage and FD of the step's samples
                    against the real set, and against the real references at the same sigma
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import check_schedule  # the schedule check lives with the config keys (checked at load)
from .errors import UserError
from .runtime import auto_batch_size

RENOISE_STRIDE = 1 << 32            # step s >= 1 draws noise index s * 2^32 + i: disjoint from every other use
REAL_NOISE_OFFSET = 1 << 40         # real reference j draws noise index 2^40 + its real sample id
METRIC_KEYS = ("precision", "recall", "density", "coverage", "fd")


def path_noise(seed: int, seed_indices: Sequence[int] | np.ndarray, n_steps: int,
               shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """[z, eps_0, ..., eps_{S-2}]: the initial noise (that of the one-step sample) and each re-noising."""
    idx = np.asarray(seed_indices, np.int64).reshape(-1)
    from .sampling import sample_noise

    return [sample_noise(seed, idx + s * RENOISE_STRIDE, shape) for s in range(n_steps)]


@torch.no_grad()
def denoise_steps(net, noise: list[torch.Tensor], labels: torch.Tensor, sigmas: Sequence[float], capture=None,
                  reduce=None) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """One batch through the schedule: (D_s for every step, captured activations of every step).

    `noise` is `path_noise`'s list for the batch; `capture` an entered `ActivationCapture` (or None);
    `reduce(layer, activation)` turns each capture into features (default: kept as captured).
    """
    device = labels.device
    x = sigmas[0] * noise[0].to(device)
    images, feats = [], []
    for s, sigma in enumerate(sigmas):
        sig = torch.full((len(x),), sigma, device=device)
        d = capture.run(x, sig, labels) if capture is not None else net(x, sig, labels)
        images.append(d)
        feats.append({l: (reduce(l, a) if reduce else a) for l, a in capture.activations.items()}
                     if capture is not None else {})
        if s + 1 < len(sigmas):
            x = d.float() + sigmas[s + 1] * noise[s + 1].to(device)
    return images, feats


@torch.no_grad()
def sample_paths(net, seed: int, seed_indices, labels: torch.Tensor, sigmas: Sequence[float], *,
                 layers: Sequence[str] = (), reducer=None, batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """Few-step samples of `seed_indices` under `labels` (N, K), any conditioning.

    Returns images (S, N, C, H, W) float32 on the host (each step's output D_s, in [-1, 1]) and
    {layer: (S, N, D) float32} features (reduced by `reducer`, an `extract.Reducer`, else the
    spatial mean). Row i depends only on (seed, seed_indices[i], labels[i]), not on the batch.
    """
    from .layers import REDUCERS, ActivationCapture

    sigmas = check_schedule(sigmas, "sigmas")
    device = next(net.parameters()).device
    seed_indices = np.asarray(seed_indices, np.int64).reshape(-1)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    reduce = reducer or (lambda l, a: REDUCERS["mean"](a) if a.ndim == 4 else a)
    images, feats = [], {l: [] for l in layers}
    with ActivationCapture(net, list(layers), reduce=reducer.capture_mode(False) if reducer else "full") as cap:
        for b in range(0, len(seed_indices), batch_size):
            noise = path_noise(seed, seed_indices[b:b + batch_size], len(sigmas), shape)
            y = labels[b:b + batch_size].to(device)
            outs, acts = denoise_steps(net, noise, y, sigmas, cap if layers else None, reduce)
            images.append(torch.stack([o.float().cpu() for o in outs]))
            for l in layers:
                feats[l].append(torch.stack([a[l].float().cpu() for a in acts]))
    n = len(sigmas)
    empty = torch.zeros((n, 0, *shape))
    return (torch.cat(images, 1) if images else empty), {l: torch.cat(v, 1).numpy() for l, v in feats.items()}


@torch.no_grad()
def noised_real(net, images_uint8: np.ndarray, class_ids: np.ndarray, noise_ids: np.ndarray, seed: int,
                sigmas: Sequence[float], *, layers: Sequence[str], reducer, batch_size: int = 64):
    """Real images (n, 3, R, R) uint8 noised to each sigma and denoised with their class:
    (images (S, n, C, H, W) float32, {layer: (S, n, D)}), the same `eps` for an image at every sigma."""
    from .layers import ActivationCapture
    from .sampling import sample_noise

    device = next(net.parameters()).device
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    out_images, feats = [], {l: [] for l in layers}
    with ActivationCapture(net, list(layers), reduce=reducer.capture_mode(False)) as cap:
        for b in range(0, len(images_uint8), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images_uint8[b:b + batch_size])).to(device).float() / 127.5 - 1
            y = F.one_hot(torch.as_tensor(class_ids[b:b + batch_size], device=device), net.label_dim).float()
            eps = sample_noise(seed, REAL_NOISE_OFFSET + np.asarray(noise_ids[b:b + batch_size], np.int64), shape).to(device)
            step_images, step_feats = [], {l: [] for l in layers}
            for sigma in sigmas:
                d = cap.run(x + sigma * eps, torch.full((len(x),), sigma, device=device), y)
                step_images.append(d.float().cpu())
                for l in layers:
                    step_feats[l].append(reducer(l, cap.activations[l]).float().cpu())
            out_images.append(torch.stack(step_images))
            for l in layers:
                feats[l].append(torch.stack(step_feats[l]))
    return torch.cat(out_images, 1), {l: torch.cat(v, 1).numpy() for l, v in feats.items()}


# ---------------------------------------------------------------------------------------------
# The trajectory stage.

def trajectory_dir(workdir) -> Path:
    return Path(workdir) / "trajectory"


def _digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()[:16]


def _rows_of_steps(a: np.ndarray) -> np.ndarray:
    """(S, n, ...) -> (n * S, ...): sample-major rows (sample i's steps are rows i*S .. i*S+S-1)."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]))


def _write_steps_store(path: Path, key: dict, info: dict, overwrite: bool, n: int, per_chunk: int, compute,
                       meta_of, dims: dict, thumb_size: int, dtype) -> None:
    """A store of n items x S steps, `per_chunk` items per chunk; compute(sl) -> (images, feats) for items sl."""
    from .extract import thumbnails
    from .store import StoreWriter, save_json

    class_index = info.pop("class_index")
    writer = StoreWriter(path, key, "trajectory")
    writer.prepare(overwrite, info)
    n_chunks = -(-n // per_chunk) if n else 0
    for i in range(n_chunks):
        if writer.done(i):
            continue
        sl = slice(i * per_chunk, min((i + 1) * per_chunk, n))
        images, feats = compute(sl)
        S = images.shape[0]
        thumbs = thumbnails(images.reshape(-1, *images.shape[2:]), thumb_size).numpy()
        thumbs = _rows_of_steps(thumbs.reshape(S, -1, *thumbs.shape[1:]))
        writer.write_chunk(i, {l: _rows_of_steps(f).astype(dtype) for l, f in feats.items()}, meta_of(sl), thumbs)
    save_json(path / "class_index.json", class_index)
    writer.finalize(n_chunks, info)


def trajectory_plan(config, real_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and seed indices of the sampled paths: the first `trajectory.samples` of the
    generate stage's plan (the real set's classes in turn), so with class conditioning a path's
    first step is the class-conditioned set's sample of the same row."""
    classes = np.unique(real_classes)
    n = config.trajectory.samples
    return classes[np.arange(n) % len(classes)].astype(np.int64), np.arange(n, dtype=np.int64)


def _reference_rows(real_classes: np.ndarray, n: int) -> np.ndarray:
    """Real rows spread over the classes: each class's first sample, then each one's second, ..."""
    rank = pd.Series(real_classes).groupby(real_classes).cumcount().to_numpy()
    order = np.lexsort((real_classes, rank))
    return np.sort(order[:n])


def build_trajectories(run, overwrite: bool = False) -> None:
    """The trajectory stage: sample the paths and the real references, project, measure."""
    from .extract import Reducer, compute_key, feature_dims, parse_reduce, versions
    from .layers import resolve_layer
    from .pipeline import load_fitted, open_store
    from .sampling import condition_vectors
    from .sources import open_source, source_class_index
    from .store import Store, load_pca, sparse_labels

    cfg, t = run.config, run.config.trajectory
    out = trajectory_dir(cfg.run.workdir)
    if not t.enabled:
        shutil.rmtree(out, ignore_errors=True)  # no stale paths in the report
        run.log("[trajectory] disabled (trajectory.enabled = false)")
        return
    sigmas = check_schedule(t.sigmas)
    S = len(sigmas)
    real = open_store(run, "real")
    real_meta = real.metadata()
    real_classes = real_meta["class_id"].to_numpy().astype(np.int64)
    net = run.net
    device = next(net.parameters()).device
    f = cfg.features
    layers = list(real.layers)
    for name in layers:
        resolve_layer(net, name)
    mode, _ = parse_reduce(f.reduce)
    pca, pca_digest = None, None
    if mode == "pca":
        pca_path = real.path / "pca.safetensors"
        pca_digest = hashlib.sha256(pca_path.read_bytes()).hexdigest()[:16]
        pca = load_pca(pca_path)
    reducer = Reducer(f.reduce, f.dtype, pca, device)
    dims = feature_dims(net, layers, f.reduce)
    K = net.label_dim
    index = source_class_index(cfg)
    ts = min(cfg.report.thumb_size, net.img_resolution)
    per_chunk = max(1, f.chunk_size // S)
    common = {"model_checksum": run.checksum, "sigmas": sigmas, "seed": cfg.run.seed, "resolution": net.img_resolution,
              "num_classes": K, "features": {"layers": layers, "reduce": f.reduce, "dtype": f.dtype, "pca": pca_digest},
              "thumb_size": cfg.report.thumb_size, "per_chunk": per_chunk, "compute": compute_key(net, device)}
    info = {"model_checksum": run.checksum, "versions": versions(), "layers": layers, "feature_dims": dims,
            "reduction": f.reduce, "dtype": f.dtype, "sigmas": sigmas, "steps": S, "seed": cfg.run.seed,
            "num_classes": K, "resolution": net.img_resolution, "thumb_size": cfg.report.thumb_size,
            "full_layer": None, "class_index": index.to_mapping()}

    # Paths.
    class_ids, seeds = trajectory_plan(cfg, real_classes)
    if t.conditioning == "class":
        vectors = condition_vectors("class", K, classes=class_ids)
    elif t.conditioning == "blend":
        # A path's blend is the one the generate stage made for the same seed (its neighbours' classes).
        from .pipeline import open_store

        if "blend" not in cfg.generate.variants:
            raise UserError("trajectory.conditioning = 'blend' needs 'blend' in generate.variants")
        blend = open_store(run, "gen-blend")
        if len(blend) < len(seeds):
            raise UserError(f"trajectory.samples ({len(seeds)}) exceeds the blend set's {len(blend)} samples "
                            f"(generate.variant_samples): a path's blend comes from that set")
        vectors = torch.from_numpy(blend.label_vectors(K)[: len(seeds)])
    else:
        vectors = condition_vectors(t.conditioning, K, count=len(seeds))
        class_ids = np.full(len(seeds), -1, np.int64)
    n = len(seeds)

    def path_meta(sl):
        ids, idx = class_ids[sl], seeds[sl]
        li, lw = sparse_labels(vectors[sl].numpy())
        rep = lambda a: np.repeat(np.asarray(a), S)
        return pd.DataFrame({
            "sample_id": np.arange(sl.start * S, sl.stop * S, dtype=np.int64), "path": rep(np.arange(sl.start, sl.stop)),
            "step": np.tile(np.arange(S), len(ids)), "sigma": np.tile(np.asarray(sigmas, np.float64), len(ids)),
            "source": rep([f"seed {cfg.run.seed} #{s}" for s in idx]), "seed": np.full(len(ids) * S, cfg.run.seed, np.int64),
            "seed_index": rep(idx), "class_id": rep(ids), "synset": rep([index.synset(int(c)) for c in ids]),
            "name": rep([index.name(int(c)) for c in ids]), "variant": t.conditioning,
            "label_index": [a for a in li for _ in range(S)], "label_weight": [w for w in lw for _ in range(S)],
            "has_recon": np.zeros(len(ids) * S, bool), "has_full": np.zeros(len(ids) * S, bool)})

    def path_compute(sl):
        images, feats = sample_paths(net, cfg.run.seed, seeds[sl], vectors[sl], sigmas, layers=layers,
                                     reducer=reducer, batch_size=auto_batch_size(device, f.batch_size))
        return images, feats

    run.log(f"[trajectory] {n} samples x {S} steps (sigmas {', '.join(f'{s:g}' for s in sigmas)})")
    _write_steps_store(out / "paths", {"stage": "trajectory", **common, "conditioning": t.conditioning,
                                       "class_ids": _digest(class_ids), "seed_indices": _digest(seeds)},
                       info | {"variant": t.conditioning, "planned": n * S, "chunk_size": per_chunk * S},
                       overwrite, n, per_chunk, path_compute, path_meta, dims, ts, np.dtype(f.dtype))

    # Real references: real images noised to each sigma.
    ref_rows = _reference_rows(real_classes, min(t.real_references, len(real_meta)))
    ref_ids = real_meta["sample_id"].to_numpy().astype(np.int64)[ref_rows]
    ref_images = np.zeros((0, 3, net.img_resolution, net.img_resolution), np.uint8)
    if len(ref_rows):
        with open_source(cfg, net.img_resolution) as source:
            pos_of = {int(s): p for p, s in enumerate(source.samples["sample_id"])}
            loaded = []
            for sid in ref_ids:
                got = source.load(pos_of[int(sid)], pos_of[int(sid)] + 1)
                if not got.kept.all():
                    raise UserError(f"data: real sample {sid} can no longer be read; rerun the extract stage")
                loaded.append(got.images)
            ref_images = np.concatenate(loaded)

    def ref_meta(sl):
        rows = real_meta.iloc[ref_rows[sl]]
        rep = lambda a: np.repeat(np.asarray(a), S)
        li, lw = sparse_labels(F.one_hot(torch.tensor(rows["class_id"].to_numpy(np.int64)), K).numpy().astype(np.float32))
        return pd.DataFrame({
            "sample_id": np.arange(sl.start * S, sl.stop * S, dtype=np.int64), "path": rep(np.arange(sl.start, sl.stop)),
            "step": np.tile(np.arange(S), len(rows)), "sigma": np.tile(np.asarray(sigmas, np.float64), len(rows)),
            "source": rep(rows["source"].astype(str)), "seed": np.full(len(rows) * S, cfg.run.seed, np.int64),
            "seed_index": rep(REAL_NOISE_OFFSET + rows["sample_id"].to_numpy(np.int64)),
            "class_id": rep(rows["class_id"].to_numpy(np.int64)), "synset": rep(rows["synset"].astype(str)),
            "name": rep(rows["name"].astype(str)), "variant": "real", "real_row": rep(ref_rows[sl]),
            "label_index": [a for a in li for _ in range(S)], "label_weight": [w for w in lw for _ in range(S)],
            "has_recon": np.zeros(len(rows) * S, bool), "has_full": np.zeros(len(rows) * S, bool)})

    def ref_compute(sl):
        return noised_real(net, ref_images[sl], real_classes[ref_rows[sl]], ref_ids[sl], cfg.run.seed, sigmas,
                           layers=layers, reducer=reducer, batch_size=auto_batch_size(device, f.batch_size))

    run.log(f"[trajectory] {len(ref_rows)} real references x {S} sigmas")
    _write_steps_store(out / "real", {"stage": "trajectory-real", **common, "real_store": real.manifest["config_hash"],
                                      "reference_ids": _digest(ref_ids)},
                       info | {"variant": "real", "planned": len(ref_rows) * S, "chunk_size": per_chunk * S},
                       overwrite, len(ref_rows), per_chunk, ref_compute, ref_meta, dims, ts, np.dtype(f.dtype))

    # Projection onto the map and metrics per step, in the headline layer.
    headline = cfg.metrics.layer
    emb = load_fitted(run, headline)
    paths, refs = Store(out / "paths"), Store(out / "real")
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
    doc = measure_steps(emb.reduce(real.features(headline)), real_classes, reduced["path"], reduced["real"], sigmas,
                        cfg, feature_space=f"{headline}:{f.reduce}+standardise+pca{emb.n_components}")
    doc.update({"layer": headline, "conditioning": t.conditioning, "samples": n, "real_references": int(len(ref_rows)),
                "paths_per_class": t.paths_per_class})
    tmp = out / "points.parquet.tmp"
    points.to_parquet(tmp, index=False)
    os.replace(tmp, out / "points.parquet")
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / "metrics.json")


def _store_rows(store, layer: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(metadata, features) of a store, also when it holds no chunks at all."""
    if store.manifest["chunks"] == 0:
        cols = ["path", "step", "sigma", "class_id", "source"]
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in cols}), \
            np.zeros((0, store.manifest["feature_dims"][layer]), np.float32)
    return store.metadata(), store.features(layer)


def measure_steps(real_red: np.ndarray, real_classes: np.ndarray, paths: tuple[np.ndarray, pd.DataFrame],
                  refs: tuple[np.ndarray, pd.DataFrame], sigmas: Sequence[float], config, feature_space: str) -> dict:
    """Per step: the step's samples against the real set, and against the real references at that sigma.

    paths/refs: (reduced features, store metadata with `step`). A comparison whose sets are too small
    for the metrics' k is left out (value None)."""
    from .metrics import measure

    m = config.metrics
    kw = dict(k_pr=m.k_pr, k_dc=m.k_dc, k_fidelity=m.k_fidelity, k_neighbours=1, bootstrap=m.bootstrap,
              seed=config.run.seed, per_class=False, per_class_fd=False, log=lambda s: None)
    g_feat, g_meta = paths
    r_feat, r_meta = refs
    g_step, r_step = g_meta["step"].to_numpy(), r_meta["step"].to_numpy()
    need = max(m.k_pr, m.k_dc) + 1

    def entries(real_x, real_c, gen_x, tag):
        if len(real_x) < need or len(gen_x) < 2:
            return {k: None for k in METRIC_KEYS} | {"n_real": len(real_x), "n_generated": len(gen_x)}
        r = measure(real_x, real_c, {tag: (gen_x, None)}, feature_space=f"{feature_space} {tag}", **kw)
        o = r["variants"][tag]["overall"]
        out = {"n_real": len(real_x), "n_generated": len(gen_x)}
        for k in METRIC_KEYS:
            e = o.get(k) or {}
            out[k] = e.get("value")
            if "ci_low" in e:
                out[k + "_ci"] = [e["ci_low"], e["ci_high"]]
        return out

    steps = []
    for s, sigma in enumerate(sigmas):
        g = g_feat[g_step == s]
        steps.append({"step": s, "sigma": float(sigma),
                      "vs_real": entries(real_red, real_classes, g, f"step{s}"),
                      "vs_noised_real": entries(r_feat[r_step == s], None, g, f"step{s}-noised")})
    return {"feature_space": feature_space, "sigmas": [float(s) for s in sigmas], "steps": steps,
            "definitions": {"vs_real": "the step's samples against the real set as extracted (sigma 80 on the image)",
                            "vs_noised_real": "the step's samples against real images noised to the step's sigma "
                                              "and passed through the model with their class"}}
