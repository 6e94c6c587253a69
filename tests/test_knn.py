import numpy as np
import pytest
import torch

from dmd2report import knn as knn_module
from dmd2report.knn import knn, knn_kdtree, within_radius


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


# ---------------------------------------------------------------- exact ties, both paths


def _reference(q, b, k, exclude_self=False):
    """Brute force in float64 on the float32 points: all pairs, sorted by (distance, index)."""
    q = np.asarray(q, np.float32).astype(np.float64)
    b = q if b is None else np.asarray(b, np.float32).astype(np.float64)
    e = np.square(q[:, None, :] - b[None, :, :]).sum(-1)
    if exclude_self:
        np.fill_diagonal(e, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(b)), e.shape), e), axis=1)[:, :k]
    return np.sqrt(np.take_along_axis(e, order, 1)).astype(np.float32), order


def _tied_sets(dim, seed=0):
    """Integer-grid points (many exactly equal distances) with exact copies, and offset Gaussian points
    with copies: as (queries, base)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(-2, 3, size=(260, dim)).astype(np.float32)
    grid = np.concatenate([grid, grid[rng.choice(260, 60)]])[rng.permutation(320)]   # copies, shuffled in
    gauss = (rng.normal(size=(300, dim)) * 3 + 40).astype(np.float32)
    gauss = np.concatenate([gauss, gauss[:40], gauss[:10]])
    return [(rng.integers(-2, 3, size=(90, dim)).astype(np.float32), grid), (gauss[::3].copy(), gauss)]


@pytest.fixture
def count_exact_passes(monkeypatch):
    """How many queries went to the torch path's exact second pass (ties across the candidate cut)."""
    seen = []
    original = knn_module._threshold_pass

    def spy(p, rows, *args):
        seen.append(len(rows))
        return original(p, rows, *args)
    monkeypatch.setattr(knn_module, "_threshold_pass", spy)
    return seen


@pytest.mark.parametrize("dim", [1, 2, 7, 24])           # 1 and 2: KD-tree; above: chunked torch
@pytest.mark.parametrize("block", [1 << 28, 6_000, 700])  # whole base; query blocks; base blocks too
@pytest.mark.parametrize("k", [1, 13])
def test_knn_exact_with_ties_by_lower_index(dim, block, k, count_exact_passes):
    for queries, base in _tied_sets(dim):
        for q, b, exclude_self in ((queries, base, False), (base, None, True)):
            d, i = knn(q, b, k, exclude_self=exclude_self, device="cpu", max_block_bytes=block)
            ref_d, ref_i = _reference(q, b, k, exclude_self)
            np.testing.assert_array_equal(i, ref_i)
            np.testing.assert_allclose(d, ref_d, rtol=1e-6, atol=0)
            assert d.dtype == np.float32 and i.dtype == np.int64
            assert (np.diff(d, axis=1) >= 0).all()
    if dim > 2 and k > 1:
        assert sum(count_exact_passes) > 0    # the grid's ties did reach the exact second pass


def test_knn_tie_at_the_kth_place_keeps_the_lower_index():
    # query at the origin; base: 2 at distance 2, then distance-1 points at indices 1, 3, 4, 6 and copies of
    # the query at 5 and 7. k = 4 cuts through the distance-1 ties: the lower indices 1, 3 must be kept.
    for dim in (2, 4):
        e = np.eye(dim, dtype=np.float32)
        base = np.stack([2 * e[0], e[0], 2 * e[1], -e[0], e[1], 0 * e[0], -e[1], 0 * e[0]])
        q = np.zeros((1, dim), np.float32)
        d, i = knn(q, base, 4, device="cpu")
        assert i.tolist() == [[5, 7, 1, 3]] and d.tolist() == [[0, 0, 1, 1]]
        # the same among the points themselves: point 5's nearest other points are its copy 7, then 1, 3, 4
        d, i = knn(base, None, 3, exclude_self=True, device="cpu")
        assert i[5].tolist() == [7, 1, 3] and i[7].tolist() == [5, 1, 3]


