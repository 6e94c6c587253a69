"""The measure stage reads the stores chunk by chunk (memory-mapped) and writes what an in-memory
`metrics.measure` computes; the covering lists are stored ragged with their true lengths."""

import json

import numpy as np
import pytest

from dmd2report.config import load_config
from dmd2report.context import Context
from dmd2report.metrics import fd_real_halves, fd_real_halves_per_class, measure
from dmd2report.pipeline import run_stages
from dmd2report.stages import measure as measure_stage
from dmd2report.stages.measure import FeatureSpace, flatten_arrays, variant_classes
from synthetic import write_synthetic_work_dir


def real_classes_of(wd):
    return wd.store("real").metadata()["class_id"].to_numpy()


def test_flatten_arrays_stores_covering_lists_ragged_without_padding():
    cov = np.array([[4, 2, -1], [-1, -1, -1], [0, 1, 3]])
    flat = flatten_arrays({"real": {"r_pr": np.ones(3)}, "variants": {"class": {"real_covered_by": cov}}})
    offs, vals = flat["variant.class.real_covered_by.offsets"], flat["variant.class.real_covered_by.values"]
    np.testing.assert_array_equal(offs, [0, 2, 2, 5])
    np.testing.assert_array_equal(vals, [4, 2, 0, 1, 3])
    assert [vals[offs[i]:offs[i + 1]].tolist() for i in range(3)] == [[4, 2], [], [0, 1, 3]]


@pytest.mark.slow
def test_chunked_measure_stage_equals_in_memory_measure(tmp_path, caplog, monkeypatch):
    cfg = write_synthetic_work_dir(
        tmp_path, n_real=300, n_gen_class=200, n_variant=50, classes=10,
        dims={"encoder_bottleneck": 48, "midblock": 48}, seed=2, preset="demo", chunk_size=64, device="cpu",
        extra_config="[embedding]\npca_components = 8\nn_neighbors = 10\n", metrics_config="bootstrap = 10")
    config = load_config(cfg)
    ctx = Context.create(config, command="test")
    wd = ctx.workdir
    assert wd.store("real").manifest["chunks"] == 5      # several memory-mapped chunks per store

    def raw_midblock(ctx, real, gens):   # another kind of feature space: one entry, and every set is measured in it
        yield FeatureSpace("raw:midblock", real.features("midblock")[:, :6], {
            label: (s.features("midblock")[:, :6], variant_classes(v, s.metadata())) for label, (v, s) in gens.items()},
            None)

    monkeypatch.setattr(measure_stage, "FEATURE_SPACES", measure_stage.FEATURE_SPACES + (raw_midblock,))
    with caplog.at_level("INFO"):
        run_stages(ctx, ("extract", "generate", "fit", "measure"))
    m = config.metrics
    # the headline layer's real radii and neighbour lists came from the fit stage's search of the same rows,
    # and still equal the in-memory measure's own search below
    assert json.loads((wd.fit / "manifest.json").read_text())["real_knn"]["layer"] == m.layer
    assert any("from the fit stage's search" in r.getMessage() for r in caplog.records)
    # another reduction of the real rows (not the bytes fit searched) is not given the fit's table
    assert wd.fit_real_neighbours(m.layer, np.zeros((len(real_classes_of(wd)), 8), np.float32)) is None
    real = wd.store("real")
    rc = real.metadata()["class_id"].to_numpy()
    doc = json.loads((wd.measure / "metrics.json").read_text())
    arrays = np.load(wd.measure / "arrays.npz")
    gens = {v: wd.store(f"gen-{v}") for v in ("class", "uniform", "zero", "blend")}
    raw = measure(real.features("midblock")[:, :6], rc,
                  {v: (s.features("midblock")[:, :6], variant_classes(v, s.metadata())) for v, s in gens.items()},
                  feature_space="raw", k_pr=m.k_pr, k_dc=m.k_dc, k_fidelity=m.k_fidelity, k_neighbours=m.k_neighbours,
                  bootstrap=m.bootstrap, seed=config.run.seed, device="cpu", arrays=False)
    space = doc["feature_spaces"]["raw:midblock"]
    assert space["variants"] == json.loads(json.dumps(scale_round(raw["variants"])))
    halves = fd_real_halves(real.features("midblock")[:, :6], rc, config.run.seed)
    assert space["reference"]["fd"] == json.loads(json.dumps(scale_round(halves)))
    # every class's FD scale: its rows in the two halves
    per_class = fd_real_halves_per_class(real.features("midblock")[:, :6], rc, config.run.seed)
    assert space["reference_per_class"] == json.loads(json.dumps(scale_round({c: {"fd": e} for c, e in per_class.items()})))
    assert set(space["reference_per_class"]) == set(space["variants"]["class"]["per_class"])
    # the class-conditioned set's first variant_samples seeds (the other variants' seeds), measured as a set
    n_var = config.generate.variant_samples
    assert n_var < len(gens["class"]) and doc["definitions"]["fd_real_in_class"]
    first = measure(real.features("midblock")[:, :6], rc, {"class@matched": (
        gens["class"].features("midblock")[:n_var, :6], variant_classes("class", gens["class"].metadata())[:n_var])},
        feature_space="raw", k_pr=m.k_pr, k_dc=m.k_dc, k_fidelity=m.k_fidelity, bootstrap=m.bootstrap,
        seed=config.run.seed, device="cpu", arrays=False, per_class=False)
    assert space["matched"] == {"class": {"n_seeds": n_var, "overall": json.loads(json.dumps(scale_round(
        first["variants"]["class@matched"]["overall"])))}}
    assert space["matched"]["class"]["overall"]["coverage"]["n_generated"] == n_var
    for layer in real.layers:
        emb = wd.fitted(layer)
        ref = measure(emb.reduce(real.features(layer)), rc,
                      {v: (emb.reduce(s.features(layer)), variant_classes(v, s.metadata())) for v, s in gens.items()},
                      feature_space="t", k_pr=m.k_pr, k_dc=m.k_dc, k_fidelity=m.k_fidelity,
                      k_neighbours=m.k_neighbours, bootstrap=m.bootstrap, seed=config.run.seed, device="cpu")
        space = next(v for k, v in doc["feature_spaces"].items() if k.startswith(layer + ":"))
        expect = json.loads(json.dumps(scale_round(ref["variants"])))
        assert space["variants"] == expect, layer
        # the FD reference scale: two halves of the real set, from the same reduced features
        halves = fd_real_halves(emb.reduce(real.features(layer)), rc, config.run.seed)
        assert space["reference"]["fd"] == json.loads(json.dumps(scale_round(halves))), layer
        if layer == m.layer:
            flat = flatten_arrays(ref["arrays"])
            assert set(flat) == set(arrays.files)
            for key in flat:
                np.testing.assert_array_equal(arrays[key], flat[key], err_msg=key)
            cov = ref["arrays"]["variants"]["class"]["real_covered_by"]
            offs = arrays["variant.class.real_covered_by.offsets"]
            vals = arrays["variant.class.real_covered_by.values"]
            assert (vals >= 0).all() and len(offs) == len(rc) + 1
            np.testing.assert_array_equal(np.diff(offs), (cov >= 0).sum(1))


def scale_round(v):
    from dmd2report.metrics import _round

    return _round(v)
