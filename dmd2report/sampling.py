"""One-step DMD2 sampling, G(80 z, 80, c), under every label-conditioning mode."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

import numpy as np
import torch

from .config import VARIANTS as MODES  # noqa: F401  the conditioning modes, declared with the config keys
from .errors import UserError

SIGMA_MAX = 80.0  # DMD2's conditioning noise level: x = 80 * z, sigma = 80


def condition_vectors(mode: str, num_classes: int, classes: Sequence[int] | None = None,
                      weights: np.ndarray | Sequence[Sequence[float]] | None = None, count: int | None = None) -> torch.Tensor:
    """Label vectors (N, K) for a conditioning mode.

    class: one-hot of `classes`; uniform: 1/K everywhere; zero: all zeros; blend: the rows
    of `weights` (N, K) normalised to sum 1 (e.g. the mean of neighbours' one-hots).
    `mode="vector"` takes `weights` rows as given; their length must be K.
    """
    if mode == "class":
        if classes is None:
            raise UserError("conditioning 'class' needs class ids")
        ids = torch.as_tensor(np.asarray(classes), dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            raise UserError(f"class id out of range 0..{num_classes - 1}: {ids[(ids < 0) | (ids >= num_classes)][0].item()}")
        return torch.nn.functional.one_hot(ids, num_classes).float()
    n = count if count is not None else (len(classes) if classes is not None else None)
    if mode == "uniform":
        return torch.full((n, num_classes), 1.0 / num_classes)
    if mode == "zero":
        return torch.zeros((n, num_classes))
    if mode in ("blend", "vector"):
        if weights is None:
            raise UserError(f"conditioning {mode!r} needs label weights")
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32))  # no copy of float32 rows
        if w.ndim <= 1:  # one vector: one row
            w = w.reshape(1, -1)
        if w.ndim != 2 or w.shape[-1] != num_classes:
            raise UserError(f"label vector has length {w.shape[-1]}; the model takes {num_classes} classes")
        # Block by block: one mask of the whole matrix is an (n, K) temporary (~0.1 s at 50,000 x 1,000).
        if not all(torch.isfinite(w[a:a + 4096]).all() for a in range(0, len(w), 4096)):
            raise UserError("label vector contains NaN or infinity")
        if mode == "blend":
            s = w.sum(dim=1, keepdim=True)
            if (s <= 0).any():
                raise UserError("blend weights must have a positive sum")
            w = w / s
        return w.expand(n, -1).clone() if n is not None and w.shape[0] == 1 else w
    raise UserError(f"unknown conditioning mode {mode!r}; valid: class, uniform, zero, blend, or a vector of length {num_classes}")


_ROWS_PER_WORKER = 64  # fewer rows per thread than this are not worth a thread's start


def sample_noise(seed: int, indices: Sequence[int] | np.ndarray, shape: tuple[int, int, int],
                 workers: int | None = None, pin_memory: bool = False) -> torch.Tensor:
    """Standard normal noise (N, C, H, W); row i depends only on (seed, indices[i]).

    So sample i is the same image whatever the batch size, the order of batches or the
    number of processes sharing the work. Rows are drawn by up to `workers` threads (default
    min(8, CPUs)), each with its own generator: torch.randn releases the GIL, and a 4096-row
    chunk of 3x64x64 takes ~0.2 s on one core, on the critical path before a stage's first chunk.
    `pin_memory` draws straight into page-locked memory (for a CUDA copy), not into a copy made after.
    """
    indices = [int(i) for i in indices]
    out = torch.empty((len(indices), *shape), pin_memory=pin_memory)
    workers = min(workers or min(8, os.cpu_count() or 1), len(indices) // _ROWS_PER_WORKER)
    if workers <= 1:
        _noise_rows(seed, indices, shape, out)
        return out
    bounds = np.linspace(0, len(indices), workers + 1).astype(int)
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="noise") as pool:
        jobs = [pool.submit(_noise_rows, seed, indices[a:b], shape, out[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
    return out


def _noise_rows(seed: int, indices: list[int], shape: tuple[int, int, int], out: torch.Tensor) -> None:
    g = torch.Generator()
    for row, i in enumerate(indices):
        # SeedSequence mixes (seed, i) so that neighbouring seeds give unrelated streams.
        g.manual_seed(int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint64)[0] >> 1))
        torch.randn(shape, generator=g, out=out[row])  # in place: no temporary per row


@torch.no_grad()
def generate(net, z: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
    """DMD2's one-step sample: the denoiser at sigma=80 applied to 80 z. Output in [-1, 1] (float)."""
    sigma = torch.full((z.shape[0],), SIGMA_MAX, device=z.device)
    return net(SIGMA_MAX * z, sigma, class_labels.to(z.device))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
