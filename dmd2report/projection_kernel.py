"""The projection's layout kernel: umap-learn's epochs of `_optimize_layout_euclidean_single_epoch` with
the map fixed (`move_other=False`), reordered to run every point's epochs in one task, points in parallel.

With the map fixed a point's updates read only its own position and fixed map points, and its negative
samples come from its own random state, so the order across points changes nothing: the result is the same
on any number of threads, and the same as umap-learn's one-threaded loop (edges of a point in order within
an epoch, alpha decaying per epoch). umap-learn's parallel form races on a point's position instead (edges
in parallel).

A module of its own so numba can cache the compiled kernel on disk (`cache=True` needs a module-level
function): otherwise every fit and project process compiles it again.
"""

import numba
from umap.layouts import clip, rdist
from umap.utils import tau_rand_int


@numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
def layout_points(y, fitted, offsets, tail, epochs_per_sample, a, b, states, gamma, initial_alpha, negative_rate,
                  n_epochs):
    n_fitted = fitted.shape[0]
    dim = y.shape[1]
    for j in numba.prange(y.shape[0]):
        lo, hi = offsets[j], offsets[j + 1]
        next_sample = epochs_per_sample[lo:hi].copy()
        per_negative = epochs_per_sample[lo:hi] / negative_rate
        next_negative = per_negative.copy()
        current = y[j]
        state = states[j]
        alpha = initial_alpha
        for n in range(n_epochs):
            for e in range(hi - lo):
                if next_sample[e] > n:
                    continue
                other = fitted[tail[lo + e]]
                dist_squared = rdist(current, other)
                if dist_squared > 0.0:
                    grad_coeff = -2.0 * a * b * pow(dist_squared, b - 1.0)
                    grad_coeff /= a * pow(dist_squared, b) + 1.0
                else:
                    grad_coeff = 0.0
                for d in range(dim):
                    current[d] += clip(grad_coeff * (current[d] - other[d])) * alpha
                next_sample[e] += epochs_per_sample[lo + e]
                n_neg = int((n - next_negative[e]) / per_negative[e])
                for _ in range(n_neg):
                    k = tau_rand_int(state) % n_fitted
                    other = fitted[k]
                    dist_squared = rdist(current, other)
                    if dist_squared > 0.0:
                        grad_coeff = 2.0 * gamma * b
                        grad_coeff /= (0.001 + dist_squared) * (a * pow(dist_squared, b) + 1)
                        for d in range(dim):
                            current[d] += clip(grad_coeff * (current[d] - other[d])) * alpha
                next_negative[e] += n_neg * per_negative[e]
            alpha = initial_alpha * (1.0 - (float(n) / float(n_epochs)))
    return y
