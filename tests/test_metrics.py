import json

import numpy as np
import pytest
import scipy.linalg

from dmd2report.metrics import fd_real_halves, frechet_distance, measure, real_halves, write_metrics_json

PROV = {"model_checksum": "sha256:abc", "data": "toy", "config_hash": "h1"}


def _col(v):
    return np.asarray(v, np.float32)[:, None]


def _overall(res, variant="v"):
    return {k: e["value"] for k, e in res["variants"][variant]["overall"].items()}


def test_hand_computed_1d():
    # X = 0 1 2 10 11 12, Y = 0.5 1.5 3; k_pr = 1, k_dc = 2.
    # r_1(X) = 1 1 1 1 1 1;  r_2(X) = 2 1 2 2 1 2;  r_1(Y) = 1 1 1.5.
    # precision: 0.5 (x=0 at .5), 1.5 (x=1 at .5), 3 (x=2 at exactly 1 = r_1: the <= tie) -> 3/3 = 1
    # recall: x=0 (y=.5 at .5 <= 1), x=1, x=2 (y=1.5 at .5) covered; 10, 11, 12 (>= 7 from y=3, r 1.5) not -> 1/2
    # density (k=2): x=0 r2: y .5, 1.5 -> 2; x=1 r1: .5, 1.5 -> 2; x=2 r2: .5(1.5), 1.5(.5), 3(1) -> 3;
    #   x=10..12: 0. Sum 7 -> 7 / (2 * 3) = 7/6
    # coverage (k=2): x=0, 1, 2 covered, 10, 11, 12 not -> 1/2
    x, y = _col([0, 1, 2, 10, 11, 12]), _col([0.5, 1.5, 3])
    res = measure(x, None, {"v": (y, None)}, feature_space="t", k_pr=1, k_dc=2, k_neighbours=2,
                  bootstrap=0, device="cpu")
    m = _overall(res)
    assert m["precision"] == 1.0
    assert m["recall"] == 0.5
    assert m["density"] == pytest.approx(7 / 6)
    assert m["coverage"] == 0.5
    arr = res["arrays"]["variants"]["v"]
    np.testing.assert_array_equal(arr["real_covered"], [1, 1, 1, 0, 0, 0])
    # x=2 (r_2 = 2) is covered by y=1.5 (d .5), y=3 (d 1), y=.5 (d 1.5): indices 1, 2, 0, nearest first
    np.testing.assert_array_equal(arr["real_covered_by"][2, :4], [1, 2, 0, -1])
    np.testing.assert_array_equal(arr["real_covered_by"][4], -1)
    # per generated sample: y=.5 in the balls of x=0, 1, 2; y=1.5 likewise; y=3 only in x=2's -> 3 3 1, / k
    np.testing.assert_array_equal(arr["gen_density"], np.array([3, 3, 1]) / 2)
    # neighbours for the panel: y=3's nearest real are x=2 (1), x=1 (2); nearest other generated y=1.5 (1.5)
    np.testing.assert_array_equal(arr["nn_real_idx"][2], [2, 1])
    np.testing.assert_allclose(arr["nn_real_dist"][2], [1, 2])
    np.testing.assert_array_equal(arr["nn_gen_idx"][2], [1, 0])
    np.testing.assert_allclose(arr["nn_gen_dist"][2], [1.5, 2.5])
    np.testing.assert_allclose(res["arrays"]["real"]["nn_real_dist"][3], [1, 2])   # x=10: 11 at 1, 12 at 2


