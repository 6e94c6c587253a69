"""The generate stage: one-step DMD2 samples of one conditioning variant -> features and thumbnails in a store.

Sample i is G(80 z_i, 80, c_i) with z_i = sample_noise(run.seed, seed_indices[i]) and c_i its
label vector (one-hot for `class`, 1/K for `uniform`, zeros for `zero`, or the given rows, e.g.
a blend of neighbours' classes). Which activations are stored (`features.generated`):

- `reencode` (default): the generated image, quantised to uint8 exactly as a stored image is, is fed
  back the way real images are, G(80 x, 80, one_hot(class)), and the layers are captured there (early
  exit). The label is the one-hot of the class the sample is shown as (`class_ids`), as a real image
  gets its class; only a sample with no class (-1) is re-encoded with its generation label vector.
  Real and generated features then come from the same function of an image, so precision, recall
  and coverage compare the two image distributions (a perfect generator scores 1).
- `generation`: the activations of the generating forward pass itself, G(80 z, 80, c). They show
  what the network does while it generates, but its input is noise where the real set's is an
  image, so the two sets sit apart in activation space by construction and recall is near 0.

Features are reduced exactly as the real set's were: with `pca:K`, by the PCA saved in the real store. The chunking, resuming, writer thread and
sharding are those of the extract stage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..chunks import Progress, barrier, dist_rank_world, encode, finish_store, gather, prefetch, to_device, versions
from ..classes import ClassIndex
from ..context import Context, Stage, compute_identity
from ..encoders.registry import describe
from ..errors import UserError
from ..features import Reducer, feature_dims, parse_reduce
from ..files import array_digest, bytes_digest
from ..knn import as_device, knn
from ..layers import ActivationCapture, resolve_layer
from ..runtime import auto_batch_size, stage_samples
from ..sampling import (SIGMA_MAX, condition_vectors, encode_as_stored, quantise, reencode_labels, sample_noise,
                        sample_plan, thumbnails)
from ..store import BackgroundWriter, StoreWriter, load_pca, metadata_frame, sparse_labels
from ..workdir import WorkDir, generated_sets

log = logging.getLogger(__name__)


def run(ctx: Context, overwrite: bool = False) -> None:
    """The generate stage: for each generator, the class-conditioned set, then the same first seeds under every
    other variant. Every generator draws the same seeds; with [[generators]], the reference encoder re-encodes
    every generator's images (one feature space)."""
    cfg, wd = ctx.config, ctx.workdir
    real = wd.store("real", reader="generate")
    real_classes = real.metadata()["class_id"].to_numpy()
    class_ids, seeds = sample_plan(real_classes, cfg.generate.samples)
    n_var = min(cfg.generate.variant_samples, len(seeds))
    encoder = ctx.generator
    for name, g in ctx.generators.items():
        stores = dict(generated_sets(cfg, name))
        net, checksum = g.net, g.checksum
        # A generator other than the reference is re-encoded by the reference encoder's network.
        enc = None if g is encoder else (encoder.net, encoder.checksum)
        generate_set(cfg, wd, net, checksum, "class", class_ids, seeds, classes=ctx.classes, overwrite=overwrite,
                     store=stores["class"], encoder=enc, encoders=ctx.encoders)
        for variant in cfg.generate.variants:
            if variant == "class":
                continue  # the first n_var samples of the class set are the class variant
            vectors = None
            if variant == "blend":
                layer = cfg.metrics.layer
                vectors = blend_weights(lambda: real.iter_features(layer), real_classes,
                                        wd.store(stores["class"], reader="generate").features(layer)[:n_var],
                                        cfg.generate.blend_neighbours, net.label_dim, device=next(net.parameters()).device)
            generate_set(cfg, wd, net, checksum, variant, class_ids[:n_var], seeds[:n_var], label_vectors=vectors,
                         classes=ctx.classes, overwrite=overwrite, store=stores[variant], encoder=enc,
                         encoders=ctx.encoders)
        if g is not encoder:
            g.unload()


