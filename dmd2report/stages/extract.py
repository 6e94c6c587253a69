"""The extract stage: real images -> reduced UNet features, thumbnails and reconstructions in a store.

A real image x (uint8 / 127.5 - 1, in [-1, 1]) is fed as DMD2 feeds noise, G(80 x, 80, one_hot(label)),
and the chosen layers are captured with an early exit after the last of them (nothing past
`midblock` is computed). Features are reduced on the device before the copy to the host
(`features.py`: mean, pca:K fitted here on the first M real samples and saved with the store, or full).

For a per-class subset the store also keeps the masking layer's full activations (to generate
by masking from anchors and their neighbours) and the reconstruction, the model's output for
the real input (a second, full forward pass over that subset only).

Loading runs one chunk ahead on a thread (images decoded by the source's worker threads and
pinned), host-to-device copies are non-blocking, results stay on the device until the chunk
ends, and a writer thread stores a chunk while the next one is computed. Under torch.distributed
chunk i belongs to rank i % world_size; rank 0 prepares the store and fits the PCA before a
barrier, and writes the manifest after another.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..chunks import Progress, barrier, dist_rank_world, encode, finish_store, gather, prefetch, to_device, versions
from ..classes import ClassIndex
from ..context import Context, Stage, compute_identity
from ..encoders.registry import describe
from ..errors import UserError
from ..features import Reducer, block_shapes, feature_dims, parse_reduce, randomized_pca
from ..layers import ActivationCapture, resolve_layer
from ..runtime import auto_batch_size, stage_samples
from ..sampling import SIGMA_MAX, thumbnails
from ..sources import CONVERSIONS, open_source
from ..store import BackgroundWriter, StoreWriter, load_pca, metadata_frame, save_pca
from ..workdir import WorkDir

log = logging.getLogger(__name__)


def run(ctx: Context, overwrite: bool = False) -> None:
    """The extract stage: the configured real images into `stores/real`."""
    g = ctx.generator
    extract_real(ctx.config, ctx.workdir, g.net, g.checksum, g.class_index(), encoders=ctx.encoders,
                 overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# The extract stage.

def _plan(source, config) -> pd.DataFrame:
    """The source's samples with their class names and the per-class subsets that keep more."""
    plan = source.samples.copy()
    rank = plan.groupby("class_id").cumcount().to_numpy()
    plan["has_full"] = rank < config.features.full_per_class
    plan["has_recon"] = rank < config.features.recon_per_class
    return plan


def _fit_pca(net, source, plan, config, device, k: int) -> dict:
    """PCA per layer on the flattened activations of the first M real samples, on the device."""
    layers = list(config.features.layers)
    m = min(config.features.pca_fit_samples, len(plan))
    rows: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    taken, start, bs = 0, 0, auto_batch_size(device, config.features.batch_size)
    cap = ActivationCapture(net, layers, reduce="full", early_exit=True)
    while taken < m and start < len(plan):
        stop = min(start + config.features.chunk_size, len(plan))
        loaded = source.load(start, stop)
        ids = plan["class_id"].to_numpy()[start:stop][loaded.kept]
        for b in range(0, len(ids), bs):
            if taken >= m:
                break
            x = to_device(loaded.images[b:b + bs], device).float() / 127.5 - 1
            y = F.one_hot(torch.tensor(ids[b:b + bs], device=device), net.label_dim).float()
            cap.run(SIGMA_MAX * x, torch.full((len(x),), SIGMA_MAX, device=device), y)
            for l in layers:
                rows[l].append(cap.activations[l].flatten(1).float()[: m - taken])
            taken += min(len(x), m - taken)
        start = stop
    return {l: randomized_pca(torch.cat(rows[l]), k) for l in layers}