def test_hand_computed_2d_default_k():
    # X: the 2x3 grid A(0,0) B(1,0) C(2,0) D(0,1) E(1,1) F(2,1).
    # r_3: corners A C D F -> sqrt2 (distances 1, 1, sqrt2, 2, sqrt5); middles B E -> 1 (1, 1, 1, sqrt2, sqrt2)
    # r_5: corners -> sqrt5; middles -> sqrt2.
    # Y: G1 (1, .5), G2 (5, 5), G3 (0, -1).
    # precision (k=3): G1 within .5 of B (r 1) yes; G2 no; G3 at 1 from A (r sqrt2) yes -> 2/3
    # density (k=5): G1 is inside all 6 balls (corners at sqrt1.25 <= sqrt5, middles at .5 <= sqrt2);
    #   G3: A (1), B (sqrt2 = r_5(B), tie), C (sqrt5 = r_5(C), tie), D (2 <= sqrt5) yes; E (sqrt5 > sqrt2),
    #   F (sqrt8) no -> 4; G2: 0. (6 + 4) / (5 * 3) = 2/3
    # coverage (k=5): G1 is inside every ball -> 1
    # recall (k=3): only 3 generated points, r_3(Y) undefined -> None
    x = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], np.float32)
    y = np.array([[1, 0.5], [5, 5], [0, -1]], np.float32)
    res = measure(x, None, {"v": (y, None)}, feature_space="t", bootstrap=0, device="cpu")
    m = _overall(res)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["density"] == pytest.approx(2 / 3)
    assert m["coverage"] == 1.0
    assert m["recall"] is None
    e = res["variants"]["v"]["overall"]["density"]
    assert (e["k"], e["n_real"], e["n_generated"], e["definition"]) == (5, 6, 3, "density")
    np.testing.assert_array_equal(res["arrays"]["variants"]["v"]["gen_density"] * 5, [6, 0, 4])


def test_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    res = measure(x, None, {"same": (x.copy(), None), "far": (x + 1000, None)}, feature_space="t",
                  bootstrap=0, device="cpu")
    same, far = _overall(res, "same"), _overall(res, "far")
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["fd"] == pytest.approx(0, abs=1e-6)
    assert far["precision"] == far["recall"] == far["density"] == far["coverage"] == 0.0
    assert far["fd"] == pytest.approx(8 * 1000**2, rel=1e-3)