def blend_weights(real_chunks, real_classes: np.ndarray, query_feats: np.ndarray, k: int, num_classes: int,
                  device=None) -> np.ndarray:
    """Each query's blend: the mean one-hot of its k nearest real samples (standardised features).

    `real_chunks()` yields the real features chunk by chunk (memory-mapped store chunks): the mean and
    standard deviation are accumulated in float64 over them, and the standardised base is written straight
    into one float32 tensor on `device` (the search's), so the host never holds a full copy of the layer."""
    n, mean = 0, None
    for chunk in real_chunks():
        s = chunk.astype(np.float64).sum(0)
        mean = s if mean is None else mean + s
        n += len(chunk)
    mean /= n
    sq = sum(np.square(chunk.astype(np.float64) - mean).sum(0) for chunk in real_chunks())
    sd = np.sqrt(sq / n) + 1e-6
    dim = len(mean)
    mu32, sd32 = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(sd.astype(np.float32))
    dev = as_device(device)
    base = torch.empty((n, dim), dtype=torch.float32, device=dev)
    row = 0
    for chunk in real_chunks():
        x = torch.from_numpy(np.asarray(chunk, np.float32))
        base[row:row + len(x)] = ((x - mu32) / sd32).to(dev)
        row += len(x)
    queries = ((torch.from_numpy(np.asarray(query_feats, np.float32)) - mu32) / sd32).to(dev)
    _, idx = knn(queries, base, min(k, n), device=dev)
    weights = np.zeros((len(query_feats), num_classes), np.float32)
    for j in range(idx.shape[1]):   # one step per neighbour rank, vectorised over the queries
        np.add.at(weights, (np.arange(len(idx)), real_classes[idx[:, j]]), 1.0)
    return weights / idx.shape[1]


def _given_vectors(label_vectors, n: int, K: int, variant: str) -> np.ndarray:
    """The user's (n, K) label vectors as float32 (no copy when they are float32 already), checked once."""
    v = condition_vectors("vector", K, weights=label_vectors).numpy()
    if len(v) != n:
        raise UserError(f"generate {variant}: {len(v)} label vectors for {n} seeds")
    return v


