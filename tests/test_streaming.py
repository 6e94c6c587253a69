"""Stages that read a whole layer do it one memory-mapped chunk at a time, with the in-memory results:
the atlas stage's class means, the generate stage's blend weights."""

import numpy as np

from dmd2report.knn import knn
from dmd2report.stages.atlas import _add_rows, _class_means_and_rows
from dmd2report.stages.generate import blend_weights


class _ChunkedStore:
    def __init__(self, x, chunk):
        self.x, self.chunk = x, chunk

    def iter_features(self, layer):
        for s in range(0, len(self.x), self.chunk):
            yield self.x[s:s + self.chunk]


class _Reduction:
    """A fixed linear map standing in for the fitted standardise + PCA."""
    n_components = 3

    def __init__(self, w):
        self.w = w

    def reduce(self, x):
        return (np.asarray(x, np.float32) @ self.w).astype(np.float32)


def test_class_means_and_rows_match_in_memory():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1003, 7)).astype(np.float16)
    classes = rng.integers(0, 9, len(x))
    classes[classes == 4] = 5            # a class id without samples keeps a zero mean
    rows = np.sort(rng.choice(len(x), 40, replace=False))
    emb = _Reduction(rng.standard_normal((7, 3)).astype(np.float32))
    centres, picked = _class_means_and_rows(emb, _ChunkedStore(x, 128), "layer", classes, rows)
    reduced = emb.reduce(x)
    for c in range(9):
        want = reduced[classes == c].astype(np.float64).mean(0) if (classes == c).any() else np.zeros(3)
        np.testing.assert_allclose(centres[c], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(picked, reduced[rows])


def test_add_rows_is_a_grouped_sum():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 4)).astype(np.float32)
    g = rng.integers(0, 6, 500)
    sums = np.ones((6, 4))
    _add_rows(sums, g, x)
    want = np.ones((6, 4))
    np.add.at(want, g, x.astype(np.float64))
    np.testing.assert_allclose(sums, want, rtol=1e-12)


def test_blend_weights_from_chunks_match_in_memory():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((5, 12)) * 3
    classes = rng.integers(0, 5, 900)
    real = (centres[classes] + rng.standard_normal((900, 12))).astype(np.float16)
    queries = (centres[rng.integers(0, 5, 60)] + rng.standard_normal((60, 12))).astype(np.float16)
    got = blend_weights(lambda: (real[s:s + 100] for s in range(0, 900, 100)), classes, queries, 7, 5, device="cpu")
    x = real.astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    _, idx = knn(((queries - mu) / sd).astype(np.float32), ((x - mu) / sd).astype(np.float32), 7)
    want = np.stack([np.bincount(classes[i], minlength=5) / 7 for i in idx])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.allclose(got.sum(1), 1) and (got.max(1) > 0.5).mean() > 0.8   # the blends follow the clusters
