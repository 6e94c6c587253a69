"""Protocol-exact statistics of the standard feature spaces: Frechet distance, Inception Score, reference files.

`frechet_distance` is pytorch-fid's `calculate_frechet_distance` (float64; `scipy.linalg.sqrtm` of the product of
the covariances; when that is not finite, eps=1e-6 added to both diagonals; a complex result accepted only when its
diagonal's imaginary part is within 1e-3 of zero, and its real part taken) so an FID here is the number pytorch-fid
prints for the same statistics. EDM's fid.py uses the same formula without the eps retry (and takes the real part of
the whole trace). dmd2report's own `metrics.frechet_from_stats`, used in the generator's activation spaces, is a
different computation of the same quantity: the trace of sqrt(A^1/2 B A^1/2) from a symmetric eigendecomposition,
clipped at zero, faster and stable for rank-deficient covariances but not bit-comparable with published FIDs.
`inception_score` is torch-fidelity's ISC with its defaults (10 splits, the samples shuffled by
`np.random.RandomState(2020)` first, float64). Reference statistics files are `.npz` with `mu` (D,) and `sigma`
(D, D) as EDM's and OpenAI's ImageNet reference batches ship them (other arrays in the file are ignored), read with
`allow_pickle=False`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import scipy.linalg

from ..errors import UserError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (n-1) of (N, D) features in float64, as pytorch-fid and EDM compute them."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"feature statistics need (N >= 2, D) features, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), exactly as pytorch-fid computes it: float64,
    `scipy.linalg.sqrtm` of the (non-symmetric) product, `eps` on both diagonals only when that is not finite; not
    clipped at zero. (`metrics.frechet_from_stats` symmetrises through eigh instead; EDM's fid.py has no eps retry.)"""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():   # a near-singular product: pytorch-fid retries with eps on the diagonals
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):        # rounding gives a small imaginary part; a large one means bad statistics
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: sqrt of the covariance product has an imaginary component "
                             f"{np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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
