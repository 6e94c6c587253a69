"""The map: fitting, projection, inversion, persistence (hash-checked), grid points and trust scores."""

import copy
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from dmd2report import embed
from dmd2report.embed import (Embedding, balanced_subsample, even_grid, fit_embedding, fit_reduction, load_embedding,
                              nearest_stored, save_embedding, trust_scores, trust_summary)
from dmd2report.errors import UserError

N_PER_CLASS, DIM = 150, 20
FIT = dict(pca_components=10, n_neighbors=10, min_dist=0.1, seed=3, fit_subsample=300, progress=False, reproducible=True)


def _clusters():
    """Three well-separated Gaussian clusters in 20-D, classes interleaved so input order matters."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, DIM)) * 12
    classes = np.tile(np.arange(3), N_PER_CLASS)
    features = (centres[classes] + rng.normal(size=(len(classes), DIM))).astype(np.float32)
    return features, classes


@pytest.fixture(scope="module")
def fitted():
    features, classes = _clusters()
    return features, classes, fit_embedding(features, classes, **FIT)


def _nearest_centroid(coords, classes):
    centroids = np.stack([coords[classes == c].mean(axis=0) for c in range(3)])
    return np.argmin(((coords[:, None] - centroids[None]) ** 2).sum(-1), axis=1)


def test_fit_shapes_params_and_balanced_subsample(fitted):
    features, classes, emb = fitted
    assert emb.coords.shape == (len(features), 2) and emb.coords.dtype == np.float32
    assert np.isfinite(emb.coords).all()
    # N = 450 > fit_subsample = 300: the UMAP is fitted on 100 rows of each class, the rest projected
    assert len(emb.fit_index) == 300 and np.bincount(classes[emb.fit_index]).tolist() == [100, 100, 100]
    np.testing.assert_array_equal(emb.coords[emb.fit_index], emb.umap.embedding_)
    # fitted on the exact k-NN graph (each row itself first): no pynndescent index built, none saved
    assert emb.umap._knn_search_index is None and (emb.umap._knn_indices[:, 0] == np.arange(300)).all()
    assert emb.params["pca_components"] == 10 and emb.n_components == 10 and emb.n_features == DIM
    assert emb.reduce(features).shape == (len(features), 10)


def test_same_seed_same_map(fitted):
    # embedding.reproducible = true: the seeded one-thread UMAP on the exact k-NN graph (PCA start) and the
    # projection give the same map, bit for bit, fitted and projected points alike
    features, classes, emb = fitted
    assert emb.params["reproducible"] is True and emb.params["projection"] == "fast" and emb.params["init"] == "pca"
    again = fit_embedding(features, classes, **FIT)
    np.testing.assert_array_equal(again.coords, emb.coords)
    np.testing.assert_array_equal(again.fit_index, emb.fit_index)


def test_unseeded_map_uses_every_core_and_stays_a_good_map(fitted, monkeypatch):
    features, classes, emb = fitted
    default = {k: v for k, v in FIT.items() if k != "reproducible"}   # embedding.reproducible = false
    # a small fit runs on one thread, seeded all the same (faster than umap-learn's parallel layout there)
    small = fit_embedding(features, classes, **default)
    assert small.umap.n_jobs == 1 and small.params["parallel"] is False
    np.testing.assert_array_equal(small.coords, fit_embedding(features, classes, **default).coords)
    # from PARALLEL_MIN_POINTS fitted points: every core, no seed
    monkeypatch.setattr(embed, "PARALLEL_MIN_POINTS", 300)
    fast = fit_embedding(features, classes, **default)
    assert fast.umap.random_state is None and fast.umap.n_jobs == -1 and fast.params["parallel"] is True
    assert fast.params["reproducible"] is False
    # not reproducible, but the same subsample and reduction, and the clusters stay apart
    np.testing.assert_array_equal(fast.fit_index, emb.fit_index)
    np.testing.assert_array_equal(fast.reduce(features), emb.reduce(features))
    assert (_nearest_centroid(fast.coords, classes) == classes).all()


def test_separated_clusters_stay_separated(fitted):
    _, classes, emb = fitted
    # every point, fitted or projected, is nearer its own cluster's centre on the map than any other
    assert (_nearest_centroid(emb.coords, classes) == classes).all()


def test_transform_of_fitted_points_lands_near_their_coordinates(fitted):
    features, classes, emb = fitted
    idx = emb.fit_index[:60]
    projected = emb.transform(features[idx], batch_size=25, progress=False)
    assert projected.shape == (60, 2)
    extent = np.ptp(emb.coords, axis=0).max()
    assert np.median(np.linalg.norm(projected - emb.coords[idx], axis=1)) < 0.05 * extent
    # and on the right island: nearer its own cluster's fitted points than any other cluster's
    dist = np.stack([np.linalg.norm(projected[:, None] - emb.coords[classes == c][None], axis=2).min(1)
                     for c in range(3)], axis=1)
    assert (dist.argmin(axis=1) == classes[idx]).all()


def test_transform_refuses_features_of_another_width(fitted):
    _, _, emb = fitted
    with pytest.raises(UserError, match="20 features"):
        emb.transform(np.zeros((4, DIM + 1), np.float32), progress=False)


def test_inverse_returns_near_the_original_features(fitted):
    features, _, emb = fitted
    rng = np.random.default_rng(1)
    idx = rng.choice(emb.fit_index, 20, replace=False)
    inverted = emb.inverse(emb.coords[idx])
    assert inverted.shape == (20, DIM) and inverted.dtype == np.float32
    reduced, back = emb.reduce(features), emb.reduce(inverted)
    own = np.linalg.norm(back - reduced[idx], axis=1)
    other = np.linalg.norm(back - reduced[rng.permutation(len(features))[:20]], axis=1)
    assert np.median(own) < 0.5 * np.median(other)


def test_inverse_of_points_off_the_map_uses_the_nearest_fitted_point(fitted):
    _, _, emb = fitted
    far = emb.coords.max(axis=0) + 100.0
    assert not emb.inside(far[None])[0] and emb.inside(emb.coords[emb.fit_index[:5]]).all()
    nearest = emb.umap.embedding_[np.argmin(np.linalg.norm(emb.umap.embedding_ - far, axis=1))]
    np.testing.assert_allclose(emb.inverse_reduced(far[None]), emb.inverse_reduced(nearest[None]), atol=1e-4)


def test_fit_refuses_nan_and_tiny_sets():
    with pytest.raises(UserError, match="NaN"):
        fit_embedding(np.array([[0.0, 1.0]] * 5 + [[np.nan, 0.0]]), None, progress=False)
    with pytest.raises(UserError, match="at least 4"):
        fit_embedding(np.zeros((3, 2)), None, progress=False)


def test_balanced_subsample_shares_out_small_classes_and_is_seeded():
    classes = np.array([0] * 5 + [1] * 100 + [2] * 100)
    pick = balanced_subsample(classes, 105, seed=7)
    assert np.bincount(classes[pick]).tolist() == [5, 50, 50] and len(np.unique(pick)) == 105
    np.testing.assert_array_equal(pick, balanced_subsample(classes, 105, seed=7))
    assert not np.array_equal(pick, balanced_subsample(classes, 105, seed=8))
    assert np.bincount(classes[balanced_subsample(classes, 31, seed=0)]).tolist() in ([5, 13, 13], [5, 14, 12], [5, 12, 14])
    np.testing.assert_array_equal(balanced_subsample(classes, 500, seed=0), np.arange(205))


# ---------------------------------------------------------------- streaming reduction (issue 20)


def _structured(n, dim=40, seed=0):
    """Correlated features with a decaying spectrum, an offset far from 0 (so a naive E[x^2] - E[x]^2
    would cancel badly) and one constant column (sklearn keeps its scale at 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) @ (rng.normal(size=(dim, dim)) * np.exp(-np.arange(dim) / 6)[:, None])
    x = (x + 50.0).astype(np.float32)
    x[:, 7] = 3.25
    return x