def _reference_prdc(x, y, k_pr=3, k_dc=5):
    """Full-matrix float64 computation straight from the definitions."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    dxx, dyy, dyx = dist(x, x), dist(y, y), dist(y, x)
    rx = lambda k: np.sort(dxx, axis=1)[:, k]   # column 0 is the point itself
    ry = np.sort(dyy, axis=1)[:, k_pr]
    return {"precision": (dyx <= rx(k_pr)[None]).any(1).mean(),
            "recall": (dyx.T <= ry[None]).any(1).mean(),
            "density": (dyx <= rx(k_dc)[None]).sum() / (k_dc * len(y)),
            "coverage": (dyx.T <= rx(k_dc)[:, None]).any(1).mean()}


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(3)
    n_cls, d = 4, 12
    centres = rng.normal(size=(n_cls, d)) * 3
    rc = np.repeat(np.arange(n_cls), 60)
    x = (centres[rc] + rng.normal(size=(len(rc), d))).astype(np.float32)
    cond = np.repeat(np.arange(n_cls), 45)
    y = (centres[cond] * 0.9 + 1.3 * rng.normal(size=(len(cond), d))).astype(np.float32)
    return x, rc, y, cond


def test_chunked_path_matches_full_matrix_and_chunk_size(clustered):
    x, rc, y, cond = clustered
    ref = _reference_prdc(x, y)
    kw = dict(feature_space="t", bootstrap=20, device="cpu")
    big = measure(x, rc, {"v": (y, cond)}, **kw)
    small = measure(x, rc, {"v": (y, cond)}, max_block_bytes=3000, **kw)   # many query and base chunks
    for name, value in ref.items():
        assert _overall(big)[name] == pytest.approx(value, abs=1e-12), name
    assert big["variants"] == small["variants"]
    for key, a in big["arrays"]["variants"]["v"].items():
        np.testing.assert_array_equal(a, small["arrays"]["variants"]["v"][key], err_msg=key)
    # per-class scope: the same definitions on the class subsets
    sel_x, sel_y = rc == 2, cond == 2
    ref_c = _reference_prdc(x[sel_x], y[sel_y])
    scope = big["variants"]["v"]["per_class"]["2"]
    for name, value in ref_c.items():
        assert scope[name]["value"] == pytest.approx(value, abs=1e-12), name
        assert scope[name]["definition"] == name + "_in_class"
    assert scope["coverage_global"]["value"] == pytest.approx(
        big["arrays"]["variants"]["v"]["real_covered"][sel_x].mean())


def test_bootstrap_interval_contains_estimate_and_is_seeded(clustered):
    x, rc, y, cond = clustered
    a = measure(x, rc, {"v": (y, cond)}, feature_space="t", bootstrap=100, seed=5, device="cpu", per_class=False)
    b = measure(x, rc, {"v": (y, cond)}, feature_space="t", bootstrap=100, seed=5, device="cpu", per_class=False)
    c = measure(x, rc, {"v": (y, cond)}, feature_space="t", bootstrap=100, seed=6, device="cpu", per_class=False)
    for name in ("precision", "recall", "density", "coverage"):
        e = a["variants"]["v"]["overall"][name]
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
        assert e["ci_low"] < e["ci_high"], name
        assert b["variants"]["v"]["overall"][name] == e
    assert c["variants"]["v"]["overall"]["precision"]["ci_low"] != a["variants"]["v"]["overall"]["precision"]["ci_low"]


def test_intervals_depend_on_the_data_and_the_seed_alone(clustered):
    """The same generator on the same data gets the same intervals in any report: measured alone (a one-generator
    report's `class`) or as `<name>/class` beside another generator's sets, listed before or after it."""
    x, rc, y, cond = clustered
    other = y[::-1] + 0.3
    kw = dict(feature_space="t", bootstrap=50, seed=5, device="cpu", arrays=False)
    alone = measure(x, rc, {"class": (y, cond)}, **kw)["variants"]["class"]
    for sets in ({"demo/class": (y, cond), "step100/class": (other, cond)},
                 {"a-first/class": (other, cond), "z/uniform": (other, None), "demo/class": (y, cond)}):
        beside = measure(x, rc, sets, **kw)["variants"]["demo/class"]
        assert beside == alone   # every entry, overall and per class: values and intervals
    assert any("ci_low" in e for e in alone["overall"].values())
    assert any("ci_low" in e for scope in alone["per_class"].values() for e in scope.values())


@pytest.mark.parametrize("values", [
    np.r_[np.ones(130), np.zeros(370)],                   # 0/1 flags (precision, recall, coverage)
    np.repeat([0.0, 0.2, 0.4, 1.0, 2.6], [300, 90, 60, 40, 10]),   # few density levels
])
def test_bootstrap_of_few_levels_has_the_resampling_distribution(values):
    # few distinct values: the interval comes from multinomial draws of the levels' counts, which must give
    # the same resampled means as drawing indices (compared on many resamples, and to the normal interval)
    from dmd2report.metrics import bootstrap_ci

    rng = np.random.default_rng(0)
    reference = values[rng.integers(0, len(values), (20000, len(values)))].mean(1)
    lo, hi = bootstrap_ci(values, 20000, 0.95, np.random.default_rng(1))
    ref_lo, ref_hi = np.quantile(reference, [0.025, 0.975])
    se = values.std() / np.sqrt(len(values))
    assert abs(lo - ref_lo) < 0.05 * se * 4 and abs(hi - ref_hi) < 0.05 * se * 4
    assert lo == pytest.approx(values.mean() - 1.96 * se, abs=0.1 * se)
    assert bootstrap_ci(values, 200, 0.95, np.random.default_rng(3)) == bootstrap_ci(values, 200, 0.95,
                                                                                 np.random.default_rng(3))


def test_class_fidelity_hand_computed():
    # real class 0 at 0 1 2, class 1 at 10 11 12; centroids 1 and 11.
    # y=1 cond 0: 3 nearest real 1 0 2 -> all class 0 -> 1; centroid 0 -> hit
    # y=11 cond 0: 11 10 12 -> class 1 -> 0; centroid 1 -> miss
    # y=8 cond 1: 10 (2) 11 (3) 12 (4), before 2 (6) -> 1; centroid 1 -> hit
    # y=5 no class: left out of both.  fidelity 2/3 overall, class 0: 1/2, class 1: 1; centroid acc 2/3
    x = _col([0, 1, 2, 10, 11, 12])
    rc = np.array([0, 0, 0, 1, 1, 1])
    y = _col([1, 11, 8, 5])
    cond = np.array([0, 0, 1, -1])
    res = measure(x, rc, {"v": (y, cond)}, feature_space="t", k_pr=1, k_dc=2, k_fidelity=3, k_neighbours=2,
                  bootstrap=0, device="cpu")
    m = _overall(res)
    assert m["class_fidelity"] == pytest.approx(2 / 3)
    assert m["centroid_accuracy"] == pytest.approx(2 / 3)
    assert res["variants"]["v"]["overall"]["class_fidelity"]["n_generated"] == 3
    pc = res["variants"]["v"]["per_class"]
    assert pc["0"]["class_fidelity"]["value"] == 0.5 and pc["1"]["class_fidelity"]["value"] == 1.0
    assert res["reference"]["centroid_accuracy"]["value"] == 1.0
    np.testing.assert_array_equal(res["arrays"]["variants"]["v"]["gen_centroid_class"], [0, 1, 1, 0])


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-8)


def test_fd_reference_is_the_fd_between_two_class_stratified_halves_of_the_real_set():
    """The scale FD reads against: FD between two halves of the real set, exactly as `frechet_distance` of the
    halves (streamed in chunks, no float64 copy), each class split evenly, the same split for the same seed."""
    rng = np.random.default_rng(3)
    classes = np.repeat(np.arange(5), [40, 41, 7, 30, 2])
    x = (rng.normal(size=(len(classes), 6)) + classes[:, None]).astype(np.float32)
    second = real_halves(len(x), classes, seed=7)
    np.testing.assert_array_equal(second, real_halves(len(x), classes, seed=7))
    assert not np.array_equal(second, real_halves(len(x), classes, seed=8))
    for c, n in zip(*np.unique(classes, return_counts=True)):
        assert second[classes == c].sum() == n // 2          # alternately: the first half gets the odd one
    e = fd_real_halves(x, classes, seed=7)
    assert e["value"] == pytest.approx(frechet_distance(x[~second], x[second]), rel=1e-9)
    assert e["definition"] == "fd_real" and e["n_real"] == len(x) and e["n_halves"] == [61, 59]
    from dmd2report.metrics import _moments_by_half
    (a, b), _ = _moments_by_half(x, second, chunk_bytes=200)   # a few rows a chunk: the same moments
    np.testing.assert_allclose(a[1], np.cov(x[~second].astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b[0], x[second].astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    assert fd_real_halves(x[:3], None, seed=0)["value"] is None   # fewer than 2 rows a half


def test_metrics_json_is_stable_and_complete(tmp_path, clustered):
    x, rc, y, cond = clustered
    res = measure(x, rc, {"class": (y, cond), "uniform": (y[::2], None)}, feature_space="midblock/pca32",
                  bootstrap=10, device="cpu")
    p1 = write_metrics_json(tmp_path / "a" / "metrics.json", res, PROV)
    p2 = write_metrics_json(tmp_path / "b.json", [res], PROV)
    assert p1.read_bytes() == p2.read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))
    doc = json.loads(p1.read_text())
    assert doc["provenance"] == PROV
    space = doc["feature_spaces"]["midblock/pca32"]
    e = space["variants"]["class"]["overall"]["precision"]
    assert set(e) >= {"value", "definition", "k", "n_real", "n_generated", "ci_low", "ci_high"}
    assert e["k"] == 3 and e["n_real"] == 240 and e["n_generated"] == 180
    assert e["definition"] in doc["definitions"] and "<=" in doc["definitions"]["precision"]
    assert space["variants"]["uniform"]["per_class"]["1"].keys() == {"coverage_global"}
    fd = space["variants"]["class"]["overall"]["fd"]["value"]
    assert fd == float(f"{fd:.6g}")
    assert p1.read_text().index('"config_hash"') < p1.read_text().index('"data"')   # sorted keys
    with pytest.raises(ValueError, match="config_hash"):
        write_metrics_json(tmp_path / "c.json", res, {"model_checksum": "x", "data": "y"})


def test_one_declaration_names_every_metric_everywhere():
    """METRICS is the one source: metrics.json's definitions, the pages' labels, compare's directions and
    the guide's table (docs/metrics.md; regenerate it with `python -m dmd2report.metrics --markdown`)."""
    from pathlib import Path

    from dmd2report.compare import DEFAULT_METRICS, LOWER_IS_BETTER
    from dmd2report.metric_defs import definitions
    from dmd2report.metrics import METRICS, markdown

    defs = definitions()

    assert set(METRICS) == {"precision", "recall", "density", "coverage", "fd", "class_fidelity", "centroid_accuracy",
                            "coverage_global", "classification_accuracy", "inception_score", "fd_reference", "trust"}
    assert {k: defs[k] for k in METRICS} == {k: m.definition for k, m in METRICS.items()}
    assert defs["precision_in_class"].startswith("precision with X = real samples of class c")
    assert defs["centroid_accuracy_real"] == METRICS["centroid_accuracy"].reference
    assert defs["fd_real"] == METRICS["fd"].reference
    colours = [m.colour for m in METRICS.values()]
    assert len(set(colours)) == len(colours)   # one colour per metric, none shared
    assert LOWER_IS_BETTER == {"fd", "fd_reference"} and DEFAULT_METRICS[:4] == ("precision", "recall", "density", "coverage")
    table = markdown()
    for key, m in METRICS.items():
        assert f"| {m.label} | `{key}`" in table and m.explanation in table
    guide = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    section = guide.split("## Definitions\n", 1)[1].split("\n## ", 1)[0]
    start = section.index("<!-- generated from METRICS")
    assert section[start:start + len(table)] == table, \
        "docs/metrics.md's metrics table is stale: replace it with `python -m dmd2report.metrics --markdown`"
    assert section.count("| metric |") == 1   # no second, hand-written table


def _reference_flags(x, y, k_pr=3, k_dc=5):
    """Per-point indicators straight from the definitions (float64 full matrices)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    dxx, dyy, dyx = dist(x, x), dist(y, y), dist(y, x)
    rx = lambda k: np.sort(dxx, axis=1)[:, k]   # column 0 is the point itself
    out = {"precision": (dyx <= rx(k_pr)[None]).any(1), "density": (dyx <= rx(k_dc)[None]).sum(1) / k_dc,
           "coverage": (dyx.T <= rx(k_dc)[:, None]).any(1)}
    if len(y) > k_pr:
        out["recall"] = (dyx.T <= np.sort(dyy, axis=1)[:, k_pr][None]).any(1)
    return out, dyx, rx(k_dc)


@pytest.fixture(scope="module")
def tied():
    """Classes on a quarter grid (exact ties), duplicated points, copies of real points among the generated,
    a class too small for the radii, samples of a class the real set lacks and samples without a class."""
    rng = np.random.default_rng(5)
    n_cls, d = 12, 6
    means = rng.normal(size=(n_cls, d)) * 2
    rc = rng.integers(0, n_cls - 1, 500)
    rc[:4] = n_cls - 1                               # class 11: 4 real points, too few for r_5
    x = np.round((means[rc] + rng.normal(size=(500, d))) * 4) / 4
    x[50:60] = x[60]
    cond = rng.integers(0, n_cls + 1, 400)           # class 12: no real points
    cond[:60] = -1
    y = np.round((means[np.clip(cond, 0, n_cls - 1)] + 1.2 * rng.normal(size=(400, d))) * 4) / 4
    y[100:120] = x[200:220]
    return x.astype(np.float32), rc, y.astype(np.float32), cond


def test_per_class_scopes_equal_the_definitions_on_each_class(tied):
    from dmd2report.metrics import _rng, bootstrap_ci

    x, rc, y, cond = tied
    res = measure(x, rc, {"v": (y, cond)}, feature_space="t", bootstrap=25, seed=4, device="cpu",
                  max_block_bytes=20_000)
    scopes = res["variants"]["v"]["per_class"]
    assert set(scopes) == {str(c) for c in np.unique(rc)}    # class 12 (no real points) has no scope
    for c in np.unique(rc):
        sx, sy = rc == c, cond == c
        scope = scopes[str(c)]
        if not sy.any():
            assert scope.keys() == {"coverage_global"}
            continue
        if sx.sum() <= 5:
            assert scope["precision"]["value"] is None and scope["coverage"]["value"] is None
            continue
        flags, _, _ = _reference_flags(x[sx], y[sy])
        for name in ("precision", "recall", "density", "coverage"):
            e = scope[name]
            if name not in flags:
                assert e["value"] is None
                continue
            assert e["value"] == pytest.approx(np.mean(flags[name]), abs=1e-12), (c, name)
            ci = bootstrap_ci(flags[name], 25, 0.95, _rng(4, "v", int(c), name))   # the same stream per scope
            assert (e["ci_low"], e["ci_high"]) == ci, (c, name)


def test_covering_lists_are_the_nearest_covering_samples(tied):
    x, rc, y, cond = tied
    res = measure(x, rc, {"v": (y, cond)}, feature_space="t", bootstrap=0, device="cpu", cover_cap=4)
    arr = res["arrays"]["variants"]["v"]
    _, dyx, r_dc = _reference_flags(x, y)
    d32 = dyx.T.astype(np.float32)
    for i in range(len(x)):
        inside = np.flatnonzero(d32[i] <= r_dc[i].astype(np.float32))
        order = inside[np.lexsort((inside, d32[i][inside]))][:4]    # by distance, ties by lower index
        np.testing.assert_array_equal(arr["real_covered_by"][i][:len(order)], order)
        assert (arr["real_covered_by"][i][len(order):] == -1).all()
    np.testing.assert_array_equal(arr["real_cover_count"], (d32 <= r_dc.astype(np.float32)[:, None]).sum(1))


def test_without_arrays_the_metrics_are_the_same(tied):
    x, rc, y, cond = tied
    kw = dict(feature_space="t", bootstrap=10, device="cpu")
    full = measure(x, rc, {"v": (y, cond), "u": (y[::2], None)}, **kw)
    lean = measure(x, rc, {"v": (y, cond), "u": (y[::2], None)}, arrays=False, **kw)
    assert lean["arrays"] is None
    assert lean["variants"] == full["variants"] and lean["reference"] == full["reference"]


def test_a_metric_is_one_declared_unit(tmp_path, clustered, monkeypatch):
    """Declaring a metric (its words and its `compute` over the engine's evidence) is all it takes: the engine
    scores it in every scope with the evidence it needs, with its k, bootstrap interval, per-class definition and
    per-sample array, and metrics.json and the README's table carry its definition."""
    from dmd2report.metric_defs import METRICS, Metric, markdown

    x, rc, y, cond = clustered
    kw = dict(feature_space="t", bootstrap=20, seed=1, device="cpu")
    before = measure(x, rc, {"v": (y, cond), "u": (y[::3], None)}, **kw)
    monkeypatch.setitem(METRICS, "density_count", Metric(
        "Density count", "Real 5-NN balls holding a generated sample, on average.", "(1/M) sum ... (test)", "#000000",
        "metrics.k_dc", in_class="density_count within class c (test)", bootstrap=True, array="gen_density_count",
        compute=lambda e: None if e.gen_density_count is None else e.gen_density_count.astype(np.float64)))
    monkeypatch.setitem(METRICS, "covered_any", Metric(   # evidence only the class scopes have: entries only there
        "Covered", "Coverage by any sample, declared for every scope.", "(test)", "#000001", "metrics.k_dc",
        needs=("real_covered_global",), counts="set", compute=lambda e: e.real_covered_global))
    after = measure(x, rc, {"v": (y, cond), "u": (y[::3], None)}, **kw)
    doc = json.loads(write_metrics_json(tmp_path / "m.json", after, PROV).read_text())
    assert doc["definitions"]["density_count"] == "(1/M) sum ... (test)"
    assert doc["definitions"]["density_count_in_class"] == "density_count within class c (test)"
    for v in ("v", "u"):
        new, old = after["variants"][v], before["variants"][v]
        e = new["overall"].pop("density_count")
        assert e["value"] == pytest.approx(old["overall"]["density"]["value"] * 5, rel=1e-12)
        assert (e["k"], e["definition"]) == (5, "density_count")
        assert e["n_generated"] == old["overall"]["density"]["n_generated"]
        assert e["ci_low"] < e["value"] < e["ci_high"]
        for c, scope in new["per_class"].items():
            if "density" in old["per_class"][c]:   # a class with samples conditioned on it
                got = scope.pop("density_count")
                assert got["definition"] == "density_count_in_class"
                assert got["value"] == pytest.approx(old["per_class"][c]["density"]["value"] * 5, rel=1e-12)
                covered = scope.pop("covered_any") | {"definition": "coverage_global"}
                assert covered == old["per_class"][c]["coverage_global"]
            assert "density_count" not in scope and "covered_any" not in scope
        assert "covered_any" not in new["overall"]
        assert new == old                                   # every other entry as before
        np.testing.assert_array_equal(after["arrays"]["variants"][v]["gen_density_count"],
                                      before["arrays"]["variants"][v]["gen_density"] * 5)
    assert "| Density count | `density_count` |" in markdown()


def test_fd_reference_per_class_is_the_fd_of_each_class_between_the_two_halves():
    """The scale a class's FD reads against: FD of the class's rows in the two halves of the overall split, the same
    number by the rows' cross product (fewer rows than dimensions) as by the covariances."""
    from dmd2report.metrics import fd_real_halves_per_class, frechet_from_rows

    rng = np.random.default_rng(4)
    classes = np.repeat(np.arange(4), [30, 9, 3, 50])
    x = (rng.normal(size=(len(classes), 12)) * (1 + classes[:, None]) + classes[:, None]).astype(np.float32)
    second = real_halves(len(x), classes, seed=7)
    per_class = fd_real_halves_per_class(x, classes, seed=7)
    assert set(per_class) == {"0", "1", "2", "3"}
    for c in range(4):
        e, rows = per_class[str(c)], classes == c
        a, b = x[rows & ~second], x[rows & second]
        assert e["definition"] == "fd_real_in_class" and e["n_real"] == rows.sum() and e["n_halves"] == [len(a), len(b)]
        if c == 2:
            assert e["value"] is None       # one row in a half
            continue
        assert e["value"] == pytest.approx(frechet_distance(a, b), rel=1e-8)
    # the rows' route equals the covariances' route where the rows are fewer than the dimensions
    a, b = rng.normal(size=(7, 40)), rng.normal(size=(5, 40)) + 0.2
    assert frechet_from_rows(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-7)   # rank-deficient: eigh rounds
    assert fd_real_halves_per_class(x, None, seed=7) == {}
