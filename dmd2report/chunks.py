"""What the model stages share to stream chunks through the device, alone or under torchrun.

A stage cuts its samples into chunks (the store's unit of atomic writes and resume). Chunk i
belongs to rank i % world_size; each chunk's inputs load on a thread one chunk ahead (`prefetch`),
its results stay on the device until the chunk ends and then travel to pinned host memory without
blocking (`gather`), and the store's writer thread waits for them there. Rank 0 prepares and
finishes the store around barriers (`finish_store`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os

import numpy as np
import torch

from .console import Progress, process_rank  # noqa: F401  (the stages import them from here)
from .files import save_json

log = logging.getLogger(__name__)


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


def finish_store(writer, index, n_chunks: int, info: dict, rank: int, world: int) -> dict | None:
    """After every rank wrote its chunks: rank 0 writes the class index, then the manifest (last),
    and returns the manifest (None on the other ranks)."""
    barrier(world)
    manifest = None
    if rank == 0:
        save_json(writer.path / "class_index.json", index.to_mapping())
        manifest = writer.finalize(n_chunks, info)
    barrier(world)
    return manifest


# ---------------------------------------------------------------------------------------------
# Streaming chunks through the device.

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
        # Whether every value is finite, reduced on the device and copied with the values: the
        # store's writer checks it without searching the rows on the host (store.first_non_finite).
        self.finite = None
        if t.is_floating_point():
            self.finite = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.finite.copy_(torch.isfinite(t).all(), non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()

    def numpy(self) -> np.ndarray:
        self.copied.synchronize()
        return self.host.numpy()

    def all_finite(self) -> bool | None:
        """Whether every value is finite (None: not a floating-point array); waits for the copy."""
        self.copied.synchronize()
        return None if self.finite is None else bool(self.finite)


def gather(parts: list[torch.Tensor], row_shape: tuple, dtype: torch.dtype) -> np.ndarray | HostCopy:
    """Concatenate a chunk's device tensors and copy them to the host once (an empty chunk too).
    From a GPU the copy is asynchronous: a HostCopy, which the store's writer waits for."""
    if not parts:
        return np.zeros((0, *row_shape), torch.empty(0, dtype=dtype).numpy().dtype)
    t = torch.cat(parts)
    return HostCopy(t) if t.is_cuda else t.cpu().numpy()


def encode(encoders, images: torch.Tensor, feats: dict[str, list], logits: dict[str, list]) -> None:
    """Feed uint8 images (n, 3, R, R) on the device to every standard-space encoder (encoders.load_encoder): each
    one's features into feats[name], its logits (when it has a classifier) into logits[name]."""
    for name, encoder in encoders.items():
        f, z = encoder(images)
        feats[name].append(f)
        if name in logits:
            logits[name].append(z)


def versions() -> dict:
    """Package versions recorded in every store's manifest."""
    import importlib.metadata as md

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "unknown"
    return {"dmd2report": v("dmd2report"), "torch": torch.__version__.split("+")[0], "numpy": np.__version__}
