import numpy as np
import pytest

from dmd2report.knn import knn, within_radius


def _full_dist(a, b):
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # Offset from the origin on purpose: the product form cancels badly there without centring.
    x = (rng.normal(size=(400, 24)) + 30).astype(np.float32)
    y = (rng.normal(size=(250, 24)) * 1.2 + 30).astype(np.float32)
    return x, y


@pytest.mark.parametrize("block", [1 << 28, 20_000, 700])   # whole base, query chunks, base chunks too
def test_knn_matches_full_matrix(data, block):
    x, y = data
    d, i = knn(y, x, 5, device="cpu", max_block_bytes=block)
    full = _full_dist(y, x)
    ref = np.argsort(full, axis=1)[:, :5]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(d, np.take_along_axis(full, ref, 1), rtol=1e-6)


@pytest.mark.parametrize("block", [1 << 28, 700])
def test_knn_exclude_self(data, block):
    x, _ = data
    d, i = knn(x, None, 3, exclude_self=True, device="cpu", max_block_bytes=block)
    full = _full_dist(x, x)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(i, np.argsort(full, axis=1)[:, :3])
    assert not (i == np.arange(len(x))[:, None]).any()


def test_knn_duplicates_are_other_points_at_zero():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], np.float32)
    d, i = knn(x, None, 1, exclude_self=True, device="cpu")
    # point 0's nearest other point is its duplicate 1 at distance 0, and vice versa; point 2 -> 5.
    np.testing.assert_array_equal(d[:, 0], [0.0, 0.0, 5.0])
    np.testing.assert_array_equal(i[:, 0], [1, 0, 0])


def test_knn_rejects_too_large_k():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="k=3"):
        knn(x, None, 3, exclude_self=True, device="cpu")


@pytest.mark.parametrize("block", [1 << 28, 700])
def test_within_radius_matches_full_matrix(data, block):
    x, y = data
    full = _full_dist(y, x)
    r = np.sort(_full_dist(x, x), axis=1)[:, 3].astype(np.float32)   # r_3 of the base (column 0 is self)
    res = within_radius(y, x, np.stack([r, 2 * r], 1), radius_of="base", cap=4, device="cpu",
                        max_block_bytes=block)
    np.testing.assert_array_equal(res.counts[:, 0], (full <= r[None, :]).sum(1))
    np.testing.assert_array_equal(res.counts[:, 1], (full <= 2 * r[None, :]).sum(1))
    masked = np.where(full <= r[None, :], full, np.inf)
    order = np.argsort(masked, axis=1)[:, :4]
    expect = np.where(np.isinf(np.take_along_axis(masked, order, 1)), -1, order)
    np.testing.assert_array_equal(res.nearest, expect)
    # radii on the query side (coverage)
    rq = np.full(len(y), 5.0, np.float32)
    res = within_radius(y, x, rq, radius_of="query", device="cpu", max_block_bytes=block)
    np.testing.assert_array_equal(res.counts, (full <= 5.0).sum(1))


def test_within_radius_ties_and_copies_count_inside():
    # 1-D, base radii: x=0 (r=1), x=10 (r=0). Query 1 is at exactly r from x=0; query 10 is a copy
    # of x=10 whose radius is 0; query 10.5 is outside both.
    x = np.array([[0.0], [10.0]], np.float32)
    q = np.array([[1.0], [10.0], [10.5], [-1.0]], np.float32)
    res = within_radius(q, x, np.array([1.0, 0.0], np.float32), device="cpu")
    np.testing.assert_array_equal(res.counts, [1, 1, 0, 1])
    # copies of widely spread points with radius 0: the product form alone leaves ~0.1 of rounding
    # on the squared distance here, the direct re-check inside the error band gives exactly 0.
    base = (np.random.default_rng(1).normal(size=(50, 64)) * 100).astype(np.float32)
    res = within_radius(base[:10].copy(), base, np.zeros(50, np.float32), device="cpu")
    np.testing.assert_array_equal(res.counts, np.ones(10))
