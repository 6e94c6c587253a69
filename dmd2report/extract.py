"""The extract stage: real images -> reduced UNet features, thumbnails and reconstructions in a store.

A real image x (uint8 / 127.5 - 1, in [-1, 1]) is fed as DMD2 feeds noise, G(80 x, 80, one_hot(label)),
and the chosen layers are captured with an early exit after the last of them (nothing past
`midblock` is computed). Features are reduced on the device before the copy to the host:

- `mean`: the per-channel spatial mean (C values per layer);
- `pca:K`: a PCA fitted on the device to the first M real samples' flattened activations
  (a randomized SVD with a fixed seed, since D is 49,152 for 768x8x8), saved with the real
  store and applied unchanged to generated samples;
- `full`: the flattened activations (C*H*W values per layer; the size is printed first).

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

import collections
import concurrent.futures
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import UserError
from .layers import REDUCERS, ActivationCapture, layer_shapes, resolve_layer
from .runtime import auto_batch_size, stage_samples
from .sampling import SIGMA_MAX
from .store import BackgroundWriter, StoreWriter, load_pca, save_json, save_pca

FULL_PER_CLASS = 8   # real samples per class whose masking-layer activations are kept in full
RECON_PER_CLASS = 4  # real samples per class whose reconstruction is kept
PCA_SEED = 0


def store_dir(config, name: str) -> Path:
    return Path(config.run.workdir) / "stores" / name


def _option(config, section: str, key: str, default):
    """A config key that the Config may not declare yet (features.full_per_class, ...)."""
    return getattr(getattr(config, section), key, default)


# ---------------------------------------------------------------------------------------------
# torch.distributed.

def dist_rank_world() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes (RANK, WORLD_SIZE) if needed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def finish_store(writer, path: Path, index, n_chunks: int, info: dict, rank: int, world: int) -> None:
    """After every rank wrote its chunks: rank 0 writes the class index, then the manifest (last)."""
    barrier(world)
    if rank == 0:
        save_json(path / "class_index.json", index.to_mapping())
        writer.finalize(n_chunks, info)
    barrier(world)


# ---------------------------------------------------------------------------------------------
# Feature reduction on the device.

def parse_reduce(reduce: str) -> tuple[str, int]:
    if reduce in ("full", "mean"):
        return reduce, 0
    if reduce.startswith("pca:") and reduce[4:].isdigit() and int(reduce[4:]) > 0:
        return "pca", int(reduce[4:])
    raise UserError(f"features.reduce: {reduce!r} is not full, mean or pca:K")


_SHAPES: dict[str, dict] = {}


def block_shapes(net) -> dict[str, tuple[int, int, int]]:
    """layer_shapes(net), computed once per architecture (it builds a copy on the meta device)."""
    key = json.dumps(net.init_kwargs, sort_keys=True, default=str)
    if key not in _SHAPES:
        _SHAPES[key] = layer_shapes(net)
    return _SHAPES[key]


def feature_dims(net, layers: list[str], reduce: str) -> dict[str, int]:
    mode, k = parse_reduce(reduce)
    shapes = block_shapes(net)
    dims = {}
    for layer in layers:
        c, h, w = shapes[resolve_layer(net, layer)]
        dims[layer] = {"full": c * h * w, "mean": c, "pca": k}[mode]
    return dims


class Reducer:
    """Turns captured activations into stored features, on the device."""

    def __init__(self, reduce: str, dtype: str, pca: dict | None = None, device=None):
        self.mode, self.k = parse_reduce(reduce)
        self.dtype = getattr(torch, dtype)
        self.pca = {l: {w: t.to(device) for w, t in d.items()} for l, d in (pca or {}).items()}

    def capture_mode(self, need_full: bool) -> str:
        """What the capture itself reduces to: the spatial mean, when nothing needs the full activations."""
        return "mean" if self.mode == "mean" and not need_full else "full"

    def __call__(self, layer: str, a: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            a = a if a.ndim == 2 else REDUCERS["mean"](a)
        elif self.mode == "full":
            a = a.flatten(1)
        else:
            p = self.pca[layer]
            a = (a.flatten(1).float() - p["mean"]) @ p["components"].T
        return a.to(self.dtype)


def randomized_pca(x: torch.Tensor, k: int, oversample: int = 10, iters: int = 4, seed: int = PCA_SEED) -> dict:
    """Top-k principal axes of the rows of x (n, D), by a randomized range finder (Halko et al. 2011).

    Deterministic: a seeded Gaussian test matrix, and each axis's sign fixed so that its largest
    coordinate is positive.
    """
    n, d = x.shape
    if not 0 < k <= min(n, d):
        raise UserError(f"features.reduce pca:{k} needs at most min(samples, dimensions) = {min(n, d)} components "
                        f"(fitted on {n} samples of dimension {d}; raise features.pca_fit_samples or lower K)")
    mean = x.mean(0)
    xc = x - mean
    g = torch.Generator(device=x.device).manual_seed(seed)
    q = torch.linalg.qr(xc @ torch.randn(d, min(k + oversample, n, d), generator=g, device=x.device, dtype=x.dtype))[0]
    for _ in range(iters):  # power iterations sharpen the spectrum's decay
        q = torch.linalg.qr(xc.T @ q)[0]
        q = torch.linalg.qr(xc @ q)[0]
    _, s, vh = torch.linalg.svd(q.T @ xc, full_matrices=False)
    comps = vh[:k]
    flip = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * flip
    return {"mean": mean.contiguous(), "components": comps.contiguous(),
            "explained_variance": (s[:k] ** 2 / max(n - 1, 1)).contiguous()}


# ---------------------------------------------------------------------------------------------
# Shared chunk machinery (also used by generate.py).

def prefetch(load, items, depth: int = 1):
    """Yield (item, load(item)) with up to `depth` loads running ahead on a thread."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load") as pool:
        pending = collections.deque()
        items = iter(items)
        for item in items:
            pending.append((item, pool.submit(load, item)))
            if len(pending) > depth:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(items, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            yield item, fut.result()


def to_device(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(a)
    if device.type == "cuda":
        t = t.pin_memory() if not t.is_pinned() else t
        return t.to(device, non_blocking=True)
    return t.to(device)


def thumbnails(x: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, R, R) in [-1, 1] -> uint8 (n, T, T, 3), area-averaged down (never enlarged)."""
    if size < x.shape[-1]:
        x = F.interpolate(x.float(), size=(size, size), mode="area")
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def host(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def versions() -> dict:
    import importlib.metadata as md

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "unknown"
    return {"dmd2report": v("dmd2report"), "torch": torch.__version__.split("+")[0], "numpy": np.__version__}


def compute_key(net, device: torch.device) -> dict:
    """What the numbers depend on besides the weights: the device type and the UNet's dtype."""
    return {"device": device.type, "unet_dtype": str(net.unet_dtype(device)).replace("torch.", "")}


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def print_full_size(n: int, dims: dict[str, int], dtype: str, enabled: bool) -> None:
    size = n * sum(dims.values()) * np.dtype(dtype).itemsize
    if enabled:
        print(f"features: full activations, {n} samples x {sum(dims.values())} values "
              f"({dtype}) = {size / 2**30:.2f} GiB to store", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The extract stage.

def _plan(source, config) -> pd.DataFrame:
    """The source's samples with their class names and the per-class subsets that keep more."""
    plan = source.samples.copy()
    rank = plan.groupby("class_id").cumcount().to_numpy()
    plan["has_full"] = rank < int(_option(config, "features", "full_per_class", FULL_PER_CLASS))
    plan["has_recon"] = rank < int(_option(config, "features", "recon_per_class", RECON_PER_CLASS))
    return plan


def _fit_pca(net, source, plan, config, device, k: int) -> dict:
    """PCA per layer on the flattened activations of the first M real samples, on the device."""
    layers = list(config.features.layers)
    m = min(config.features.pca_fit_samples, len(plan))
    rows: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    taken, start, bs = 0, 0, auto_batch_size(device, config.features.batch_size)
    with ActivationCapture(net, layers, reduce="full", early_exit=True) as cap:
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
def extract_real(config, net, model_checksum: str, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Extract the real set into `<workdir>/stores/real`; returns the store path. Resumes an interrupted run."""
    from .sources import open_source

    device = next(net.parameters()).device
    rank, world = dist_rank_world()
    show = progress and rank == 0
    f = config.features
    layers = list(f.layers)
    mode, k = parse_reduce(f.reduce)
    full_layer = _option(config, "atlas", "mask_layer", "midblock")
    for name in layers + [full_layer]:
        resolve_layer(net, name)

    # Rank 0 first: the demo data may have to be written.
    if rank != 0:
        barrier(world)
    source = open_source(config, net.img_resolution)
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
            "full_per_class": int(_option(config, "features", "full_per_class", FULL_PER_CLASS)),
            "recon_per_class": int(_option(config, "features", "recon_per_class", RECON_PER_CLASS)),
            "compute": compute_key(net, device),
        }
        path = store_dir(config, "real")
        writer = StoreWriter(path, key, "real")
        dims = feature_dims(net, layers, f.reduce)
        info = {"model_checksum": model_checksum, "versions": versions(), "layers": layers, "feature_dims": dims,
                "reduction": f.reduce, "dtype": f.dtype, "full_layer": full_layer, "chunk_size": cs,
                "num_classes": net.label_dim, "resolution": net.img_resolution, "thumb_size": config.report.thumb_size,
                "planned": len(plan)}
        writer.check(overwrite)  # every rank: a refusal is raised everywhere, not only on rank 0
        barrier(world)  # every rank has looked before rank 0 changes anything
        if rank == 0:
            writer.prepare(overwrite, info)
            if mode == "full":
                print_full_size(len(plan), dims, f.dtype, show)
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
                                         device, auto_batch_size(device, config.features.batch_size), config.report.thumb_size, bar)
                    # A real sample's label vector is the one-hot of its class: one non-zero.
                    idx = [np.array([c], np.int32) for c in rows["class_id"]]
                    w = [np.ones(1, np.float32)] * len(rows)
                    meta = pd.DataFrame({
                        "sample_id": rows["sample_id"].to_numpy(np.int64), "source": rows["source"].astype(str),
                        "seed": np.full(len(rows), -1, np.int64), "seed_index": np.full(len(rows), -1, np.int64),
                        "class_id": rows["class_id"].to_numpy(np.int64),
                        "synset": [index.synset(int(c)) for c in rows["class_id"]],
                        "name": [index.name(int(c)) for c in rows["class_id"]],
                        "variant": "real", "label_index": idx, "label_weight": w,
                        "has_recon": rows["has_recon"].to_numpy(bool), "has_full": rows["has_full"].to_numpy(bool)})
                    bg.submit(i, out["features"], meta, out["thumbs"], recon=out["recon"],
                              full={full_layer: out["full"]}, skipped=loaded.skipped)
        finally:
            bar.close()
            stage_samples(net, 0)
        finish_store(writer, path, index, n_chunks, info, rank, world)
    return path


def _extract_chunk(net, images, rows: pd.DataFrame, layers, full_layer, full_shape, dims, reducer: Reducer, device,
                   batch_size: int, thumb_size: int, bar: Progress) -> dict:
    """One chunk on the device: features, thumbnails, and the subsets' full activations and reconstructions.

    Every batch captures the same blocks (the feature layers and the masking layer, unreduced) so
    that a compiled network runs one graph; the subsets are picked on the device by index (no
    host sync), and the reconstructions, the model's full output, run once per chunk on the
    subset's images in full batches. Results stay on the device until the chunk is gathered."""
    feats: dict[str, list] = {l: [] for l in layers}
    thumbs, full = [], []
    ids = to_device(torch.from_numpy(rows["class_id"].to_numpy(np.int64, copy=True)), device)
    full_rows = np.flatnonzero(rows["has_full"].to_numpy())
    recon_rows = np.flatnonzero(rows["has_recon"].to_numpy())
    need = list(dict.fromkeys(layers + [full_layer]))
    cap = ActivationCapture(net, need, reduce=None, early_exit=True, float32=False)
    for b in range(0, len(rows), batch_size):
        x = to_device(images[b:b + batch_size], device).float() / 127.5 - 1
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
    return {"features": {l: gather(v, (dims[l],), reducer.dtype) for l, v in feats.items()},
            "thumbs": gather(thumbs, (min(thumb_size, net.img_resolution),) * 2 + (3,), torch.uint8),
            "recon": gather(recon, (net.img_resolution, net.img_resolution, 3), torch.uint8),
            "full": gather(full, tuple(full_shape), torch.float32)}


class HostCopy:
    """A device tensor's copy into pinned host memory, under way.

    The chunk loop hands these to the store's writer thread instead of numpy arrays, so that it
    never waits for the GPU at a chunk's end: it queues the next chunk's batches while this chunk's
    results travel, and the writer waits (`numpy`). The device memory may be reused at once: later
    kernels on the same stream run after the copy.
    """

    def __init__(self, t: torch.Tensor):
        self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self.host.copy_(t, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()

    def numpy(self) -> np.ndarray:
        self.copied.synchronize()
        return self.host.numpy()


def gather(parts: list[torch.Tensor], row_shape: tuple, dtype: torch.dtype) -> np.ndarray | HostCopy:
    """Concatenate a chunk's device tensors and copy them to the host once (an empty chunk too).
    From a GPU the copy is asynchronous: a HostCopy, which the store's writer waits for."""
    if not parts:
        return np.zeros((0, *row_shape), torch.empty(0, dtype=dtype).numpy().dtype)
    t = torch.cat(parts)
    return HostCopy(t) if t.is_cuda else host(t)