@torch.no_grad()
def generate_set(config, workdir: WorkDir, net, model_checksum: str, variant: str, class_ids, seed_indices,
                 label_vectors=None, *, classes: ClassIndex, overwrite: bool = False, progress: bool = True,
                 store: str | None = None, encoder: tuple | None = None,
                 encoders: Mapping[str, torch.nn.Module] | None = None) -> Path:
    """Generate one variant's samples into `workdir`'s store `store` (default `gen-<variant>`); returns the store path.

    `class_ids` (N,) is the class each sample is shown as (-1: none); `seed_indices` (N,) the noise
    indices (distinct); `label_vectors` (N, K) the conditioning, or None to derive it from the
    variant (`class`: one-hot of class_ids, `uniform`, `zero`). `encoder`: (network, checksum) of another
    network that re-encodes the images (the reference encoder of a comparison); default `net` itself. `classes`: the
    class index naming class ids (Context.classes). `encoders`: the standard feature spaces by name
    (encoders.load_encoder), fed each generated image as stored (uint8).
    Resumes an interrupted run.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", variant):
        raise UserError(f"variant name {variant!r}: use letters, digits, '_', '-' or '.'")
    device = next(net.parameters()).device
    rank, world = dist_rank_world()
    f = config.features
    layers = list(f.layers)
    encoder_net = net if encoder is None else encoder[0]
    if encoder is not None and (encoder_net.img_resolution, encoder_net.label_dim) != (net.img_resolution, net.label_dim):
        raise UserError(f"generate {store}: the generator makes {net.img_resolution}px images of {net.label_dim} classes, "
                        f"the reference encoder (features.encoder) reads {encoder_net.img_resolution}px images of "
                        f"{encoder_net.label_dim} classes; compare generators of one resolution and class set")
    for name in layers:
        resolve_layer(encoder_net, name)
    mode, _ = parse_reduce(f.reduce)
    K = net.label_dim

    class_ids = np.asarray(class_ids, np.int64).reshape(-1)
    seed_indices = np.asarray(seed_indices, np.int64).reshape(-1)
    n = len(seed_indices)
    if len(class_ids) != n:
        raise UserError(f"generate {variant}: {len(class_ids)} class ids for {n} seeds")
    if len(np.unique(seed_indices)) != n:
        raise UserError(f"generate {variant}: seed indices repeat; each sample needs its own")
    if n and (class_ids.min() < -1 or class_ids.max() >= K):
        raise UserError(f"generate {variant}: class ids must lie in -1..{K - 1}")
    # Label vectors are made chunk by chunk on the loading thread (load): dense (n, K) ones for
    # the whole set cost ~0.4 s at n=50,000 before the first chunk could start.
    if label_vectors is None:
        if variant == "class" and (class_ids < 0).any():
            raise UserError("generate class: every sample needs a class id")
        condition_vectors(variant, K, classes=class_ids[:0], count=0)  # an unknown or weight-needing mode fails here
        # Derived vectors are a function of (variant, class_ids, K), which the key holds already.
        vectors_digest = f"derived from variant {variant}"
    else:
        label_vectors = _given_vectors(label_vectors, n, K, variant)
        vectors_digest = array_digest(label_vectors)

    pca = None
    if mode == "pca":
        pca_path = workdir.store_path("real") / "pca.safetensors"
        if not pca_path.exists():
            raise UserError(f"{pca_path}: no PCA to reduce generated features with; run the extract stage first")
        pca_digest = bytes_digest(pca_path.read_bytes())
        pca = load_pca(pca_path)
    cs = f.chunk_size
    n_chunks = -(-n // cs)
    key = {
        "stage": "generated", "variant": variant, "seed": config.run.seed,
        "class_ids": array_digest(class_ids), "seed_indices": array_digest(seed_indices), "label_vectors": vectors_digest,
        "model_checksum": model_checksum, "resolution": net.img_resolution, "num_classes": K,
        "features": {"layers": layers, "reduce": f.reduce, "dtype": f.dtype, "chunk_size": cs,
                     "pca": pca_digest if mode == "pca" else None},
        "thumb_size": config.report.thumb_size, "compute": compute_identity(device, net.use_fp16),
        "generated_features": f.generated,
    }
    if encoder is not None:
        key["encoder_checksum"] = encoder[1]
    encoders = dict(encoders or {})
    if encoders:   # a store without encoders keeps the key it had before they existed
        key["encoders"] = {name: e.identity for name, e in encoders.items()}
    path = workdir.store_path(store or f"gen-{variant}")
    writer = StoreWriter(path, key, "generated")
    dims = feature_dims(encoder_net, layers, f.reduce) | {name: e.feature_dim for name, e in encoders.items()}
    info = {"model_checksum": model_checksum, "versions": versions(), "layers": layers,
            "feature_dims": dims, "encoders": {name: describe(e) for name, e in encoders.items()},
            "reduction": f.reduce, "dtype": f.dtype, "variant": variant, "seed": config.run.seed,
            "chunk_size": cs, "num_classes": K, "resolution": net.img_resolution,
            "thumb_size": config.report.thumb_size, "planned": n, "full_layer": None,
            "generated_features": f.generated}
    writer.check(overwrite)  # every rank: a refusal is raised everywhere, not only on rank 0
    barrier(world)  # every rank has looked before rank 0 changes anything
    if rank == 0:
        writer.prepare(overwrite, info)
        if mode == "full":
            log.info("features: full activations, %d samples x %d values (%s) = %.2f GiB to store", n,
                     sum(dims.values()), f.dtype, n * sum(dims.values()) * np.dtype(f.dtype).itemsize / 2**30)
    barrier(world)
    reducer = Reducer(f.reduce, f.dtype, pca, device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)

    cuda = device.type == "cuda"
    reencode = f.generated == "reencode"

    def load(i):
        """Chunk i's noise, label vectors and metadata, on the loading thread while chunk i - 1 computes.
        Tensors for the device are pinned here, so that their copies need no staging on the main thread."""
        sl = slice(i * cs, min((i + 1) * cs, n))
        ids = class_ids[sl]
        z = sample_noise(config.run.seed, seed_indices[sl], shape, pin_memory=cuda)
        if label_vectors is None:
            c = condition_vectors(variant, K, classes=ids if variant == "class" else None, count=len(ids))
        else:
            c = torch.from_numpy(np.ascontiguousarray(label_vectors[sl]))
        c_reencode = reencode_labels(ids, c, K) if reencode else None
        idx, w = sparse_labels(c.numpy())
        meta = metadata_frame(np.arange(sl.start, sl.stop), ids, classes, variant=variant,
                              source=[f"seed {config.run.seed} #{s}" for s in seed_indices[sl]], seed=config.run.seed,
                              seed_index=seed_indices[sl], label_index=idx, label_weight=w)
        if cuda:
            c, c_reencode = c.pin_memory(), (c_reencode.pin_memory() if reencode else None)
        return z, c, c_reencode, meta

    todo = [i for i in range(rank, n_chunks, world) if not writer.done(i)]
    remaining = sum(min(cs, n - i * cs) for i in todo)
    bar = Progress(remaining, f"generate {variant}", progress)
    stage_samples(net, remaining)  # model.compile = auto decides
    try:
        with BackgroundWriter(writer) as bg:
            for i, (z, c, c_reencode, meta) in prefetch(load, todo):
                feats, logits, thumbs, finite = _generate_chunk(
                    net, z, c, layers, reducer, device, auto_batch_size(device, f.batch_size), config.report.thumb_size,
                    bar, reencode_labels=c_reencode, encoder=encoder_net, encoders=encoders)
                bg.submit(i, {l: gather(v, (dims[l],), torch.float32 if l in encoders else reducer.dtype)
                              for l, v in feats.items()}, meta,
                          gather(thumbs, (min(config.report.thumb_size, net.img_resolution),) * 2 + (3,), torch.uint8),
                          first_row=i * cs, outputs_finite=gather(finite, (), torch.bool),
                          logits={name: gather(v, (encoders[name].num_classes,), torch.float32)
                                  for name, v in logits.items()})
    finally:
        bar.close()
        stage_samples(net, 0)
    finish_store(writer, classes, n_chunks, info, rank, world)
    return path


def _generate_chunk(net, z, c, layers, reducer: Reducer, device, batch_size: int, thumb_size: int, bar: Progress,
                    reencode_labels: torch.Tensor | None = None, encoder=None, encoders=None):
    encoders = encoders or {}
    feats: dict[str, list] = {l: [] for l in [*layers, *encoders]}
    logits: dict[str, list] = {name: [] for name, e in encoders.items() if e.num_classes}
    thumbs, finite = [], []  # finite: per sample, whether the generated image is (checked by the store's writer)
    mode = reducer.capture_mode(False)
    for b in range(0, len(z), batch_size):
        x = to_device(z[b:b + batch_size], device)
        y = to_device(c[b:b + batch_size], device)
        sigma = torch.full((len(x),), SIGMA_MAX, device=device)
        if reencode_labels is not None:
            # A second pass on the image as stored, as real extraction does.
            images = net(SIGMA_MAX * x, sigma, y)
            acts = encode_as_stored(encoder if encoder is not None else net, images,
                                    to_device(reencode_labels[b:b + batch_size], device), layers, mode)
        else:
            cap = ActivationCapture(net, layers, reduce=mode)
            images = cap.run(SIGMA_MAX * x, sigma, y)
            acts = cap.activations
        for l in layers:
            feats[l].append(reducer(l, acts[l]))
        if encoders:
            encode(encoders, quantise(images), feats, logits)   # the image as stored, as real images are read
        thumbs.append(thumbnails(images, thumb_size))
        finite.append(torch.isfinite(images).flatten(1).all(1))
        bar.update(len(x))
    return feats, logits, thumbs, finite


def _compared_generators(ctx: Context) -> list:
    """With [[generators]], every generator's name and identity (a one-generator run's is the reference encoder,
    in the extract key already)."""
    return [[name, g.key_identity()] for name, g in ctx.generators.items() if name]


STAGE = Stage(
    "generate", run, "Generate samples of every conditioning variant, with activations.",
    writes="stores/gen-<variant>/, stores/generators/<name>/gen-<variant>/", after=("extract",),
    reads=("generate", "features.generated"), inputs=_compared_generators,
    outputs=lambda ctx: [ctx.workdir.store_path(name) for g in ctx.generators for _, name in generated_sets(ctx.config, g)],
    uses_model=True, sharded=True)
