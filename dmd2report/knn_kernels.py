"""CPU kernels of the exact search (`knn.py`): one pass over a distance block each, in place of torch's
`topk` (a partial sort of every row) and of the radius test's subtraction, comparison and `nonzero` (three
passes over the block, two temporaries). On a 2-core machine these took as long as the matrix product
itself (`benchmarks/knn.py --kernels REF` times the search against an earlier `knn.py`).

A block is the rank form r[i, j] = ||b_j||^2 - 2 q_i.b_j (float32, +inf for excluded pairs) of query rows
against base columns; adding the row's squared norm qn[i] gives the product form of `knn.py`'s docstring.
Running selections hold, per point, the `kk` smallest product forms met so far, ascending, with their
indices (+inf and -1 in unused slots). A value enters only when strictly smaller than the current last one,
so every value left out of a list is >= every value kept: what the search's certificate relies on.

A module of its own so numba can cache the compiled kernels on disk (`cache=True` needs module-level
functions). No fastmath: the values must round exactly as the torch code that they replace.
"""

import numba
import numpy as np


@numba.njit(inline="always")
def _insert(dist, idx, p, v, j):
    """Put (v, j) into the ascending list p of (dist, idx), dropping its last entry (v < its last value)."""
    s = dist.shape[1] - 1
    while s > 0 and dist[p, s - 1] > v:
        dist[p, s] = dist[p, s - 1]
        idx[p, s] = idx[p, s - 1]
        s -= 1
    dist[p, s] = v
    idx[p, s] = j


@numba.njit(parallel=True, nogil=True, cache=True)
def select_rows(block, qn, col0, dist, idx, row0):
    """Merge each row of a block into the running selection of its query: list row0 + i gets the
    (block[i, j] + qn[i], col0 + j) of the block's columns that beat its last value."""
    rows, cols = block.shape
    for i in numba.prange(rows):
        p = row0 + i
        n = qn[i]
        last = dist[p, -1]
        for j in range(cols):
            v = block[i, j] + n
            if v < last:
                _insert(dist, idx, p, v, col0 + j)
                last = dist[p, -1]


@numba.njit(parallel=True, nogil=True, cache=True)
def select_cols(block, qn, row0, dist, idx, col0):
    """Merge each column of a block into the running selection of its base point: list col0 + j gets the
    (block[i, j] + qn[i], row0 + i) of the block's rows that beat its last value. Columns in contiguous
    chunks, one chunk a task: a task reads its chunk of every row in order, against a contiguous copy of its
    lists' last values (the lists' own last values lie a row of `dist` apart)."""
    rows, cols = block.shape
    width = 512
    for c in numba.prange((cols + width - 1) // width):
        j0 = c * width
        j1 = min(j0 + width, cols)
        last = dist[col0 + j0:col0 + j1, -1].copy()
        for i in range(rows):
            n = qn[i]
            for j in range(j0, j1):
                v = block[i, j] + n
                if v < last[j - j0]:
                    _insert(dist, idx, col0 + j, v, row0 + i)
                    last[j - j0] = dist[col0 + j, -1]


@numba.njit(parallel=True, nogil=True, cache=True)
def radius_candidates(block, col_thr, row_bound, cols_out, counts):
    """Per row i, the columns j with block[i, j] - col_thr[j] <= row_bound[i] (float32, as torch computes it):
    the first cols_out.shape[1] of them into cols_out[i], ascending, and how many there are into counts[i]
    (a count above the width means the row has to be asked again)."""
    rows, cols = block.shape
    cap = cols_out.shape[1]
    for i in numba.prange(rows):
        bound = row_bound[i]
        c = 0
        for j in range(cols):
            if np.float32(block[i, j] - col_thr[j]) <= bound:
                if c < cap:
                    cols_out[i, c] = j
                c += 1
        counts[i] = c
