"""Exact nearest-neighbour search and radius tests by chunked matrix products (torch, CPU or CUDA).

One code path for every device. Squared distances of a block of queries against a block of base
points come from ||a||^2 + ||b||^2 - 2 a.b in float32 (one `addmm`), clamped at 0. The queries (and,
for huge bases, the base) are cut into blocks so that one block's distance matrix and its temporaries
stay under `max_block_bytes`: a 50k x 50k problem never holds a 50k x 50k matrix.

Precision. Both sets are first shifted by the mean of the base (distances are translation invariant;
the shift keeps the norms, and so the cancellation error of the product form, small). Then:
  - `knn` selects neighbours on the product-form distances, and recomputes the returned distances
    directly as sqrt(sum((a - b)^2)) in float32 from the unshifted inputs. Returned distances are
    therefore accurate to float32 rounding; only the choice among candidates whose distances differ
    by less than the product-form error (~D * 2^-23 * (||a||^2 + ||b||^2) on the shifted data) may
    differ from exact arithmetic. Among exactly equal distances, which index is returned is unspecified.
  - `within_radius` decides `d(a, b) <= r` on the product form where it is clear by more than that
    error bound, and recomputes every pair inside the band directly. The decision is thus exact for
    the float32 direct distance; in particular an exact copy of a point lies at distance 0 from it,
    and a radius equal to a distance (the tie) counts as inside (`<=`).
TF32 matrix products are switched off for the duration of a call, whatever the global setting.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from .device import resolve_device

DEFAULT_BLOCK_BYTES = 256 * 2**20
_BYTES_PER_ENTRY = 16   # float32 distances + error band + a few boolean masks per block entry
_EPS32 = float(np.finfo(np.float32).eps)


def as_device(device) -> torch.device:
    """None or "auto" picks like --device auto; a torch.device passes through."""
    if isinstance(device, torch.device):
        return device
    return resolve_device("auto" if device is None else str(device))


def to_tensor(a, device: torch.device) -> torch.Tensor:
    """A 2-D float32 contiguous tensor on `device` (no copy when it already is one)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D array of features, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32).contiguous()


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _block_shape(n_query: int, n_base: int, max_block_bytes: int) -> tuple[int, int]:
    """(query rows, base columns) per block; whole base per block unless that leaves < 64 query rows."""
    entries = max(1, max_block_bytes // _BYTES_PER_ENTRY)
    cols = n_base if n_base * 64 <= entries else max(1, entries // 64)
    rows = max(1, min(n_query, entries // cols))
    return rows, cols


def direct_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise squared distance sum((a - b)^2) of two (P, D) tensors; one formula used everywhere
    so that the same pair of points always gets the same float32 value."""
    return (a - b).square().sum(dim=1)


class _Prepared:
    """Shifted copies and squared norms of queries and base, on one device."""

    def __init__(self, queries, base, device):
        self.device = as_device(device)
        self.q = to_tensor(queries, self.device)
        self.b = self.q if base is None else to_tensor(base, self.device)
        if self.q.shape[1] != self.b.shape[1]:
            raise ValueError(f"dimension mismatch: queries have {self.q.shape[1]}, base {self.b.shape[1]}")
        center = self.b.double().mean(dim=0).float() if len(self.b) else 0.0
        self.qc = self.q - center
        self.bc = self.qc if base is None else self.b - center
        self.qn = self.qc.square().sum(dim=1)
        self.bn = self.qn if base is None else self.bc.square().sum(dim=1)
        self.dim = self.q.shape[1]

    def sq_block(self, q0, q1, b0, b1) -> torch.Tensor:
        """Product-form squared distances of queries [q0, q1) to base [b0, b1), clamped at 0."""
        d2 = torch.addmm(self.bn[None, b0:b1], self.qc[q0:q1], self.bc[b0:b1].T, beta=1.0, alpha=-2.0)
        return d2.add_(self.qn[q0:q1, None]).clamp_(min=0.0)

    def band(self, q0, q1, b0, b1) -> torch.Tensor:
        """Bound on |product form - direct| for each pair of the block (generous: 4 D eps)."""
        c = 4.0 * self.dim * _EPS32
        return (self.qn[q0:q1, None] * c + self.bn[None, b0:b1] * c).add_(torch.finfo(torch.float32).tiny)


def _mask_self(d2: torch.Tensor, q0: int, b0: int) -> None:
    """Set d2[i, j] = inf where query q0 + i is base point b0 + j (same set)."""
    rows, cols = d2.shape
    lo, hi = max(q0, b0), min(q0 + rows, b0 + cols)
    if lo < hi:
        r = torch.arange(lo, hi, device=d2.device)
        d2[r - q0, r - b0] = float("inf")


def _distance_blocks(p: _Prepared, q0: int, q1: int, cols: int, exclude_self: bool):
    """Yield (b0, b1, squared distances of queries q0:q1 to base points b0:b1), each point itself
    at infinity with `exclude_self`."""
    n_b = len(p.b)
    for b0 in range(0, n_b, cols):
        b1 = min(b0 + cols, n_b)
        d2 = p.sq_block(q0, q1, b0, b1)
        if exclude_self:
            _mask_self(d2, q0, b0)
        yield b0, b1, d2


def _keep_nearest(best_d, best_i, top_d, top_i, k: int):
    """The k smallest of a row's running selection and a block's candidates (distances, indices)."""
    best_d, best_i = torch.cat([best_d, top_d], dim=1), torch.cat([best_i, top_i], dim=1)
    if best_d.shape[1] > k:
        best_d, j = torch.topk(best_d, k, dim=1, largest=False)
        best_i = best_i.gather(1, j)
    return best_d, best_i


def knn(queries, base=None, k: int = 1, *, exclude_self: bool = False, device=None,
        max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest base points of every query: (distances float32 (Q, k), indices int64 (Q, k)),
    nearest first, Euclidean distances.

    `base=None` searches the queries among themselves; `exclude_self` then skips each point itself
    (by index, so duplicates of a point still count as neighbours at distance 0): this is the
    "k-th nearest other point" of r_k.
    """
    with torch.no_grad(), _no_tf32():
        d, i = knn_tensors(_Prepared(queries, base, device), k, exclude_self, max_block_bytes)
    return d.cpu().numpy(), i.cpu().numpy()


def knn_tensors(p: _Prepared, k: int, exclude_self: bool, max_block_bytes: int):
    n_q, n_b = len(p.q), len(p.b)
    if exclude_self and p.b is not p.q:
        raise ValueError("exclude_self needs base=None (the queries searched among themselves)")
    available = n_b - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs at least {k} candidate neighbours, have {available}")
    rows, cols = _block_shape(n_q, n_b, max_block_bytes)
    out_d = torch.empty(n_q, k, device=p.device)
    out_i = torch.empty(n_q, k, dtype=torch.int64, device=p.device)
    for q0 in range(0, n_q, rows):
        q1 = min(q0 + rows, n_q)
        best_d = torch.full((q1 - q0, 0), float("inf"), device=p.device)
        best_i = torch.empty((q1 - q0, 0), dtype=torch.int64, device=p.device)
        for b0, b1, d2 in _distance_blocks(p, q0, q1, cols, exclude_self):
            top_d, top_j = torch.topk(d2, min(k, b1 - b0), dim=1, largest=False)
            best_d, best_i = _keep_nearest(best_d, best_i, top_d, top_j + b0, k)
        # Recompute the chosen distances directly, then order by them (ties keep the selection order).
        dq = p.q[q0:q1].repeat_interleave(k, dim=0)
        exact = direct_sq_dist(dq, p.b[best_i.reshape(-1)]).reshape(q1 - q0, k)
        exact, order = torch.sort(exact, dim=1, stable=True)
        out_d[q0:q1] = exact.sqrt()
        out_i[q0:q1] = best_i.gather(1, order)
    return out_d, out_i


@dataclass
class RadiusResult:
    """counts[q] (or counts[q, r] for several radii): how many base points are within the radius.
    nearest[q, :cap]: indices of the nearest of them (for the first radius), -1 where fewer."""
    counts: np.ndarray
    nearest: np.ndarray | None


def within_radius(queries, base, radii, *, radius_of: str = "base", cap: int = 0, exclude_self: bool = False,
                  device=None, max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> RadiusResult:
    """For each query q, count the base points b with d(q, b) <= r, where r is r(b) (`radius_of="base"`,
    radii shaped (n_base,) or (n_base, R)) or r(q) (`radius_of="query"`, radii (n_query,) or (n_query, R)).
    Several radius columns are tested on one distance block. With `cap` > 0, also return the indices
    of up to `cap` covering base points per query (first radius column), nearest first.

    precision/density: queries = generated, base = real, radii = r_k(real) of the base.
    recall: queries = real, base = generated, radii = r_k(generated) of the base.
    coverage: queries = real, base = generated, radii = r_k(real) of the queries.
    `base=None` tests the queries against themselves; `exclude_self` then skips each point itself.
    """
    with torch.no_grad(), _no_tf32():
        p = _Prepared(queries, base, device)
        r = torch.as_tensor(np.asarray(radii) if not isinstance(radii, torch.Tensor) else radii)
        counts, nearest = within_radius_tensors(p, r.to(p.device, torch.float32), radius_of, cap,
                                                exclude_self, max_block_bytes)
    return RadiusResult(counts.cpu().numpy(), None if nearest is None else nearest.cpu().numpy())


def within_radius_tensors(p: _Prepared, radii: torch.Tensor, radius_of: str, cap: int, exclude_self: bool,
                          max_block_bytes: int):
    n_q, n_b = len(p.q), len(p.b)
    if radius_of not in ("base", "query"):
        raise ValueError(f"radius_of must be 'base' or 'query', not {radius_of!r}")
    if exclude_self and p.b is not p.q:
        raise ValueError("exclude_self needs base=None (the queries tested against themselves)")
    squeeze = radii.ndim == 1
    radii = radii[:, None] if squeeze else radii
    expect = n_b if radius_of == "base" else n_q
    if radii.ndim != 2 or radii.shape[0] != expect:
        raise ValueError(f"radii of shape {tuple(radii.shape)}: expected ({expect},) or ({expect}, R)")
    n_r = radii.shape[1]
    r2_all = radii.square()
    rows, cols = _block_shape(n_q, n_b, max_block_bytes // 2)   # ~2x the temporaries of knn per entry
    counts = torch.zeros(n_q, n_r, dtype=torch.int64, device=p.device)
    nearest = torch.full((n_q, cap), -1, dtype=torch.int64, device=p.device) if cap > 0 else None
    for q0 in range(0, n_q, rows):
        q1 = min(q0 + rows, n_q)
        best_d = torch.empty((q1 - q0, 0), device=p.device)
        best_i = torch.empty((q1 - q0, 0), dtype=torch.int64, device=p.device)
        for b0, b1, d2 in _distance_blocks(p, q0, q1, cols, exclude_self):
            band = p.band(q0, q1, b0, b1)
            for c in range(n_r):
                if radius_of == "base":
                    rad, r2 = radii[b0:b1, c][None, :], r2_all[b0:b1, c][None, :]
                else:
                    rad, r2 = radii[q0:q1, c][:, None], r2_all[q0:q1, c][:, None]
                slack = band + r2 * (4 * _EPS32)
                inside = d2 <= r2 - slack
                unsure = (d2 <= r2 + slack) & ~inside
                pairs = unsure.nonzero()
                if len(pairs):
                    inside[pairs[:, 0], pairs[:, 1]] = _direct_within(p, pairs, q0, b0, rad, radius_of,
                                                                       max_block_bytes)
                counts[q0:q1, c] += inside.sum(dim=1)
                if cap > 0 and c == 0:
                    masked = d2.masked_fill(~inside, float("inf"))
                    top_d, top_j = torch.topk(masked, min(cap, b1 - b0), dim=1, largest=False)
                    best_d, best_i = _keep_nearest(best_d, best_i, top_d,
                                                   torch.where(top_d.isinf(), -1, top_j + b0), cap)
        if cap > 0:
            nearest[q0:q1, :best_i.shape[1]] = best_i
    return (counts[:, 0] if squeeze else counts), nearest


def _direct_within(p: _Prepared, pairs: torch.Tensor, q0: int, b0: int, rad: torch.Tensor, radius_of: str,
                   max_block_bytes: int) -> torch.Tensor:
    """Exact `<=` test for block pairs (i, j) near the boundary, in slices of bounded memory."""
    out = torch.empty(len(pairs), dtype=torch.bool, device=p.device)
    step = max(1, max_block_bytes // (8 * p.dim))
    for s in range(0, len(pairs), step):
        i, j = pairs[s:s + step, 0], pairs[s:s + step, 1]
        d = direct_sq_dist(p.q[q0 + i], p.b[b0 + j]).sqrt()
        r = rad[0, j] if radius_of == "base" else rad[i, 0]
        out[s:s + step] = d <= r
    return out
