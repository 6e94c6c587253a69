"""Exact nearest-neighbour search and radius tests: the package's one k-NN module.

`knn` picks the method by dimension; callers have one entry point and get the same answer either way:
  - feature space (D > 2): chunked torch matrix products on the run's device (CPU or CUDA), below;
  - the 2-D map (D <= 2): scipy's `cKDTree` on the CPU (`knn_kdtree`; a 50,000 x 50,000 2-D search takes
    a fraction of a second where an all-pairs search takes tens of seconds).

The distance. Both paths rank by the same squared distance, sum((a - b)^2) computed in float64 from the
float32 inputs (`exact_sq_dist`): the differences and squares of float32 values are (all but) exact in float64
and only the sum rounds, so copies of a point and points of a grid tie exactly, as they do in exact arithmetic.
Results are exact for that distance and deterministic: the k nearest base points are the k smallest by
(distance, base index), i.e. among exactly equal distances the lower index comes first, also at the k-th
place (a tied candidate of lower index is never dropped for one of higher index). Returned distances are
sqrt of that value rounded once to float32, so they are non-decreasing along a row, and `within_radius`
decides `d <= r` on the same float32 value (a radius taken from `knn` and tested in `within_radius` agree).

Feature space (torch). Squared distances of a block of queries against a block of base points come from
||a||^2 + ||b||^2 - 2 a.b in float32 (one `addmm`), clamped at 0, on copies shifted by the mean of the base
(distances are translation invariant; the shift keeps the norms, and so the cancellation error of the product
form, small). Queries (and, for huge bases, the base) are cut into blocks so that one block's distance matrix
and its temporaries stay under `max_block_bytes`: a 50k x 50k problem never holds a 50k x 50k matrix.
On the CPU the blocks are read by the numba kernels of `knn_kernels` (running selections, radius candidates:
one pass over a block each, where torch's top-k and comparisons took several), and a set searched among
itself computes each pair once, over the upper triangle of square tiles (`_candidates`); on a GPU, a
torch selection per block of whole-base rows (`_block_topk`). Both give the same candidates' guarantee, and so
the same answers.
The product form is only used to *select* and to *rule out*; it is off from the exact value by at most
band = (4 D + 8) 2^-23 (||a||^2 + ||b||^2) (rounding of the shift, the norms, the dot product of D terms and
the two additions; generous by 2x or more). Then:
  - `knn` keeps the k + 4 nearest candidates of each query by the product form (running top-k over base
    blocks), recomputes their distances exactly, and sorts them by (distance, index). The answer is certified
    when every base point left out is provably farther than the k-th: its product form is >= the largest kept
    one, so its exact distance is >= that minus the band, which must exceed the k-th exact distance (strictly,
    so a left-out point cannot even tie). Queries not certified (many points within the band of their k-th
    neighbour: copies, grids) get a second, exact pass over the base: every base point whose product form is
    within the band of their k-th distance is recomputed exactly and the k smallest by (distance, index) kept,
    block by block (selection by the k-th value and the first tied columns, no sort of a whole row).
  - `within_radius` decides `d(a, b) <= r` on the product form where it is clear by more than the band, and
    recomputes every pair inside the band exactly. In particular an exact copy of a point lies at distance 0
    from it, and a radius equal to a distance (the tie) counts as inside (`<=`).
  - `RadiusPass` (the metrics' ball tests) rides on `knn_tensors`' blocks: pairs that could be inside a
    ball by the product form and a margin of twice the band are candidates; each is recomputed exactly and
    decided on the float32 distance, as `within_radius` decides.
Groups (`_Prepared`'s q_groups/b_groups; `knn_grouped`, `radius_counts(..., q_groups, b_groups)`): pairs of
different groups are at infinity, so a search over blocks of whole groups (classes) gives, per group, what a
search over that group's own subset gives (same values, same ties: the sort by group is stable).
The exact recomputation runs on the same device in float64 (on the CPU for MPS, which has no float64).
TF32 matrix products are switched off for the duration of a call, whatever the global setting.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .device import resolve_device

DEFAULT_BLOCK_BYTES = 256 * 2**20
GPU_BLOCK_BYTES = 4 * 2**30     # the default budget of a block on a CUDA device (see _budget)
CPU_BLOCK_BYTES = 64 * 2**20    # ... and on the CPU: 4M entries, 1,024 x 4,096 or 2,048 x 2,048 (see _search_shape)
CPU_BLOCK_COLS = 4096
SEED_COLUMNS = 32768            # strided columns whose top-k gives a wide block's rows their thresholds (`_block_topk`)
MAX_CANDIDATES = 8192           # entries below its threshold a row may have before a block takes torch's top-k
_BYTES_PER_ENTRY = 16   # float32 distances + error band + a few boolean masks per block entry
_EPS32 = float(np.finfo(np.float32).eps)
KDTREE_MAX_DIM = 2      # up to this dimension `knn` uses the KD-tree (the 2-D map)
_SLACK = 4              # candidates kept beyond k by the product form, for the certificate


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


class _TF32Off:
    """TF32 matrix products off while any search runs (their error band assumes float32 products). The setting is
    one per process, not per thread, and the fit stage runs searches in two threads at once (`stages/fit.py`'s
    background searches beside the projection's): the first search in saves the setting and switches TF32 off,
    the last one out restores it, so no search ever runs with a setting another has restored."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = 0
        self._saved = False

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._running == 0:
                self._saved = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = False
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    torch.backends.cuda.matmul.allow_tf32 = self._saved


_no_tf32 = _TF32Off()


def _budget(max_block_bytes: int, device: torch.device) -> int:
    """The block budget when the default is asked for: on a CUDA device `GPU_BLOCK_BYTES`, as there a block
    costs per call (launches, a top-k per row) more than per entry, and 256 MiB would cut a 1.28M-point base
    into 64-row blocks; on the CPU `CPU_BLOCK_BYTES`, blocks that stay nearer the caches for the one-pass
    kernels (`benchmarks/knn.py`). A budget given explicitly is kept."""
    if max_block_bytes != DEFAULT_BLOCK_BYTES:
        return max_block_bytes
    return {"cuda": GPU_BLOCK_BYTES, "cpu": CPU_BLOCK_BYTES}.get(device.type, max_block_bytes)


def _block_shape(n_query: int, n_base: int, max_block_bytes: int, max_cols: int | None = None) -> tuple[int, int]:
    """(query rows, base columns) per block; whole base per block (at most `max_cols`) unless that leaves
    < 64 query rows."""
    entries = max(1, max_block_bytes // _BYTES_PER_ENTRY)
    cols = n_base if n_base * 64 <= entries else max(1, entries // 64)
    cols = cols if max_cols is None else min(cols, max_cols)
    rows = max(1, min(n_query, entries // cols))
    return rows, cols


def exact_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances sum((a - b)^2) over the last dimension of two broadcastable (..., D) tensors of
    points, in float64: the one distance both search paths rank by and `within_radius` decides on. The sum
    always runs over rows of one (P, D) tensor, so a pair of points gets the same value wherever it is met."""
    diff = a.double() - b.double()
    return diff.reshape(-1, diff.shape[-1]).square().sum(dim=1).reshape(diff.shape[:-1])


def _check_k(k: int, n_base: int, exclude_self: bool) -> None:
    available = n_base - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs at least {k} candidate neighbours, have {available}")


class _Prepared:
    """Shifted copies and squared norms of queries and base, on one device (and float32 copies of the
    unshifted points on the device of the exact recomputation)."""

    def __init__(self, queries, base, device, q_groups=None, b_groups=None):
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
        self.band_coef = (4.0 * self.dim + 8.0) * _EPS32
        self.exact_device = torch.device("cpu") if self.device.type == "mps" else self.device
        self.q_ex = self.q.to(self.exact_device)
        self.b_ex = self.q_ex if base is None else self.b.to(self.exact_device)
        # Group ids (int64 per point, e.g. classes): pairs of different groups are not neighbours (at infinity).
        self.qg = None if q_groups is None else torch.as_tensor(np.asarray(q_groups), dtype=torch.int64).to(self.device)
        if base is None:
            self.bg = self.qg
        else:
            self.bg = None if b_groups is None else torch.as_tensor(np.asarray(b_groups), dtype=torch.int64).to(self.device)
        if (self.qg is None) != (self.bg is None):
            raise ValueError("groups need to be given for both queries and base")

    def swapped(self) -> "_Prepared":
        """The same points with the roles of queries and base exchanged (sharing every tensor): the search
        from the base side. The shift stays the base's mean; any common shift serves the product form."""
        s = object.__new__(_Prepared)
        s.__dict__.update(self.__dict__)
        s.q, s.b, s.qc, s.bc, s.qn, s.bn = self.b, self.q, self.bc, self.qc, self.bn, self.qn
        s.q_ex, s.b_ex, s.qg, s.bg = self.b_ex, self.q_ex, self.bg, self.qg
        return s

    def invalid(self, qi: torch.Tensor, bi: torch.Tensor, exclude_self: bool) -> torch.Tensor | None:
        """Where candidate pairs (query rows qi, base rows bi, index tensors of one shape) are no
        neighbours: the point itself (`exclude_self`) or another group. None when all are valid."""
        bad = None
        if exclude_self:
            bad = qi == bi
        if self.qg is not None:
            other = self.qg[qi.to(self.device)] != self.bg[bi.to(self.device)]
            bad = other if bad is None else bad | other.to(bad.device)
        return bad

    def sq_block(self, q0, q1, b0, b1) -> torch.Tensor:
        """Product-form squared distances of queries [q0, q1) to base [b0, b1), clamped at 0."""
        return self.sq_rows(self.qc[q0:q1], self.qn[q0:q1], b0, b1)

    def sq_rows(self, qc, qn, b0, b1) -> torch.Tensor:
        """Product-form squared distances of shifted query rows `qc` (squared norms `qn`) to base [b0, b1)."""
        d2 = torch.addmm(self.bn[None, b0:b1], qc, self.bc[b0:b1].T, beta=1.0, alpha=-2.0)
        return d2.add_(qn[:, None]).clamp_(min=0.0)

    def band(self, q0, q1, b0, b1) -> torch.Tensor:
        """Bound on |product form - exact| for each pair of the block (see the module docstring)."""
        c = self.band_coef
        return (self.qn[q0:q1, None] * c + self.bn[None, b0:b1] * c).add_(torch.finfo(torch.float32).tiny)

    def exact(self, qi: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
        """Exact squared distances (float64, on `exact_device`) of query rows `qi` to base rows `bi`
        (index tensors of one shape, any device), shaped like them."""
        qi, bi = qi.to(self.exact_device), bi.to(self.exact_device)
        return exact_sq_dist(self.q_ex[qi.reshape(-1)], self.b_ex[bi.reshape(-1)]).reshape(qi.shape)


def _mask_self(d2: torch.Tensor, q0: int, b0: int) -> None:
    """Set d2[i, j] = inf where query q0 + i is base point b0 + j (same set)."""
    rows, cols = d2.shape
    lo, hi = max(q0, b0), min(q0 + rows, b0 + cols)
    if lo < hi:
        r = torch.arange(lo, hi, device=d2.device)
        d2[r - q0, r - b0] = float("inf")


def _rank_block(p: _Prepared, q0: int, q1: int, b0: int, b1: int, exclude_self: bool) -> torch.Tensor:
    """Rank form ||b||^2 - 2 q.b of queries q0:q1 against base points b0:b1 (the product form less the
    query's squared norm, unclamped: the same order within a row), excluded pairs at infinity (`_exclude`)."""
    d2 = torch.addmm(p.bn[None, b0:b1], p.qc[q0:q1], p.bc[b0:b1].T, beta=1.0, alpha=-2.0)
    return _exclude(p, d2, q0, q1, b0, b1, exclude_self)


def _exclude(p: _Prepared, d2: torch.Tensor, q0: int, q1: int, b0: int, b1: int, exclude_self: bool) -> torch.Tensor:
    """d2 with each point itself (`exclude_self`) and pairs of different groups set to infinity, in place."""
    if exclude_self:
        _mask_self(d2, q0, b0)
    if p.qg is not None:
        d2.masked_fill_(p.qg[q0:q1, None] != p.bg[None, b0:b1], float("inf"))
    return d2


def _distance_blocks(p: _Prepared, q0: int, q1: int, cols: int, exclude_self: bool, rank_only: bool = False):
    """Yield (b0, b1, squared distances of queries q0:q1 to base points b0:b1), excluded pairs at infinity.
    `rank_only` yields the rank form (`_rank_block`), two passes fewer over the block."""
    n_b = len(p.b)
    for b0 in range(0, n_b, cols):
        b1 = min(b0 + cols, n_b)
        if rank_only:
            yield b0, b1, _rank_block(p, q0, q1, b0, b1, exclude_self)
        else:
            yield b0, b1, _exclude(p, p.sq_block(q0, q1, b0, b1), q0, q1, b0, b1, exclude_self)


def _keep_nearest(best_d, best_i, top_d, top_i, k: int):
    """The k smallest of a row's running selection and a block's candidates (distances, indices)."""
    best_d, best_i = torch.cat([best_d, top_d], dim=1), torch.cat([best_i, top_i], dim=1)
    if best_d.shape[1] > k:
        best_d, j = torch.topk(best_d, k, dim=1, largest=False)
        best_i = best_i.gather(1, j)
    return best_d, best_i


def _sort_by_key_then_index(key: torch.Tensor, idx: torch.Tensor):
    """Each row of (key, idx) sorted by key, equal keys by index (indices of a row are distinct)."""
    idx, o = idx.sort(dim=1)
    key, o2 = key.gather(1, o).sort(dim=1, stable=True)
    return key, idx.gather(1, o2)


def _smallest_by_key_then_index(key: torch.Tensor, k: int):
    """The k smallest entries of each row of `key` (m, w) by (value, column), sorted that way: the values
    and the columns. Selection by the k-th value plus the first columns tied with it, no sort of a row."""
    m, w = key.shape
    if w <= k:
        key, cols = key.sort(dim=1, stable=True)
        return key, cols
    kth = key.kthvalue(k, dim=1, keepdim=True).values
    less = key < kth
    tied = key == kth
    need = k - less.sum(dim=1, keepdim=True)
    take = less | (tied & (tied.cumsum(dim=1) <= need))
    cols = take.nonzero()[:, 1].reshape(m, k)          # row-major: ascending columns within a row
    sel, o = key.gather(1, cols).sort(dim=1, stable=True)
    return sel, cols.gather(1, o)


def _shape(a) -> tuple:
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def knn(queries, base=None, k: int = 1, *, exclude_self: bool = False, device=None,
        max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest base points of every query: (distances float32 (Q, k), indices int64 (Q, k)),
    nearest first, Euclidean distances, equal distances by lower base index (see the module docstring).

    `base=None` searches the queries among themselves; `exclude_self` then skips each point itself
    (by index, so duplicates of a point still count as neighbours at distance 0): this is the
    "k-th nearest other point" of r_k. Points of dimension <= 2 (the map) go to the KD-tree on the CPU
    whatever `device`; others to the chunked search on `device` (None: CUDA when present).
    """
    shape = _shape(queries)
    if len(shape) == 2 and shape[1] <= KDTREE_MAX_DIM:
        return knn_kdtree(queries, base, k, exclude_self=exclude_self, max_block_bytes=max_block_bytes)
    with torch.no_grad(), _no_tf32():
        d, i = knn_tensors(_Prepared(queries, base, device), k, exclude_self, max_block_bytes)
    return d.cpu().numpy(), i.cpu().numpy()


def _kernels(device: torch.device):
    """The numba selection kernels (`knn_kernels`) for a search on the CPU; None on other devices, whose
    blocks torch selects from (`_block_topk`: a GPU pays per call, not per entry)."""
    if device.type != "cpu":
        return None
    from . import knn_kernels
    return knn_kernels


def _search_shape(p: _Prepared, max_block_bytes: int) -> tuple[int, int]:
    """`_block_shape` of a search: on the CPU at most `CPU_BLOCK_COLS` columns, since the kernels read a
    block by row and by column and a block about as wide as tall keeps both nearer the caches (the shapes
    side by side: `benchmarks/knn.py --shapes`)."""
    cpu = p.device.type == "cpu"
    return _block_shape(len(p.q), len(p.b), max_block_bytes, CPU_BLOCK_COLS if cpu else None)


def _tile_side(n: int, max_block_bytes: int) -> int:
    """Side of the square tiles of a search of a set among itself (`_candidates`): a tile's entries within
    the block budget, at least 64."""
    return max(64, min(n, math.isqrt(max(1, max_block_bytes // _BYTES_PER_ENTRY))))


def knn_tensors(p: _Prepared, k: int, exclude_self: bool, max_block_bytes: int, on_block=None):
    """The chunked search on prepared tensors: (distances float32, indices int64) on `p.exact_device`.

    `on_block(q0, q1, b0, b1, d2)` (optional) is called on every distance block after its candidates are
    taken, with d2 the rank form (product form less the query's squared norm, unclamped; pairs of the
    point itself or of different groups at infinity), which it may overwrite: a second use of the one
    matrix product (the radius tests of `RadiusPass`). k = 0 runs the blocks for it alone (returns None).
    With groups, the k nearest are those of the query's own group, which must have more than k points."""
    max_block_bytes = _budget(max_block_bytes, p.device)
    n_q, n_b = len(p.q), len(p.b)
    if exclude_self and p.b is not p.q:
        raise ValueError("exclude_self needs base=None (the queries searched among themselves)")
    if k == 0:
        rows, cols = _search_shape(p, max_block_bytes)
        for q0 in range(0, n_q, rows):
            q1 = min(q0 + rows, n_q)
            for b0, b1, d2 in _distance_blocks(p, q0, q1, cols, exclude_self, rank_only=True):
                on_block(q0, q1, b0, b1, d2)
        return None
    _check_k(k, n_b, exclude_self)
    kk = min(k + _SLACK, n_b - (1 if exclude_self else 0))   # candidates kept by the product form
    best_d, best_i = _candidates(p, kk, exclude_self, max_block_bytes, on_block)
    return _finalize(p, best_d, best_i, k, exclude_self, max_block_bytes)


def _candidates(p: _Prepared, kk: int, exclude_self: bool, max_block_bytes: int, on_block=None):
    """The kk smallest product forms of each query over the base (float32 (n_q, kk), ascending) and their
    base indices (int64, -1 where fewer than kk points are not at infinity), on `p.device`. Every base point
    left out has a product form >= the last kept one of its row (the certificate of `_finalize`).

    On the CPU the numba kernels merge each block into the running selections (`knn_kernels`), and a set
    searched among itself (no `on_block`) runs over square tiles of the upper triangle only: a tile's
    rows take their candidates from its columns and its columns from its rows, so each pair's distance is
    computed once instead of twice. Elsewhere a top-k per block of whole-base rows (`_block_topk`)."""
    n_q = len(p.q)
    kern = _kernels(p.device)
    if kern is None:
        out_d = torch.empty((n_q, kk), device=p.device)
        out_i = torch.empty((n_q, kk), dtype=torch.int64, device=p.device)
        rows, cols = _search_shape(p, max_block_bytes)
        for q0 in range(0, n_q, rows):
            q1 = min(q0 + rows, n_q)
            best_d = torch.empty((q1 - q0, 0), device=p.device)
            best_i = torch.empty((q1 - q0, 0), dtype=torch.int64, device=p.device)
            for b0, b1, d2 in _distance_blocks(p, q0, q1, cols, exclude_self, rank_only=True):
                top_d, top_j = _block_topk(d2, kk)
                best_d, best_i = _keep_nearest(best_d, best_i, top_d, torch.where(top_j >= 0, top_j + b0, -1), kk)
                if on_block is not None:
                    on_block(q0, q1, b0, b1, d2)
            # the product form, as `sq_block` rounds it (the rank form plus the row's norm in float32)
            out_d[q0:q1] = best_d + p.qn[q0:q1, None]
            out_i[q0:q1] = best_i
        return out_d, out_i
    dist = np.full((n_q, kk), np.inf, np.float32)
    idx = np.full((n_q, kk), -1, np.int64)
    qn = p.qn.numpy()
    if p.b is p.q and on_block is None:
        side = _tile_side(n_q, max_block_bytes)
        for q0 in range(0, n_q, side):
            q1 = min(q0 + side, n_q)
            for b0 in range(q0, n_q, side):
                b1 = min(b0 + side, n_q)
                block = _rank_block(p, q0, q1, b0, b1, exclude_self).numpy()
                kern.select_rows(block, qn[q0:q1], b0, dist, idx, q0)
                if b0 != q0:
                    kern.select_cols(block, qn[q0:q1], q0, dist, idx, b0)
    else:
        rows, cols = _search_shape(p, max_block_bytes)
        for q0 in range(0, n_q, rows):
            q1 = min(q0 + rows, n_q)
            for b0, b1, d2 in _distance_blocks(p, q0, q1, cols, exclude_self, rank_only=True):
                kern.select_rows(d2.numpy(), qn[q0:q1], b0, dist, idx, q0)
                if on_block is not None:
                    on_block(q0, q1, b0, b1, d2)
    return torch.from_numpy(dist), torch.from_numpy(idx)


def _block_topk(d2: torch.Tensor, kk: int):
    """The kk smallest entries of each row of a block (values ascending, columns; -1 marks a padding slot, at
    infinity), as `torch.topk(d2, kk, largest=False)` up to ties, without a top-k over every column of a wide
    block (a GPU's blocks are whole-base rows: ~200 rows of 1.28M columns). A top-k over `SEED_COLUMNS` strided
    columns gives each row a threshold t, its kk-th smallest there, so the row's kk smallest are all <= t; the
    entries below t elsewhere are found by one comparison and `nonzero` (about kk x cols / SEED_COLUMNS a row),
    and the kk smallest of those and the seed's are the answer. Every entry left out is >= t >= the largest kept
    (what `_finalize` certifies with). A block whose rows have more than `MAX_CANDIDATES` below their
    threshold (heavy ties, a row of infinities) takes torch's top-k instead."""
    rows, cols = d2.shape
    kk = min(kk, cols)
    step = cols // SEED_COLUMNS
    if step < 4 or rows == 0:
        return torch.topk(d2, kk, dim=1, largest=False)
    seed_d, seed_j = torch.topk(d2[:, ::step], kk, dim=1, largest=False)   # strided: whatever the base's order
    below = d2 < seed_d[:, -1:]
    below[:, ::step] = False                  # the seed's own columns are in seed_d already
    r, c = below.nonzero(as_tuple=True)
    counts = torch.bincount(r, minlength=rows)
    width = int(counts.max()) if len(r) else 0
    if width > MAX_CANDIDATES:
        return torch.topk(d2, kk, dim=1, largest=False)
    slot = torch.arange(len(r), device=d2.device) - (torch.cumsum(counts, 0) - counts)[r]   # place in its row
    cand_d = torch.full((rows, width), float("inf"), device=d2.device)
    cand_j = torch.full((rows, width), -1, dtype=torch.int64, device=d2.device)
    cand_d[r, slot], cand_j[r, slot] = d2[r, c], c
    top_d, s = torch.topk(torch.cat([seed_d, cand_d], dim=1), kk, dim=1, largest=False)
    return top_d, torch.cat([seed_j * step, cand_j], dim=1).gather(1, s)


def _finalize(p: _Prepared, best_d: torch.Tensor, best_i: torch.Tensor, k: int, exclude_self: bool,
              max_block_bytes: int):
    """The exact k nearest from each query's kk candidates (`_candidates`): their distances recomputed
    exactly and sorted by (distance, index); a query whose answer the product form cannot certify goes to
    the exact second pass. (distances float32, indices int64) on `p.exact_device`."""
    n_q, kk = best_i.shape
    available = len(p.b) - (1 if exclude_self else 0)
    # the exact recomputation gathers (rows, kk, D) float64 twice: slices of it stay under the block too
    ex_rows = max(1, max_block_bytes // (kk * p.dim * 8 * 3))
    out_key = torch.empty(n_q, k, dtype=torch.float64, device=p.exact_device)
    out_i = torch.empty(n_q, k, dtype=torch.int64, device=p.exact_device)
    best_i = best_i.to(p.exact_device)
    for s0 in range(0, n_q, ex_rows):
        s1 = min(s0 + ex_rows, n_q)
        cand = best_i[s0:s1]
        real = cand.clamp(min=0)
        key = exact_sq_dist(p.q_ex[s0:s1, None, :], p.b_ex[real])
        # an empty slot or a candidate at infinity (fewer valid points than kk in the query's group) is no neighbour
        bad = p.invalid(torch.arange(s0, s1, device=p.exact_device)[:, None].expand_as(cand), real, exclude_self)
        bad = cand < 0 if bad is None else bad.to(cand.device) | (cand < 0)
        key, idx = _sort_by_key_then_index(key.masked_fill(bad, float("inf")), cand)
        out_key[s0:s1], out_i[s0:s1] = key[:, :k], idx[:, :k]
    if kk < available and n_q:
        # Every base point left out has a product form >= the largest kept one, so an exact squared
        # distance >= that minus the band (module docstring); the answer is certified when this exceeds
        # the k-th exact distance, strictly. (A slot at infinity: every valid point was kept.)
        qn = p.qn.double()
        lower = best_d.double().max(dim=1).values - (qn + p.bn.max().double()) * p.band_coef
        unsure = (~(lower.to(p.exact_device) > out_key[:, k - 1])).nonzero()[:, 0]
        if len(unsure):
            key, idx = _threshold_pass(p, unsure, out_key[unsure, k - 1], k, exclude_self, max_block_bytes)
            out_key[unsure], out_i[unsure] = key, idx
    return out_key.sqrt().float(), out_i


def _threshold_pass(p: _Prepared, qrows: torch.Tensor, limit: torch.Tensor, k: int, exclude_self: bool,
                    max_block_bytes: int):
    """Exact k nearest of the query rows `qrows` whose k-th exact squared distance is at most `limit`
    (float64): every base point whose product form is within the band of `limit` is recomputed exactly,
    and the k smallest by (distance, index) are kept, block by block. (key float64, idx) on exact_device."""
    max_block_bytes = _budget(max_block_bytes, p.device)
    n_b = len(p.b)
    rows, cols = _block_shape(len(qrows), n_b, max_block_bytes // 2)   # + a float64 key block per entry
    qrows_d = qrows.to(p.device)
    out_key = torch.empty(len(qrows), k, dtype=torch.float64, device=p.exact_device)
    out_i = torch.empty(len(qrows), k, dtype=torch.int64, device=p.exact_device)
    for s in range(0, len(qrows), rows):
        qi = qrows_d[s:s + rows]
        qc, qn = p.qc[qi], p.qn[qi]
        # float32 bound: limit + band, widened for the roundings of this very expression
        lim = limit[s:s + rows].to(p.device).float()[:, None] * (1 + 4 * _EPS32)
        best_k = torch.empty((len(qi), 0), dtype=torch.float64, device=p.exact_device)
        best_i = torch.empty((len(qi), 0), dtype=torch.int64, device=p.exact_device)
        for b0 in range(0, n_b, cols):
            b1 = min(b0 + cols, n_b)
            d2 = p.sq_rows(qc, qn, b0, b1)
            bound = (lim + (qn[:, None] + p.bn[None, b0:b1]) * p.band_coef) * (1 + 8 * _EPS32)
            near = d2 <= bound
            if exclude_self:
                near &= qi[:, None] != torch.arange(b0, b1, device=p.device)[None, :]
            if p.qg is not None:
                near &= p.qg[qi][:, None] == p.bg[None, b0:b1]
            del d2, bound
            key = torch.full(near.shape, float("inf"), dtype=torch.float64, device=p.exact_device)
            pairs = near.nonzero().to(p.exact_device)
            step = max(1, max_block_bytes // (p.dim * 8 * 4))
            for t in range(0, len(pairs), step):
                i, j = pairs[t:t + step, 0], pairs[t:t + step, 1]
                key[i, j] = p.exact(qi.to(p.exact_device)[i], j + b0)
            sel, col = _smallest_by_key_then_index(key, k)
            # all indices of this block are above the running selection's: a stable sort keeps (key, index)
            best_k, order = torch.cat([best_k, sel], dim=1).sort(dim=1, stable=True)
            best_i = torch.cat([best_i, col + b0], dim=1).gather(1, order)
            best_k, best_i = best_k[:, :k], best_i[:, :k]
        if not (best_k[:, -1] <= limit[s:s + rows].to(p.exact_device)).all():   # the bound above is too tight
            raise RuntimeError("knn: the exact pass lost a neighbour; the error band is too narrow (a bug)")
        out_key[s:s + rows], out_i[s:s + rows] = best_k, best_i
    return out_key, out_i


def _as_float64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array of points, got shape {a.shape}")
    return a


def knn_kdtree(queries, base=None, k: int = 1, *, exclude_self: bool = False,
               max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """`knn` for low-dimensional points (the 2-D map) by scipy's `cKDTree`, exact, same results and ties.

    The tree returns the kk nearest (its own float64 distances, ties in no given order); their distances are
    recomputed as everywhere (`exact_sq_dist`: float32 points, float64 sum) and sorted by (distance, index).
    A query is certified when the tree's kk-th distance is strictly beyond the k-th (margin for the tree's
    own rounding): then no other point can tie with or beat it. Queries not certified (ties across the cut)
    are asked again with 4x the candidates until certified or the whole base is returned.
    """
    from scipy.spatial import cKDTree

    # float32 points, as the torch path sees them, then float64 for the tree and the distances
    q = _as_float64(np.asarray(queries.detach().cpu() if isinstance(queries, torch.Tensor) else queries,
                               dtype=np.float32))
    b = q if base is None else _as_float64(np.asarray(base.detach().cpu() if isinstance(base, torch.Tensor)
                                                      else base, dtype=np.float32))
    if exclude_self and base is not None:
        raise ValueError("exclude_self needs base=None (the queries searched among themselves)")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: queries have {q.shape[1]}, base {b.shape[1]}")
    n_q, n_b = len(q), len(b)
    _check_k(k, n_b, exclude_self)
    tree = cKDTree(b)
    out_key = np.empty((n_q, k), np.float64)
    out_i = np.empty((n_q, k), np.int64)
    pending = np.arange(n_q)
    kk = min(n_b, k + int(exclude_self) + 1)
    while len(pending):
        step = max(1, max_block_bytes // (kk * 8 * (2 * q.shape[1] + 6)))
        again = []
        for s in range(0, len(pending), step):
            rows = pending[s:s + step]
            dist, idx = tree.query(q[rows], k=kk, workers=-1)   # queries split over every core: same answers
            dist, idx = dist.reshape(len(rows), kk), idx.reshape(len(rows), kk).astype(np.int64)
            key = np.square(q[rows][:, None, :] - b[idx]).sum(axis=2)
            if exclude_self:
                key[idx == rows[:, None]] = np.inf
            order = np.lexsort((idx, key), axis=1)
            key, idx = np.take_along_axis(key, order, 1)[:, :k], np.take_along_axis(idx, order, 1)[:, :k]
            out_key[rows], out_i[rows] = key, idx
            if kk < n_b:
                again.append(rows[~(np.square(dist[:, -1]) > key[:, -1] * (1 + 1e-12))])
        pending = np.concatenate(again) if again else pending[:0]
        kk = min(n_b, 4 * kk)
    return np.sqrt(out_key).astype(np.float32), out_i


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
    of up to `cap` covering base points per query (first radius column), nearest first by the product
    form (the counts are exact; this list's order among near-equal distances, and so which of them make
    the cap, is not held to the exact distance and index as `knn`'s is).

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
    max_block_bytes = _budget(max_block_bytes, p.device)
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
    """Exact `<=` test for block pairs (i, j) near the boundary (the float32 distance of `exact_sq_dist`,
    as `knn` returns it), in slices of bounded memory."""
    out = torch.empty(len(pairs), dtype=torch.bool, device=p.device)
    step = max(1, max_block_bytes // (8 * 4 * p.dim))
    for s in range(0, len(pairs), step):
        i, j = pairs[s:s + step, 0], pairs[s:s + step, 1]
        d = p.exact(q0 + i, b0 + j).sqrt().float().to(p.device)   # the float32 distance `knn` returns
        r = rad[0, j] if radius_of == "base" else rad[i, 0]
        out[s:s + step] = d <= r
    return out


# ----------------------------------------------------------------------------------------------
# Ball tests fused with the search, and searches restricted to groups (classes).

# Rows per side of a block of whole groups. A block costs rows x rows distances of which only the same-group
# pairs are used, so N x rows in all; larger blocks mean fewer calls. On the CPU (cost per distance) small
# blocks; on a GPU (cost per call: launches, syncs) large ones: 1,280,000 real in 1,000 classes of 1,280
# make ~80 blocks there instead of 1,000.
_GROUP_ROWS = {"cpu": 2048}
_GROUP_ROWS_DEVICE = 16384


def _group_rows(device: torch.device) -> int:
    return _GROUP_ROWS.get(device.type, _GROUP_ROWS_DEVICE)


class RadiusPass:
    """Exact ball-membership counts taken from the distance blocks of a search (`knn_tensors`' `on_block`),
    so that one matrix product serves the k-NN and every radius test.

    col_radii (n_base, R): tests d(q, b) <= col_radii[b, r]; counted per query (`row_counts`) and per base
    point (`col_counts`). row_radius (n_query,): tests d(q, b) <= row_radius[q], counted per base point
    (`col_counts_row`). A NaN radius is a test that never holds. The decision is `<=` on the float32
    distance of `exact_sq_dist` (as `within_radius` and `knn`): a block's pairs whose product form could
    be inside one of their balls (with twice the error band of the module docstring as margin; for the
    query's own ball a looser bound, see below) are candidates, found by one comparison over the block;
    each candidate's distance is recomputed exactly and every test decided on it. Candidates are few
    (the balls are k-NN balls: about 1.1 per real point measured at 10,000 x 10,000, 50-D), so the exact
    work is small and the block sees one subtraction, one comparison and a nonzero."""

    def __init__(self, p: _Prepared, col_radii: torch.Tensor | None, row_radius: torch.Tensor | None,
                 max_block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.p = p
        n_q, n_b = len(p.q), len(p.b)
        coef = 2 * p.band_coef
        tiny = torch.finfo(torch.float32).tiny
        grow = 1 + 8 * _EPS32
        self.neg_a = -(p.qn * (1 - coef))      # minus the row's norm less its share of the band
        self.col = None if col_radii is None else col_radii.to(p.device, torch.float32).reshape(n_b, -1)
        self.row = None if row_radius is None else row_radius.to(p.device, torch.float32).reshape(n_q)
        # Column thresholds C: a pair can be inside a ball of its base point only if d2r - C <= -a (d2r the
        # rank form the search hands over). A base point without a radius gets radius 0: a few candidates
        # more, decided exactly (NaN never holds), and C stays finite for the row test below.
        r2 = torch.zeros(n_b, device=p.device)
        if self.col is not None:
            r2 = torch.nan_to_num(self.col, nan=0.0).square().max(dim=1).values
        self.thr_c = r2 * grow + p.bn * coef + tiny
        # Row thresholds: inside the query's ball only if d2r + a <= R, i.e. d2r - C <= R - a - C, implied by
        # d2r - C <= R - a - min C. One per-row bound then covers both tests: max(-a, R - a - min C).
        self.row_bound = self.neg_a
        if self.row is not None:
            bn_max = p.bn.max() if n_b else torch.tensor(0.0, device=p.device)
            thr_r = torch.where(self.row.isnan(), float("-inf"), self.row.square() * grow + bn_max * coef + tiny)
            min_c = self.thr_c.min() if n_b else torch.tensor(0.0, device=p.device)
            self.row_bound = torch.maximum(self.neg_a, thr_r + self.neg_a - min_c)
        n_r = 0 if self.col is None else self.col.shape[1]
        self.row_counts = torch.zeros(n_q, n_r, dtype=torch.int64, device=p.device)
        self.col_counts = torch.zeros(n_b, n_r, dtype=torch.int64, device=p.device)
        self.col_counts_row = torch.zeros(n_b, dtype=torch.int64, device=p.device)
        self.step = max(4096, max_block_bytes // (8 * 4 * max(p.dim, 1)))   # candidate pairs per exact slice
        self._np = None   # numpy views of the thresholds for the CPU kernel

    def __call__(self, q0: int, q1: int, b0: int, b1: int, d2: torch.Tensor) -> None:
        pairs = self._pairs(q0, q1, b0, b1, d2)
        for s in range(0, len(pairs), self.step):
            i, j = pairs[s:s + self.step, 0] + q0, pairs[s:s + self.step, 1] + b0
            d = self.p.exact(i, j).sqrt().float().to(self.p.device)   # the float32 distance `knn` returns
            if self.col is not None:
                inside = (d[:, None] <= self.col[j]).long()
                self.row_counts.index_add_(0, i, inside)
                self.col_counts.index_add_(0, j, inside)
            if self.row is not None:
                self.col_counts_row.index_add_(0, j, (d <= self.row[i]).long())

    _WIDTH = 32   # candidate columns a row holds in the CPU kernel's output; a row with more is asked again

    def _pairs(self, q0: int, q1: int, b0: int, b1: int, d2: torch.Tensor) -> torch.Tensor:
        """(pairs, 2) block positions (row, column) of the candidates, row-major: d2 - C <= the row's bound."""
        kern = _kernels(self.p.device)
        if kern is None:   # two passes over the block (a subtraction in place, a comparison) and `nonzero`
            return (d2.sub_(self.thr_c[None, b0:b1]) <= self.row_bound[q0:q1, None]).nonzero()
        if self._np is None:
            self._np = (self.thr_c.numpy(), self.row_bound.contiguous().numpy())
        thr_c, row_bound = self._np[0][b0:b1], self._np[1][q0:q1]
        block = d2.numpy()
        cols = np.empty((q1 - q0, self._WIDTH), np.int64)
        counts = np.empty(q1 - q0, np.int64)
        kern.radius_candidates(block, thr_c, row_bound, cols, counts)
        held = np.arange(self._WIDTH)[None, :] < counts[:, None]
        rows = [np.nonzero(held)[0]]
        cols = [cols[held]]
        for i in np.flatnonzero(counts > self._WIDTH):   # rare: a row inside more balls than the width
            j = np.flatnonzero((block[i] - thr_c) <= row_bound[i])
            rows.append(np.full(len(j) - self._WIDTH, i))
            cols.append(j[self._WIDTH:])
        return torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1))


class _ColumnSelection:
    """Running selections of the base points' nearest queries, fed by the blocks of a query -> base search
    (`knn_tensors`' `on_block`, CPU): the search from the base side at the cost of reading each block once
    more by column (`knn_kernels.select_cols`) instead of a second matrix product."""

    def __init__(self, p: _Prepared, kk: int):
        self.kernels, self.qn = _kernels(p.device), p.qn.numpy()
        self.dist = np.full((len(p.b), kk), np.inf, np.float32)
        self.idx = np.full((len(p.b), kk), -1, np.int64)

    def __call__(self, q0: int, q1: int, b0: int, b1: int, d2: torch.Tensor) -> None:
        self.kernels.select_cols(d2.numpy(), self.qn[q0:q1], q0, self.dist, self.idx, b0)


def _group_blocks(q_sorted: np.ndarray, b_sorted: np.ndarray, rows: int):
    """Blocks of whole groups over two group-sorted id arrays: yields ((q0, q1), (b0, b1)) ranges whose
    groups are the same, at most `rows` rows a side unless one group alone is larger."""
    ids = np.union1d(np.unique(q_sorted), np.unique(b_sorted))
    qs, qe = np.searchsorted(q_sorted, ids, "left"), np.searchsorted(q_sorted, ids, "right")
    bs, be = np.searchsorted(b_sorted, ids, "left"), np.searchsorted(b_sorted, ids, "right")
    start = 0
    for g in range(len(ids)):
        last = g == len(ids) - 1
        if last or max(qe[g + 1] - qs[start], be[g + 1] - bs[start]) > rows:
            yield (int(qs[start]), int(qe[g])), (int(bs[start]), int(be[g]))
            start = g + 1


def _as_numpy32(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def radius_counts(queries, base, *, col_radii=None, row_radius=None, k: int = 0, k_base: int = 0, q_groups=None,
                  b_groups=None, device=None, max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> dict:
    """One pass over the (query, base) pairs for the ball tests of `RadiusPass` and, with k > 0, the k
    nearest base points of each query (exactly as `knn`): the four k-NN metrics and the neighbours from one
    matrix product per block. `k_base` > 0 (no groups) adds the k_base nearest queries of each base point,
    `knn(base, queries, k_base)` exactly: on the CPU from the same blocks, read by column (`knn_kernels.
    select_cols`), elsewhere by a search of its own. Returns numpy arrays {"row_counts" (n_q, R), "col_counts"
    (n_b, R), "col_counts_row" (n_b,), "knn": (distances, indices) or None, "knn_base": the same or None}.

    With groups (an int per query and per base point: classes), only pairs of one group are tested and
    searched, as if each group were run on its own (the `*_in_class` scopes): the points are sorted by
    group (stably, so that ties keep the order of the group's own subset) and run in blocks of whole
    groups, pairs of different groups at infinity. A query needs more than k base points of its group."""
    dev = as_device(device)
    n_q, n_b = _shape(queries)[0], _shape(base)[0]
    col = None if col_radii is None else np.asarray(col_radii, np.float32).reshape(n_b, -1)
    row = None if row_radius is None else np.asarray(row_radius, np.float32).reshape(n_q)
    n_r = 0 if col is None else col.shape[1]
    out = {"row_counts": np.zeros((n_q, n_r), np.int64), "col_counts": np.zeros((n_b, n_r), np.int64),
           "col_counts_row": np.zeros(n_b, np.int64), "knn": None, "knn_base": None}
    if (q_groups is None) != (b_groups is None):
        raise ValueError("groups need to be given for both queries and base")
    if k_base and q_groups is not None:
        raise ValueError("k_base needs a search without groups")
    if q_groups is None:   # one block of everything: the inputs go to the device as they are
        with torch.no_grad(), _no_tf32():
            p = _Prepared(queries, base, dev)
            rp = RadiusPass(p, None if col is None else torch.from_numpy(col),
                            None if row is None else torch.from_numpy(row), max_block_bytes)
            on_block, by_column = rp, None
            if k_base and _kernels(p.device) is not None:
                _check_k(k_base, n_q, False)
                by_column = _ColumnSelection(p, min(k_base + _SLACK, n_q))

                def on_block(q0, q1, b0, b1, d2):
                    by_column(q0, q1, b0, b1, d2)   # first: the radius pass may overwrite the block
                    rp(q0, q1, b0, b1, d2)
            res = knn_tensors(p, k, False, max_block_bytes, on_block=on_block)
            if by_column is not None:
                d, i = _finalize(p.swapped(), torch.from_numpy(by_column.dist), torch.from_numpy(by_column.idx),
                                 k_base, False, _budget(max_block_bytes, p.device))
                out["knn_base"] = (d.cpu().numpy(), i.cpu().numpy())
        out.update(row_counts=rp.row_counts.cpu().numpy(), col_counts=rp.col_counts.cpu().numpy(),
                   col_counts_row=rp.col_counts_row.cpu().numpy())
        if res is not None:
            out["knn"] = (res[0].cpu().numpy(), res[1].cpu().numpy())
        if k_base and out["knn_base"] is None:
            out["knn_base"] = knn(base, queries, k_base, device=dev, max_block_bytes=max_block_bytes)
        return out
    q_np, b_np = _as_numpy32(queries), _as_numpy32(base)
    if k:
        out["knn"] = (np.full((n_q, k), np.inf, np.float32), np.full((n_q, k), -1, np.int64))
    qg_all, bg_all = np.asarray(q_groups, np.int64), np.asarray(b_groups, np.int64)
    q_order, b_order = np.argsort(qg_all, kind="stable"), np.argsort(bg_all, kind="stable")
    qg, bg = qg_all[q_order], bg_all[b_order]
    with torch.no_grad(), _no_tf32():
        for (q0, q1), (b0, b1) in _group_blocks(qg, bg, _group_rows(dev)):
            if q1 == q0 or b1 == b0:
                continue
            qi, bi = q_order[q0:q1], b_order[b0:b1]
            p = _Prepared(q_np[qi], b_np[bi], dev, qg[q0:q1], bg[b0:b1])
            rp = RadiusPass(p, None if col is None else torch.from_numpy(col[bi]),
                            None if row is None else torch.from_numpy(row[qi]), max_block_bytes)
            res = knn_tensors(p, k, False, max_block_bytes, on_block=rp)
            out["row_counts"][qi] = rp.row_counts.cpu().numpy()
            out["col_counts"][bi] = rp.col_counts.cpu().numpy()
            out["col_counts_row"][bi] = rp.col_counts_row.cpu().numpy()
            if res is not None:
                d, i = res[0].cpu().numpy(), res[1].cpu().numpy()
                out["knn"][0][qi], out["knn"][1][qi] = d, np.where(np.isfinite(d), bi[np.clip(i, 0, None)], -1)
    return out


def knn_grouped(points, groups, k: int, *, device=None, max_block_bytes: int = DEFAULT_BLOCK_BYTES):
    """`knn(points, None, k, exclude_self=True)` inside each group (class) of `points`, for all groups in
    a few block searches: (distances (n, k) float32, indices (n, k) into `points`), the same values and
    ties as a search run on the group's own subset (in its order). Points of groups of at most k points
    get inf and -1."""
    dev = as_device(device)
    x = _as_numpy32(points)
    g = np.asarray(groups, np.int64)
    dist, idx = np.full((len(x), k), np.inf, np.float32), np.full((len(x), k), -1, np.int64)
    ids, counts = np.unique(g, return_counts=True)
    order = np.argsort(g, kind="stable")
    order = order[np.isin(g[order], ids[counts > k])]
    gs = g[order]
    with torch.no_grad(), _no_tf32():
        for (q0, q1), _ in _group_blocks(gs, gs, _group_rows(dev)):
            if q1 - q0 <= k:
                continue
            rows = order[q0:q1]
            p = _Prepared(x[rows], None, dev, gs[q0:q1])
            d, i = knn_tensors(p, k, True, max_block_bytes)
            dist[rows], idx[rows] = d.cpu().numpy(), rows[i.cpu().numpy()]
    return dist, idx
