"""Protocol-exact statistics of the standard feature spaces: the Inception Score and reference statistics files.

The Frechet distance of a standard space is the engine's (`metric_defs.frechet_from_stats` over `mean_and_cov`: float64,
unbiased covariances), which equals pytorch-fid's `calculate_frechet_distance` on the same statistics to rounding
(tests/test_encoder_inception.py: 1e-12 relative with full-rank covariances, 1e-7 rank-deficient, where pytorch-fid's
`sqrtm` of the product is the less stable of the two). `inception_score` is torch-fidelity's ISC with its defaults (10
splits, the samples shuffled by `np.random.RandomState(2020)` first, float64). Reference statistics files are `.npz`
with `mu` (D,) and `sigma` (D, D) as EDM's and OpenAI's ImageNet reference batches ship them (other arrays in the file
are ignored), read with `allow_pickle=False`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError


def inception_score(logits, splits: int = 10, shuffle: bool = True, rng_seed: int = 2020) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) || p(y))), each split's p(y) its own mean, as torch-fidelity's
    ISC: logits in float64, rows shuffled by RandomState(rng_seed) unless `shuffle` is False, split i the rows
    i*N//splits .. (i+1)*N//splits, std with ddof 0. Feed it the bias-free logits (`FIDInceptionV3`'s)."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or len(x) < splits:
        raise ValueError(f"Inception Score needs (N >= splits={splits}, C) logits, got shape {x.shape}")
    n = len(x)
    if shuffle:
        x = x[np.random.RandomState(rng_seed).permutation(n)]
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        scores.append(float(np.exp((p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))

#----------------------------------------------------------------------------
# Reference statistics files: .npz with mu and sigma, never unpickled.

def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` (D,) and `sigma` (D, D) in float64 to `path` (exactly that name: np.savez would append .npz)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_shapes(mu, sigma, Path(path))
    with open(path, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma)


def load_stats(path: Path, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 from a reference statistics file; `dim`, when given, the feature dimension they must
    have. A one-line UserError starting with the path for a missing or unreadable file, a missing key, wrong or
    mismatched shapes, NaN or infinity."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such reference statistics file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise UserError(f"{path}: a single array, not reference statistics (an .npz with mu and sigma)")
        with npz:
            missing = [k for k in ("mu", "sigma") if k not in npz.files]
            if missing:
                raise UserError(f"{path}: reference statistics lack {missing[0]!r} (the file holds "
                                f"{', '.join(npz.files[:6]) or 'nothing'}); expected an .npz with mu and sigma")
            mu, sigma = npz["mu"], npz["sigma"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        lines = str(e).strip().splitlines()
        raise UserError(f"{path}: cannot read reference statistics ({lines[0][:160] if lines else type(e).__name__}); "
                        f"expected an .npz of plain arrays mu and sigma") from None
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise UserError(f"{path}: mu and sigma must be numeric arrays (found {mu.dtype} and {sigma.dtype})")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    _check_shapes(mu, sigma, path)
    if dim is not None and len(mu) != dim:
        raise UserError(f"{path}: reference statistics have dimension {len(mu)}; this feature space has {dim}")
    for name, a in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(a).all():
            raise UserError(f"{path}: {name} holds NaN or infinity")
    return mu, sigma


def _check_shapes(mu: np.ndarray, sigma: np.ndarray, path: Path) -> None:
    if mu.ndim != 1 or sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise UserError(f"{path}: mu must be (D,) and sigma (D, D); found {list(mu.shape)} and {list(sigma.shape)}")
    if sigma.shape[0] != len(mu):
        raise UserError(f"{path}: mu has dimension {len(mu)} but sigma is {list(sigma.shape)}")