@torch.no_grad()
def extract_real(config, workdir: WorkDir, net, model_checksum: str, model_classes: ClassIndex, *,
                 encoders: Mapping[str, torch.nn.Module] | None = None, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Extract the real set into `workdir`'s real store; returns the store path. Resumes an interrupted run.
    `model_classes`: the classes `net` is conditioned on (Generator.class_index); `encoders`: the standard feature
    spaces by name (encoders.load_encoder), fed the same uint8 images as `net`."""
    encoders = dict(encoders or {})
    device = next(net.parameters()).device
    rank, world = dist_rank_world()
    show = progress
    f = config.features
    layers = list(f.layers)
    mode, k = parse_reduce(f.reduce)
    full_layer = config.atlas.mask_layer
    for name in layers + [full_layer]:
        resolve_layer(net, name)

    # Rank 0 first: the demo data may have to be written.
    if rank != 0:
        barrier(world)
    source = open_source(config, net.img_resolution, model_classes, workdir.demo_data)
    if rank == 0:
        barrier(world)
    with source:
        plan = _plan(source, config)
        if len(plan) == 0:
            raise UserError(f"data: the selection is empty (source {config.data.source} {config.data.path})")
        beyond = plan["class_id"][plan["class_id"] >= net.label_dim]
        if len(beyond):
            c = int(beyond.iloc[0])
            raise UserError(f"data: class id {c} ({source.class_index.name(c)}) is beyond the model's {net.label_dim} "
                            f"classes; the data's class index is {source.class_index.origin} (select classes with data.classes)")
        cs = f.chunk_size
        n_chunks = -(-len(plan) // cs)
        d = config.data
        key = {
            "stage": "real",
            "data": {"source": d.source, "path": d.path, "classes": list(d.classes), "per_class": d.per_class,
                     "max_samples": d.max_samples, "on_bad_image": d.on_bad_image, "seed": config.run.seed},
            "selection": source.fingerprint(),
            "model_checksum": model_checksum,
            "resolution": net.img_resolution, "num_classes": net.label_dim,
            "features": {"layers": layers, "reduce": f.reduce, "dtype": f.dtype, "chunk_size": cs,
                         "pca_fit_samples": f.pca_fit_samples if mode == "pca" else None},
            "thumb_size": config.report.thumb_size, "full_layer": full_layer,
            "full_per_class": f.full_per_class, "recon_per_class": f.recon_per_class,
            "compute": compute_identity(device, net.use_fp16),
        }
        if encoders:   # a store without encoders keeps the key it had before they existed
            key["encoders"] = {name: e.identity for name, e in encoders.items()}
        path = workdir.store_path("real")
        writer = StoreWriter(path, key, "real")
        dims = feature_dims(net, layers, f.reduce) | {name: e.feature_dim for name, e in encoders.items()}
        info = {"model_checksum": model_checksum, "versions": versions(), "layers": layers,
                "feature_dims": dims, "encoders": {name: describe(e) for name, e in encoders.items()},
                "reduction": f.reduce, "dtype": f.dtype, "full_layer": full_layer, "chunk_size": cs,
                "num_classes": net.label_dim, "resolution": net.img_resolution, "thumb_size": config.report.thumb_size,
                "planned": len(plan)}
        writer.check(overwrite)  # every rank: a refusal is raised everywhere, not only on rank 0
        barrier(world)  # every rank has looked before rank 0 changes anything
        if rank == 0:
            writer.prepare(overwrite, info)
            if mode == "full":
                log.info("features: full activations, %d samples x %d values (%s) = %.2f GiB to store", len(plan),
                         sum(dims.values()), f.dtype, len(plan) * sum(dims.values()) * np.dtype(f.dtype).itemsize / 2**30)
            if mode == "pca" and not (path / "pca.safetensors").exists():
                pca = _fit_pca(net, source, plan, config, device, k)
                save_pca(path / "pca.safetensors", pca, {"reduce": f.reduce, "config_hash": writer.hash,
                                                          "fit_samples": str(min(f.pca_fit_samples, len(plan)))})
        barrier(world)
        pca = None
        if mode == "pca":
            pca = load_pca(path / "pca.safetensors")
        reducer = Reducer(f.reduce, f.dtype, pca, device)
        full_shape = block_shapes(net)[resolve_layer(net, full_layer)]

        todo = [i for i in range(rank, n_chunks, world) if not writer.done(i)]
        remaining = sum(min(cs, len(plan) - i * cs) for i in todo)
        bar = Progress(remaining, "extract real", show)
        stage_samples(net, remaining)  # model.compile = auto decides
        index = source.class_index

        def load(i):
            loaded = source.load(i * cs, min((i + 1) * cs, len(plan)))
            if device.type == "cuda":
                loaded.images = torch.from_numpy(loaded.images).pin_memory()
            return loaded

        try:
            with BackgroundWriter(writer) as bg:
                for i, loaded in prefetch(load, todo):
                    rows = plan.iloc[loaded.start:loaded.stop][loaded.kept].reset_index(drop=True)
                    out = _extract_chunk(net, loaded.images, rows, layers, full_layer, full_shape, dims, reducer,
                                         device, auto_batch_size(device, config.features.batch_size),
                                         config.report.thumb_size, bar, encoders)
                    # A real sample's label vector is the one-hot of its class: one non-zero.
                    meta = metadata_frame(
                        rows["sample_id"], rows["class_id"], index, variant="real", source=rows["source"], seed=-1,
                        seed_index=-1, label_index=[np.array([c], np.int32) for c in rows["class_id"]],
                        label_weight=[np.ones(1, np.float32)] * len(rows), has_recon=rows["has_recon"],
                        has_full=rows["has_full"])
                    bg.submit(i, out["features"], meta, out["thumbs"], recon=out["recon"],
                              full={full_layer: out["full"]}, skipped=loaded.skipped, first_row=loaded.start,
                              logits=out["logits"], converted=loaded.converted)
        finally:
            bar.close()
            stage_samples(net, 0)
        manifest = finish_store(writer, index, n_chunks, info, rank, world)
        if manifest is not None:
            warn_skipped(manifest.get("skipped", []))
            log_converted(manifest.get("converted", {}))
            refuse_empty(manifest, plan, index, config.data.path, writer, info)
    return path


def log_converted(converted: dict[str, int]) -> None:
    """One line a kind for the images decoding converted to 8-bit RGB (sources.CONVERSIONS; the report lists them)."""
    for kind, n in converted.items():
        log.info("[extract] %d image%s: %s", n, "" if n == 1 else "s", CONVERSIONS.get(kind, kind))


def refuse_empty(manifest: dict, plan: pd.DataFrame, index: ClassIndex, root: str, writer: StoreWriter,
                 info: dict) -> None:
    """A source whose selected images are all unreadable, or a class left with none, is refused in one line before any
    later stage reads the store. The chunks holding skipped images are marked not done first, so a run after the
    files are fixed reads them again rather than finding the store finished."""
    skipped = manifest.get("skipped", [])
    if not skipped:
        return
    lost = plan[plan["source"].isin([s["source"] for s in skipped])]
    planned, left = plan["class_id"].value_counts(), plan["class_id"].value_counts().sub(
        lost["class_id"].value_counts(), fill_value=0)
    empty = [int(c) for c in left.index if left[c] == 0]
    if not empty and manifest.get("count", 0) > 0:
        return
    writer.forget(np.unique(lost.index.to_numpy() // info["chunk_size"]), info)
    first = skipped[0]
    example = f"e.g. {first.get('source', '?')}: {first.get('error', '?')}"
    if manifest.get("count", 0) == 0:
        raise UserError(f"{root}: no usable image: all {len(plan)} selected images are unreadable ({example}); "
                        f"fix or replace them, then rerun")
    c = empty[0]
    bad = next(s for s in skipped if s["source"] in set(lost["source"][lost["class_id"] == c]))
    more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
    raise UserError(f"{root}: class {index.name(c)} ({index.synset(c)}) has no usable image{more}: its "
                    f"{int(planned[c])} selected images are unreadable (e.g. {bad['source']}: {bad['error']}); fix or "
                    f"replace them, or leave the class out with data.classes")


def warn_skipped(skipped: list[dict]) -> None:
    """One warning for the images the source could not read (their list is in the store's manifest
    and on the report's overview page)."""
    if skipped:
        first = skipped[0]
        log.warning("[extract] skipped %d unreadable image%s (data.on_bad_image = skip), e.g. %s (%s); "
                    "listed on the report's overview page", len(skipped), "" if len(skipped) == 1 else "s",
                    first.get("source", "?"), first.get("error", "?"))


def _extract_chunk(net, images, rows: pd.DataFrame, layers, full_layer, full_shape, dims, reducer: Reducer, device,
                   batch_size: int, thumb_size: int, bar: Progress, encoders: Mapping[str, torch.nn.Module]) -> dict:
    """One chunk on the device: features, thumbnails, and the subsets' full activations and reconstructions.

    Every batch captures the same blocks (the feature layers and the masking layer, unreduced) so
    that a compiled network runs one graph; the subsets are picked on the device by index (no
    host sync), and the reconstructions, the model's full output, run once per chunk on the
    subset's images in full batches. Results stay on the device until the chunk is gathered."""
    feats: dict[str, list] = {l: [] for l in [*layers, *encoders]}
    logits: dict[str, list] = {name: [] for name, e in encoders.items() if e.num_classes}
    thumbs, full = [], []
    ids = to_device(torch.from_numpy(rows["class_id"].to_numpy(np.int64, copy=True)), device)
    full_rows = np.flatnonzero(rows["has_full"].to_numpy())
    recon_rows = np.flatnonzero(rows["has_recon"].to_numpy())
    need = list(dict.fromkeys(layers + [full_layer]))
    cap = ActivationCapture(net, need, reduce=None, early_exit=True, float32=False)
    for b in range(0, len(rows), batch_size):
        u = to_device(images[b:b + batch_size], device)
        encode(encoders, u, feats, logits)
        x = u.float() / 127.5 - 1
        y = F.one_hot(ids[b:b + batch_size], net.label_dim).float()
        cap.run(SIGMA_MAX * x, torch.full((len(x),), SIGMA_MAX, device=device), y)
        for l in layers:
            feats[l].append(reducer(l, cap.activations[l]))
        picked = full_rows[(full_rows >= b) & (full_rows < b + len(x))] - b
        if len(picked):
            full.append(cap.activations[full_layer].index_select(0, to_device(torch.from_numpy(picked), device)).float())
        thumbs.append(thumbnails(x, thumb_size))
        bar.update(len(x))
    recon = []
    for b in range(0, len(recon_rows), batch_size):
        sel = recon_rows[b:b + batch_size]
        x = to_device(images[torch.from_numpy(sel)] if torch.is_tensor(images) else images[sel], device).float() / 127.5 - 1
        y = F.one_hot(ids.index_select(0, to_device(torch.from_numpy(sel), device)), net.label_dim).float()
        recon.append(thumbnails(net(SIGMA_MAX * x, torch.full((len(x),), SIGMA_MAX, device=device), y), x.shape[-1]))
    return {"features": {l: gather(v, (dims[l],), torch.float32 if l in encoders else reducer.dtype)
                         for l, v in feats.items()},
            "logits": {name: gather(v, (encoders[name].num_classes,), torch.float32) for name, v in logits.items()},
            "thumbs": gather(thumbs, (min(thumb_size, net.img_resolution),) * 2 + (3,), torch.uint8),
            "recon": gather(recon, (net.img_resolution, net.img_resolution, 3), torch.uint8),
            "full": gather(full, tuple(full_shape), torch.float32)}


def _networks(ctx: Context) -> list:
    """The networks that extract: the reference encoder's checksum, architecture and compute identity, and the
    standard feature spaces' encoders."""
    return [ctx.generator.key_identity(), ctx.encoder_identities()]


STAGE = Stage(
    "extract", run, "Extract real-image activations into the store.", writes="stores/real/",
    reads=("data", "features", "run.seed", "atlas.mask_layer", "report.thumb_size"),
    # Batch size and loader threads change no result; features.generated is the generated sets' (generate reads
    # it); features.encoder is the network `_networks` identifies.
    ignores=("data.workers", "features.batch_size", "features.generated", "features.encoder"),
    inputs=_networks, content=lambda ctx: ctx.real_images, outputs=lambda ctx: [ctx.workdir.store_path("real")],
    uses_model=True, sharded=True)