def test_knn_many_copies_beyond_the_candidates():
    # 100 copies of one point (more than k + slack): the first k copies by index, on both paths
    for dim in (2, 16):
        rng = np.random.default_rng(3)
        base = np.concatenate([rng.normal(size=(50, dim)) + 5, np.zeros((100, dim)), rng.normal(size=(50, dim))])
        base = base.astype(np.float32)[np.r_[0:50, 150:200, 50:150]]      # copies at indices 100..199
        d, i = knn(np.zeros((3, dim), np.float32), base, 10, device="cpu", max_block_bytes=2_000)
        assert (i == np.arange(100, 110)).all() and (d == 0).all()
        d, i = knn(base, None, 10, exclude_self=True, device="cpu", max_block_bytes=2_000)
        np.testing.assert_array_equal(i[150], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109])
        np.testing.assert_array_equal(i[100], np.arange(101, 111))


@pytest.mark.parametrize("block", [1 << 28, 900])
def test_torch_and_kdtree_paths_agree_on_the_map(block):
    rng = np.random.default_rng(5)
    pts = np.concatenate([rng.integers(0, 6, size=(200, 2)), rng.normal(size=(150, 2)) * 3]).astype(np.float32)
    pts = np.concatenate([pts, pts[:30]])
    with torch.no_grad():
        p = knn_module._Prepared(pts, None, torch.device("cpu"))
        td, ti = knn_module.knn_tensors(p, 9, True, block)
    kd, ki = knn_kdtree(pts, None, 9, exclude_self=True, max_block_bytes=block)
    np.testing.assert_array_equal(ti.numpy(), ki)
    np.testing.assert_array_equal(td.numpy(), kd)
    np.testing.assert_array_equal(ki, _reference(pts, None, 9, True)[1])


