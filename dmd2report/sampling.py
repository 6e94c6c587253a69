"""DMD2 sampling: one step, G(80 z, 80, c), under every label-conditioning mode, and few steps.

A few-step schedule sigma_0 > sigma_1 > ... > sigma_{S-1} > 0 (default 80, 14, 1, 0.05) samples as DMD2's
few-step generators do:

    x_0 = sigma_0 z                      z = sample_noise(seed, i)            (the one-step sample's noise)
    D_s = G(x_s, sigma_s, c)             step s denoises at sigma_s
    x_{s+1} = D_s + sigma_{s+1} eps_s    eps_s = sample_noise(seed, (s + 1) * 2^32 + i)

so one step with sigma_0 = 80 is exactly the one-step sample G(80 z, 80, c), and every step's noise
depends only on (seed, sample, step): the paths do not depend on the batch size.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import VARIANTS as MODES  # noqa: F401  the conditioning modes, declared with the config keys
from .config import check_schedule
from .errors import UserError
from .layers import REDUCERS, ActivationCapture

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


def quantise(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] -> uint8 of the same layout, by EDM's rounding: how every image is stored.
    The one quantiser: thumbnails, stored reconstructions, re-encoding and image grids all use it."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 numpy."""
    return quantise(images).permute(0, 2, 3, 1).cpu().numpy()


def as_stored(images: torch.Tensor) -> torch.Tensor:
    """A generated image as a stored one reads back: quantised to uint8, then / 127.5 - 1."""
    return quantise(images).float().div_(127.5).sub_(1)


def reencode_labels(class_ids, vectors: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels a generated image is re-encoded with: the one-hot of the class it is shown as (as a real image gets
    its class), its generation label vector where it has none (class id -1: uniform, zero)."""
    ids = torch.as_tensor(np.asarray(class_ids, np.int64))
    return torch.where((ids >= 0)[:, None], F.one_hot(ids.clamp(min=0), num_classes).float(), vectors.float())


@torch.no_grad()
def encode_as_stored(net, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], capture_mode: str) -> dict:
    """{layer: activation} of generated images fed back as real images are extracted: quantised to uint8 as
    they are stored (`as_stored`), then G(80 x, 80, labels), stopping after the last captured layer. So
    generated and real features are the same function of an image (`features.generated = "reencode"`)."""
    sigma = torch.full((len(images),), SIGMA_MAX, device=images.device)
    cap = ActivationCapture(net, list(layers), reduce=capture_mode, early_exit=True)
    cap.run(SIGMA_MAX * as_stored(images), sigma, labels.to(images.device))
    return cap.activations


@torch.no_grad()
def reencode_steps(net, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], reducer,
                   batch_size: int = 64) -> dict[str, np.ndarray]:
    """`encode_as_stored` of every step's image: images (S, n, C, H, W) in [-1, 1] (`sample_paths`' or
    `noised_real`'s), labels (n, K), the same for every step. Returns {layer: (S, n, D) float32}, reduced by
    `reducer` (a `features.Reducer`)."""
    device = next(net.parameters()).device
    S, n = images.shape[:2]
    flat, lab = images.reshape(S * n, *images.shape[2:]), labels.repeat(S, 1)
    feats = {l: [] for l in layers}
    for b in range(0, S * n, batch_size):
        acts = encode_as_stored(net, flat[b:b + batch_size].to(device), lab[b:b + batch_size], layers,
                                reducer.capture_mode(False))
        for l in layers:
            feats[l].append(reducer(l, acts[l]).float().cpu())
    return {l: torch.cat(v).reshape(S, n, -1).numpy() if v else np.zeros((S, n, 0), np.float32)
            for l, v in feats.items()}


def thumbnails(x: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, R, R) in [-1, 1] -> uint8 (n, T, T, 3), area-averaged down (never enlarged)."""
    if size < x.shape[-1]:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="area")
    return quantise(x).permute(0, 2, 3, 1)


def sample_plan(real_classes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and seed indices of n class-conditioned samples: the real set's classes in turn, so every
    class gets the same number of samples and any first m of them span the classes. The generate stage's
    sets and the trajectory stage's paths both take their samples from this one plan (a path's first step
    is the class-conditioned set's sample of the same row)."""
    classes = np.unique(real_classes)
    return classes[np.arange(n) % len(classes)].astype(np.int64), np.arange(n, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Few-step sampling.

RENOISE_STRIDE = 1 << 32            # step s >= 1 draws noise index s * 2^32 + i: disjoint from every other use
REAL_NOISE_OFFSET = 1 << 40         # real reference j draws noise index 2^40 + its real sample id


def path_noise(seed: int, seed_indices: Sequence[int] | np.ndarray, n_steps: int,
               shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """[z, eps_0, ..., eps_{S-2}]: the initial noise (that of the one-step sample) and each re-noising."""
    idx = np.asarray(seed_indices, np.int64).reshape(-1)
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
    {layer: (S, N, D) float32} features (reduced by `reducer`, a `features.Reducer`, else the
    spatial mean). Row i depends only on (seed, seed_indices[i], labels[i]), not on the batch.
    """
    sigmas = check_schedule(sigmas, "sigmas")
    device = next(net.parameters()).device
    seed_indices = np.asarray(seed_indices, np.int64).reshape(-1)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    reduce = reducer or (lambda l, a: REDUCERS["mean"](a) if a.ndim == 4 else a)
    images, feats = [], {l: [] for l in layers}
    cap = ActivationCapture(net, list(layers), reduce=reducer.capture_mode(False) if reducer else "full")
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
    device = next(net.parameters()).device
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    out_images, feats = [], {l: [] for l in layers}
    cap = ActivationCapture(net, list(layers), reduce=reducer.capture_mode(False))
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