def test_streaming_pca_equals_the_in_memory_fit(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = _structured(3000)
    # the reference in float64 (sklearn keeps float32 input in float32): exact up to rounding
    scaler = StandardScaler().fit(x.astype(np.float64))
    pca = PCA(n_components=12, svd_solver="full").fit(scaler.transform(x.astype(np.float64)))
    # chunks as a store gives them: memory-mapped .npy blocks of uneven size
    bounds = [0, 700, 1400, 2999, 3000]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        np.save(tmp_path / f"{i}.npy", x[a:b])
    chunks = lambda: (np.load(tmp_path / f"{i}.npy", mmap_mode="r") for i in range(4))  # noqa: E731
    for source in (x, chunks):
        emb = fit_reduction(source, 12, device="cpu", progress=False)
        np.testing.assert_allclose(emb.scaler.mean_, scaler.mean_, rtol=1e-10)
        np.testing.assert_allclose(emb.scaler.scale_, scaler.scale_, rtol=1e-8)
        assert emb.scaler.scale_[7] == 1.0
        np.testing.assert_allclose(emb.pca.explained_variance_, pca.explained_variance_, rtol=1e-8)
        np.testing.assert_allclose(emb.pca.explained_variance_ratio_, pca.explained_variance_ratio_, rtol=1e-8)
        # same axes with the same signs (largest coordinate positive, sklearn's convention)
        np.testing.assert_allclose(emb.pca.components_, pca.components_, atol=1e-8)
        np.testing.assert_allclose(emb.reduce(x), pca.transform(scaler.transform(x)), atol=2e-4)
        # and back: the inverse of the reduction is sklearn's
        z = emb.reduce(x[:5])
        np.testing.assert_allclose(emb.scaler.inverse_transform(emb.pca.inverse_transform(z)),
                                   scaler.inverse_transform(pca.inverse_transform(z)), rtol=1e-5, atol=1e-4)
    assert emb.params == {"pca_components": 12, "seed": 0, "n_fitted": 3000, "n_features": 40}
    # the rows of every block are checked: a NaN is a UserError naming its row in the whole set
    bad = x.copy()
    bad[2100, 3] = np.nan
    with pytest.raises(UserError, match="row 2100"):
        fit_reduction(lambda: (bad[a:b] for a, b in zip(bounds, bounds[1:])), 12, device="cpu", progress=False)


# ---------------------------------------------------------------- the fast projection (issue 20)


def _new_draws(n_per_class=60, seed=5):
    """Fresh samples of the three clusters of `_clusters` (same centres, new noise)."""
    centres = np.random.default_rng(0).normal(size=(3, DIM)) * 12
    classes = np.tile(np.arange(3), n_per_class)
    noise = np.random.default_rng(seed).normal(size=(len(classes), DIM))
    return (centres[classes] + noise).astype(np.float32), classes


def _agreement(emb, fitted_red, fitted_2d, new):
    """(median |fast - umap| as a share of the map's diagonal, trust fast, trust umap) for new points."""
    fast = emb.transform(new, method="fast", progress=False)
    slow = emb.transform(new, method="umap", progress=False)
    diag = float(np.linalg.norm(np.ptp(emb.umap.embedding_, axis=0)))
    red = emb.reduce(new)
    trust = [trust_scores(red, p, fitted_red, fitted_2d, k=10, device="cpu").mean() for p in (fast, slow)]
    return float(np.median(np.linalg.norm(fast - slow, axis=1)) / diag), trust[0], trust[1], fast


def test_fast_projection_agrees_with_umap_transform_on_clusters(fitted):
    features, _, emb = fitted
    new, classes = _new_draws()
    share, trust_fast, trust_umap, fast = _agreement(emb, emb.reduce(features), emb.coords, new)
    assert share < 0.02, share          # measured 0.8% of the diagonal
    assert trust_fast >= trust_umap - 0.02, (trust_fast, trust_umap)
    assert (_nearest_centroid(fast, classes) == classes).all()


def test_fast_projection_agrees_with_umap_transform_on_a_curved_manifold():
    # 20 classes along a curve in 40-D with within-class structure: neighbouring classes touch, so
    # where a point lands between them is decided by the layout epochs, not by the clusters alone
    rng = np.random.default_rng(11)
    t = np.linspace(0, 3 * np.pi, 20)
    centres = np.concatenate([np.stack([np.cos(t), np.sin(t), t / 3], 1) * 6, rng.normal(size=(20, 5))], 1)
    mix = rng.normal(size=(8, 40)) / 3

    def draw(n):
        c = rng.integers(0, 20, n)
        z = centres[c] + 0.6 * rng.normal(size=(n, 8))
        return (np.tanh(z @ mix) + 0.05 * rng.normal(size=(n, 40))).astype(np.float32), c

    (x, c), (new, _) = draw(1500), draw(400)
    emb = fit_embedding(x, c, **(FIT | {"fit_subsample": 1000}))
    share, trust_fast, trust_umap, _ = _agreement(emb, emb.reduce(x), emb.coords, new)
    assert share < 0.03, share
    assert trust_fast >= trust_umap - 0.02, (trust_fast, trust_umap)


def test_fast_projection_is_deterministic_and_independent_of_the_other_points(fitted):
    _, _, emb = fitted
    new, _ = _new_draws()
    red = emb.reduce(new)
    first = emb.project(red, progress=False)
    np.testing.assert_array_equal(emb.project(red, progress=False), first)
    # a point's random state is the seed and its own start: projecting a subset gives the same rows
    pick = np.arange(3, len(red), 7)
    np.testing.assert_array_equal(emb.project(red[pick], progress=False), first[pick])
    # zero epochs: the membership-weighted mean of the nearest fitted points, inside their box
    init = emb.project(red, n_epochs=0, progress=False)
    assert np.isfinite(init).all() and not np.array_equal(init, first)
    assert (init >= emb.umap.embedding_.min(0) - 1e-4).all() and (init <= emb.umap.embedding_.max(0) + 1e-4).all()
    # a fitted point's own features start it on its own place
    on = emb.project(emb.reduce(_clusters()[0][emb.fit_index[:10]]), n_epochs=0, progress=False)
    np.testing.assert_allclose(on, emb.umap.embedding_[:10], atol=1e-6)


def test_umap_option_uses_umap_transform(fitted, monkeypatch):
    features, classes, emb = fitted
    # a fast map carries no search index (test_fit_shapes...): umap's transform is given the exact search on first use
    emb = copy.copy(emb)
    emb.umap = copy.copy(emb.umap)
    emb.umap._knn_search_index = None
    calls = []
    real = emb.umap.transform
    monkeypatch.setattr(emb.umap, "transform", lambda x: calls.append(len(x)) or real(x), raising=False)
    emb.transform(features[:30], method="umap", batch_size=20, progress=False)
    assert calls == [20, 10] and isinstance(emb.umap._knn_search_index, embed.ExactSearchIndex)
    # its answers are the exact neighbours, nearest first
    new = emb.reduce(features[:5])
    idx, dist = emb.umap._knn_search_index.query(new, 4)
    brute = np.linalg.norm(new[:, None] - emb.umap._raw_data[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-4, atol=1e-4)
    emb.transform(features[:30], method="fast", progress=False)
    assert calls == [20, 10]
    # a map fitted with projection="umap" uses umap-learn's own search and transform
    emb_umap = fit_embedding(features, classes, **(FIT | {"projection": "umap"}))
    assert emb_umap.params["projection"] == "umap" and emb_umap.umap.knn_dists is None
    assert (_nearest_centroid(emb_umap.coords, classes) == classes).all()
    with pytest.raises(UserError, match="fast or umap"):
        fit_embedding(features, classes, **(FIT | {"projection": "exact"}))


def test_a_metric_knn_does_not_search_falls_back_to_umap(fitted, caplog):
    features, classes, _ = fitted
    emb = fit_embedding(features, classes, **(FIT | {"metric": "manhattan"}))
    assert emb.params["projection"] == "umap" and "Euclidean distances only" in caplog.text
    assert np.isfinite(emb.coords).all()


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted, tmp_path):
    features, _, emb = fitted
    path = tmp_path / "maps" / "midblock.umap.pkl"
    digest = save_embedding(emb, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    loaded = load_embedding(path, digest)
    assert isinstance(loaded, Embedding)
    np.testing.assert_array_equal(loaded.coords, emb.coords)
    np.testing.assert_allclose(loaded.transform(features[:10], progress=False),
                               emb.transform(features[:10], progress=False), atol=1e-6)


def test_tampered_map_is_refused(fitted, tmp_path):
    _, _, emb = fitted
    path = tmp_path / "map.pkl"
    digest = save_embedding(emb, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="map.pkl.*differs"):
        load_embedding(path, digest)


class _Payload:
    """Unpickling this creates a file: the stand-in for a malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_foreign_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "map.pkl"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UserError, match="refusing"):
        load_embedding(path, hashlib.sha256(b"what the tool recorded").hexdigest())
    with pytest.raises(UserError, match="no valid SHA-256"):
        load_embedding(path, "")
    assert not marker.exists()
    # the payload is live: were its hash the recorded one, loading would run it
    with pytest.raises(UserError, match="not a fitted map"):
        load_embedding(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert marker.exists()


def test_missing_map_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="absent.pkl.*not found"):
        load_embedding(tmp_path / "absent.pkl", "0" * 64)


# ---------------------------------------------------------------- grid and neighbours


def test_even_grid_keeps_only_occupied_cells():
    # a full lattice on [0,1]^2: every grid point is kept, at the expected places
    lattice = np.stack(np.meshgrid(np.linspace(0, 1, 41), np.linspace(0, 1, 41)), -1).reshape(-1, 2)
    points, cells = even_grid(lattice, 5, margin=0.0, return_cells=True)
    assert points.shape == (25, 2) and cells.tolist()[:6] == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0]]
    np.testing.assert_allclose(points[:5], [[0, 0], [0.25, 0], [0.5, 0], [0.75, 0], [1, 0]], atol=1e-6)
    # data in a left strip and a top-right corner: the empty middle of the box is dropped
    rng = np.random.default_rng(0)
    strip = rng.uniform([0, 0], [0.2, 1], size=(400, 2))
    corner = rng.uniform([0.8, 0.8], [1, 1], size=(100, 2))
    points = even_grid(np.concatenate([strip, corner]), 10, margin=0.05)
    assert 0 < len(points) < 100
    assert not ((points[:, 0] > 0.3) & (points[:, 0] < 0.7)).any()
    assert ((points[:, 0] > 0.75) & (points[:, 1] > 0.75)).any() and (points[:, 0] < 0.25).sum() >= 10


def _ranked(query, ref, exclude_self=False):
    """All reference rows of each query, nearest first, equal distances by lower index (float64 brute force
    on the float32 points, as knn.py computes them)."""
    q = np.asarray(query, np.float32).astype(np.float64)
    r = np.asarray(ref, np.float32).astype(np.float64)
    d = np.sqrt(np.square(q[:, None] - r[None]).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), d.shape), d), axis=1)
    return order, np.take_along_axis(d, order, 1)


def test_nearest_stored_matches_a_full_sort_with_ties():
    rng = np.random.default_rng(2)
    # map points on an integer grid (ties at every distance) and random ones; queries on and off the grid
    coords = np.concatenate([rng.integers(0, 8, size=(300, 2)), rng.normal(size=(100, 2)) * 4]).astype(np.float32)
    query = np.concatenate([rng.integers(0, 8, size=(40, 2)) + 0.5 * rng.integers(0, 2, size=(40, 2)),
                            rng.normal(size=(30, 2)) * 4]).astype(np.float32)
    idx, dist = nearest_stored(query, coords, k=6)
    ref_i, ref_d = _ranked(query, coords)
    np.testing.assert_array_equal(idx, ref_i[:, :6])
    np.testing.assert_allclose(dist, ref_d[:, :6], rtol=1e-6)
    near, d = nearest_stored(np.array([[0.1, 0.0], [2.9, 3.0]]), np.array([[0, 0], [1, 1], [3, 3]]), k=2)
    assert near.tolist() == [[0, 1], [2, 1]] and d[0, 0] == pytest.approx(0.1)
    # equidistant from [1, 1] and [3, 3]: the lower index first
    near, _ = nearest_stored(np.array([[2.0, 2.0]]), np.array([[3, 3], [1, 1], [3, 3], [0, 0]]), k=2)
    assert near.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="k=5"):
        nearest_stored(query, coords[:4], k=5)


# ---------------------------------------------------------------- trust


def test_trust_is_one_when_the_map_is_the_feature_space_and_low_when_shuffled():
    rng = np.random.default_rng(4)
    ref, query = rng.normal(size=(400, 2)), rng.normal(size=(100, 2))
    assert (trust_scores(query, query, ref, ref, k=10) == 1).all()
    assert (trust_scores(ref, ref, ref, ref, k=10, exclude_self=True) == 1).all()
    shuffled = ref[rng.permutation(len(ref))]
    low = trust_scores(ref, shuffled, ref, shuffled, k=10, exclude_self=True)
    assert low.shape == (400,) and low.mean() < 0.1


def test_trust_by_hand():
    ref_feats = np.array([[0.0], [1.0], [10.0], [11.0]])
    ref_map = np.array([[0.0], [10.0], [1.0], [11.0]])  # the map swaps references 1 and 2
    # query at 0.4: nearest 2 in features {0, 1}, on the map {0, 2}: one of two kept
    assert trust_scores(np.array([[0.4]]), np.array([[0.4]]), ref_feats, ref_map, k=2).tolist() == [0.5]
    # excluding self: every reference's single nearest neighbour changes on the map ...
    assert trust_scores(ref_feats, ref_map, ref_feats, ref_map, k=1, exclude_self=True).tolist() == [0, 0, 0, 0]
    # ... with k=2, 0 keeps {1, 2}, 1 keeps {2} of {0, 2}, 2 keeps {1} of {3, 1}, 3 keeps {2, 1}
    assert trust_scores(ref_feats, ref_map, ref_feats, ref_map, k=2, exclude_self=True).tolist() == [1, 0.5, 0.5, 1]
    with pytest.raises(UserError, match="k=4"):
        trust_scores(ref_feats, ref_map, ref_feats, ref_map, k=4, exclude_self=True)


def _trust_brute_force(query_feats, query_2d, ref_feats, ref_2d, k, exclude_self=False):
    in_features = _ranked(query_feats, ref_feats, exclude_self)[0][:, :k]
    on_map = _ranked(query_2d, ref_2d, exclude_self)[0][:, :k]
    return np.array([len(set(a) & set(b)) / k for a, b in zip(in_features, on_map)], np.float32)


@pytest.mark.parametrize("k", [1, 5, 12])
def test_trust_equals_the_brute_force_definition_with_ties(k):
    rng = np.random.default_rng(6)
    # features: 12-D integer grid points with copies (exact ties in feature space); map: a noisy 2-D
    # projection rounded to a grid (exact ties on the map too)
    feats = rng.integers(-1, 2, size=(240, 12)).astype(np.float32)
    feats = np.concatenate([feats, feats[:40]])
    proj = feats @ rng.normal(size=(12, 2)) + rng.normal(size=(len(feats), 2)) * 0.3
    map_2d = np.round(proj * 2).astype(np.float32) / 2
    q_feats = rng.integers(-1, 2, size=(70, 12)).astype(np.float32)
    q_2d = (np.round((q_feats @ rng.normal(size=(12, 2))) * 2) / 2).astype(np.float32)
    got = trust_scores(q_feats, q_2d, feats, map_2d, k=k, device="cpu")
    np.testing.assert_array_equal(got, _trust_brute_force(q_feats, q_2d, feats, map_2d, k))
    got = trust_scores(feats, map_2d, feats, map_2d, k=k, exclude_self=True, device="cpu")
    want = _trust_brute_force(feats, map_2d, feats, map_2d, k, exclude_self=True)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and 0 < got.mean() < 1


def test_trust_summary():
    s = trust_summary(np.array([0.0, 0.5, 0.5, 1.0]))
    assert s["n"] == 4 and s["mean"] == 0.5 and s["median"] == 0.5 and s["min"] == 0.0
    assert trust_summary(np.array([])) == {"n": 0}


def test_projection_layout_is_umaps_loop_on_any_number_of_threads():
    """The per-point kernel gives umap-learn's one-threaded layout (map fixed) exactly, on 1 or 2 threads."""
    import numba
    from umap.layouts import optimize_layout_euclidean

    from dmd2report.embed import _layout_points

    rng = np.random.default_rng(3)
    fitted = rng.normal(size=(300, 2)).astype(np.float32) * 5
    m, k = 40, 6
    tail = rng.integers(0, 300, (m, k)).astype(np.int32)
    rel = rng.uniform(0.05, 1.0, (m, k))
    rel[:, 0] = 1.0
    head = np.repeat(np.arange(m, dtype=np.int32), k)
    eps = (1.0 / rel).ravel()
    start = fitted[tail[:, 0]] + rng.normal(size=(m, 2)).astype(np.float32)
    seed_state = np.array([12345, 678, 91011], np.int64)
    a, b, gamma, alpha, neg, epochs = 1.58, 0.9, 1.0, 0.25, 5.0, 50

    want = optimize_layout_euclidean(start.copy(), fitted.copy(), head, tail.ravel(), epochs, len(fitted), eps, a, b,
                                     seed_state.copy(), gamma, alpha, neg, parallel=False, move_other=False)
    offsets = np.arange(0, m * k + 1, k, dtype=np.int64)
    got = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        states = np.full((m, 3), seed_state, np.int64) + start[:, 0].astype(np.float64).view(np.int64).reshape(-1, 1)
        got.append(_layout_points()(start.copy(), fitted, offsets, tail.ravel(), eps, a, b, states, gamma, alpha,
                                    neg, epochs))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    assert np.abs(got[0] - start).max() > 0.01    # the layout moved the points


def test_the_pca_factorisation_runs_on_one_thread_and_restores_torch_threads():
    # torch's LAPACK follows torch's thread count, which threadpoolctl cannot see (on 2 busy cores a
    # 768 x 768 eigh on torch's threads took about 100 times as long as on one), so the context sets both
    import torch

    from dmd2report.device import one_blas_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)   # more than one, on any machine
    seen = []
    try:
        with one_blas_thread(torch_cpu=True):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())
        with one_blas_thread():
            seen.append(torch.get_num_threads())   # numpy's BLAS only: torch's kernels keep their threads
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2, 2]


def test_umap_kernels_are_cached_on_disk():
    # umap-learn compiles its numba functions in every process (8.5 s of a small fit on 2 cores) unless
    # numba's disk cache is on for them: the fit and projection switch it on before using umap-learn
    from numba.core.caching import NullCache

    from dmd2report.embed import _umap

    umap = _umap()
    assert not isinstance(umap.layouts._nb_optimize_layout_euclidean_single_epoch_parallel._cache, NullCache)
    assert not isinstance(umap.umap_.smooth_knn_dist._cache, NullCache)