def test_knn_kdtree_checks_its_arguments():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="k=4"):
        knn(x, None, 4, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        knn(x, x, 1, exclude_self=True)
    with pytest.raises(ValueError, match="dimension"):
        knn(x, np.zeros((4, 3), np.float32), 1)


def test_radius_from_knn_is_inside_within_radius():
    # r_k(x) from knn and the test d(y, x) <= r_k(x) use one float32 distance: an exact copy of x's k-th
    # neighbour lies inside x's ball, whatever the rounding of the sum
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(300, 40)) * 50 + 7).astype(np.float32)
    d, i = knn(x, None, 4, exclude_self=True, device="cpu")
    copies = x[i[:, -1]]
    res = within_radius(copies, x, d[:, -1], radius_of="base", device="cpu", max_block_bytes=5_000)
    assert (res.counts >= 1).all()
    full = np.sqrt(np.square(copies[:, None].astype(np.float64) - x[None].astype(np.float64)).sum(-1))
    np.testing.assert_array_equal(res.counts, (full.astype(np.float32) <= d[None, :, -1]).sum(1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_matches_the_reference_with_ties():
    for queries, base in _tied_sets(24) + _tied_sets(5, seed=1):
        for q, b, ex in ((queries, base, False), (base, None, True)):
            d, i = knn(q, b, 8, exclude_self=ex, device="cuda", max_block_bytes=6_000)
            ref_d, ref_i = _reference(q, b, 8, ex)
            np.testing.assert_array_equal(i, ref_i)
            np.testing.assert_allclose(d, ref_d, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# Grouped searches and the fused ball counts (the measure stage's batched paths).

def _tied_points(rng, n, d, scale=2.0):
    """Points on a half-unit grid (exact distance ties) with a block of exact duplicates."""
    x = np.round(rng.normal(size=(n, d)) * scale) / 2
    x[10:20] = x[0]
    return x.astype(np.float32)


@pytest.mark.parametrize("block", [10**9, 5000])
def test_knn_grouped_equals_a_search_per_group(block):
    from dmd2report.knn import knn_grouped

    rng = np.random.default_rng(1)
    x = _tied_points(rng, 600, 6)
    g = rng.integers(0, 13, 600)
    g[g == 5] = 4          # a missing group id
    g[:3] = 77             # a group too small for k
    d, i = knn_grouped(x, g, 4, device="cpu", max_block_bytes=block)
    for c in np.unique(g):
        sel = np.flatnonzero(g == c)
        if len(sel) <= 4:
            assert (i[sel] == -1).all() and np.isinf(d[sel]).all()
            continue
        dr, ir = knn(x[sel], None, 4, exclude_self=True, device="cpu")
        np.testing.assert_array_equal(d[sel], dr)
        np.testing.assert_array_equal(i[sel], sel[ir])   # same ties: by the lower index inside the group


@pytest.mark.parametrize("block", [10**9, 3000])
@pytest.mark.parametrize("scale", [1, 6])   # k-NN balls; balls so wide that rows pass the CPU kernel's width
def test_radius_counts_equal_within_radius_and_knn(block, scale):
    from dmd2report.knn import radius_counts

    rng = np.random.default_rng(2)
    x = _tied_points(rng, 500, 5)
    y = np.round((x[rng.integers(0, 500, 400)] + rng.normal(size=(400, 5)) * 0.3) * 2) / 2
    y[:40] = x[100:140]    # generated copies of real points: distance 0, and radii met exactly
    y = y.astype(np.float32)
    rx = knn(x, None, 5, exclude_self=True, device="cpu")[0][:, [2, 4]] * scale
    ry = knn(y, None, 3, exclude_self=True, device="cpu")[0][:, 2] * scale
    out = radius_counts(y, x, col_radii=rx, row_radius=ry, k=10, k_base=16, device="cpu", max_block_bytes=block)
    if scale > 1:
        assert np.median(out["row_counts"][:, 0]) > 40
    np.testing.assert_array_equal(out["row_counts"], within_radius(y, x, rx, radius_of="base", device="cpu").counts)
    np.testing.assert_array_equal(out["col_counts"][:, 1],
                                  within_radius(x, y, rx[:, 1], radius_of="query", device="cpu").counts)
    np.testing.assert_array_equal(out["col_counts_row"], within_radius(x, y, ry, radius_of="base", device="cpu").counts)
    kd, ki = knn(y, x, 10, device="cpu")
    np.testing.assert_array_equal(out["knn"][0], kd)
    np.testing.assert_array_equal(out["knn"][1], ki)
    # the base side's search from the same blocks, read by column: the reference's ties by lower index
    ref_d, ref_i = _reference(x, y, 16)
    np.testing.assert_array_equal(out["knn_base"][1], ref_i)
    np.testing.assert_allclose(out["knn_base"][0], ref_d, rtol=1e-6, atol=0)
    # against the definition: float32 distances from float64 sums, `<=`
    dist = np.sqrt(((y[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)).astype(np.float32)
    np.testing.assert_array_equal(out["row_counts"][:, 1], (dist <= rx[None, :, 1]).sum(1))
    np.testing.assert_array_equal(out["col_counts_row"], (dist <= ry[:, None]).sum(0))
    assert out["row_counts"][:40, 0].min() >= 1     # a copy lies in its own ball


def test_radius_counts_with_groups_equal_one_search_per_group():
    from dmd2report.knn import radius_counts

    rng = np.random.default_rng(3)
    x = _tied_points(rng, 500, 5)
    gx = rng.integers(0, 9, 500)
    y = np.round((x[rng.integers(0, 500, 300)] + rng.normal(size=(300, 5)) * 0.4) * 2).astype(np.float32) / 2
    gy = rng.integers(0, 11, 300)                  # groups 9 and 10 have no real points
    rx = knn(x, None, 5, exclude_self=True, device="cpu")[0][:, [2, 4]]
    rx[gx == 3] = np.nan                           # a group without radii: never inside
    ry = knn(y, None, 3, exclude_self=True, device="cpu")[0][:, 2]
    out = radius_counts(y, x, col_radii=rx, row_radius=ry, k=2, q_groups=gy, b_groups=gx, device="cpu",
                        max_block_bytes=4000)
    for c in range(11):
        sq, sb = np.flatnonzero(gy == c), np.flatnonzero(gx == c)
        if len(sb) == 0:
            assert (out["row_counts"][sq] == 0).all()
            continue
        if c == 3:
            assert (out["row_counts"][sq] == 0).all()
        else:
            r = within_radius(y[sq], x[sb], rx[sb], radius_of="base", device="cpu")
            np.testing.assert_array_equal(out["row_counts"][sq], r.counts)
        r = within_radius(x[sb], y[sq], ry[sq], radius_of="base", device="cpu")
        np.testing.assert_array_equal(out["col_counts_row"][sb], r.counts)
        kd, ki = knn(y[sq], x[sb], 2, device="cpu")
        np.testing.assert_array_equal(out["knn"][0][sq], kd)
        np.testing.assert_array_equal(out["knn"][1][sq], sb[ki])
    assert (out["col_counts"][gx == 3] == 0).all()


@pytest.mark.parametrize("seed_columns, max_candidates", [
    (10**9, 8192),   # narrow blocks: torch's top-k over every column
    (64, 8192),      # the seeded selection: thresholds from strided columns, the rest by comparison
    (64, 3),         # rows with more candidates than allowed: back to torch's top-k
])
def test_torch_block_path_equals_the_cpu_kernels(monkeypatch, seed_columns, max_candidates):
    """The block search of a GPU (torch on whole-base rows, `_block_topk`) gives what the CPU kernels give: run
    here on the CPU with the kernels switched off. Points in random order, sorted by cluster (a strided seed
    must not depend on the order), and on an integer grid (exact ties at every threshold)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 6)) * 8
    lab = np.sort(rng.integers(0, 12, 1500))
    sets = {
        "random": np.round(rng.normal(size=(1500, 6)) * 2).astype(np.float32),
        "sorted by cluster": (centres[lab] + rng.normal(size=(1500, 6))).astype(np.float32),
    }
    q = np.round(rng.normal(size=(300, 6)) * 2).astype(np.float32)
    for name, x in sets.items():
        expect = knn(q, x, 7, device="cpu"), knn(x, None, 5, exclude_self=True, device="cpu")
        with monkeypatch.context() as m:
            m.setattr(knn_module, "_kernels", lambda device: None)
            m.setattr(knn_module, "SEED_COLUMNS", seed_columns)
            m.setattr(knn_module, "MAX_CANDIDATES", max_candidates)
            got = knn(q, x, 7, device="cpu"), knn(x, None, 5, exclude_self=True, device="cpu")
        for (d0, i0), (d1, i1) in zip(expect, got):
            np.testing.assert_array_equal(i0, i1, err_msg=name)
            np.testing.assert_array_equal(d0, d1, err_msg=name)
        ref_d, ref_i = _reference(q, x, 7)
        np.testing.assert_array_equal(got[0][1], ref_i, err_msg=name)


def test_block_topk_keeps_the_smallest_of_every_row(monkeypatch):
    """`_block_topk` on a wide block: the same kk smallest values per row as torch's top-k, columns that hold
    them, with rows of infinities and exact ties."""
    monkeypatch.setattr(knn_module, "SEED_COLUMNS", 50)
    rng = np.random.default_rng(6)
    d2 = torch.from_numpy(np.round(rng.normal(size=(40, 1000)) * 3).astype(np.float32))
    d2[3] = float("inf")
    d2[5, 200:] = float("inf")
    v, j = knn_module._block_topk(d2.clone(), 9)
    ref_v, _ = torch.topk(d2, 9, dim=1, largest=False)
    torch.testing.assert_close(v, ref_v, rtol=0, atol=0)
    valid = j >= 0
    assert torch.equal(d2.gather(1, j.clamp(min=0))[valid], v[valid])
    assert torch.isinf(v[~valid]).all()
    assert all(len(set(row[row >= 0].tolist())) == int((row >= 0).sum()) for row in j)   # no column twice


@pytest.fixture
def tf32_on():
    """TF32 switched on (as `runtime.prepare` does for the model) for the test, the setting restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def test_tf32_stays_off_until_the_last_of_two_concurrent_searches_ends(tf32_on):
    """TF32 is one setting per process: with searches in two threads (the fit stage's background searches beside
    its projection), the first one to finish must not switch TF32 back on under the other."""
    import threading

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with knn_module._no_tf32():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with knn_module._no_tf32():
            second_in.set()
            first_out.wait(5)
            seen["while the second runs"] = torch.backends.cuda.matmul.allow_tf32

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert seen == {"while the second runs": False}
    assert torch.backends.cuda.matmul.allow_tf32 is True      # restored once both ended
