"""Reducing captured activations to stored features, on the device.

- `mean`: the per-channel spatial mean (C values per layer);
- `pca:K`: a PCA fitted on the device to the first M real samples' flattened activations
  (a randomized SVD with a fixed seed, since D is 49,152 for 768x8x8), saved with the real
  store and applied unchanged to generated samples;
- `full`: the flattened activations (C*H*W values per layer).
"""

from __future__ import annotations

import json

import torch

from .errors import UserError
from .layers import REDUCERS, layer_shapes, resolve_layer

PCA_SEED = 0


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
