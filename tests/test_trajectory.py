"""Few-step sampling paths: schedule checks, the one-step identity, determinism, the stage's stores."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dmd2report.config import load_config
from dmd2report.errors import UserError
from dmd2report.layers import ActivationCapture
from dmd2report.sampling import condition_vectors, generate, sample_noise
from dmd2report.context import Context
from dmd2report.pipeline import run_stages
from dmd2report.sampling import RENOISE_STRIDE, check_schedule, path_noise, sample_paths

LAYERS = ["encoder_bottleneck", "midblock"]


@pytest.mark.parametrize("sigmas,match", [
    ([80.0, 14.0, 14.0], "strictly decreasing, but 14 follows 14"),
    ([1.0, 14.0], "strictly decreasing, but 14 follows 1"),
    ([80.0, 0.0], "positive"),
    ([80.0, -1.0], "positive"),
    ([], "empty"),
])
def test_schedule_must_decrease_and_stay_positive(sigmas, match):
    with pytest.raises(UserError, match=match) as e:
        check_schedule(sigmas)
    assert str(e.value).startswith("trajectory.sigmas: ")
    # The same check when the config is loaded, naming the key.
    with pytest.raises(UserError, match=r"^command line: trajectory\.sigmas: .*" + match):
        load_config(None, {"trajectory.sigmas": sigmas})


def test_schedule_accepted_and_config_default():
    assert check_schedule([80, 14, 1, 0.05]) == [80.0, 14.0, 1.0, 0.05]
    c = load_config(None, {})
    assert c.trajectory.sigmas[0] == 80.0 and c.trajectory.enabled
    # A disabled trajectory section is not checked (nothing will sample it).
    assert load_config(None, {"trajectory.enabled": False, "trajectory.sigmas": [1.0, 2.0]}).trajectory.sigmas == [1.0, 2.0]


def test_one_step_is_the_one_step_sample(tiny_net):
    labels = condition_vectors("class", 10, classes=[0, 3, 5, 9, 1])
    idx = np.array([0, 7, 2, 11, 4])
    images, feats = sample_paths(tiny_net, 5, idx, labels, [80.0], layers=LAYERS, batch_size=5)
    one = generate(tiny_net, sample_noise(5, idx, (3, 16, 16)), labels)
    assert images.shape == (1, 5, 3, 16, 16)
    assert torch.equal(images[0], one)  # exactly, not approximately
    cap = ActivationCapture(tiny_net, LAYERS, reduce="mean")
    cap.run(80 * sample_noise(5, idx, (3, 16, 16)), torch.full((5,), 80.0), labels)
    for l in LAYERS:
        np.testing.assert_array_equal(feats[l][0], cap.activations[l].numpy())
    # The first step of a longer schedule is that same call; later steps move away from it.
    more, more_feats = sample_paths(tiny_net, 5, idx, labels, [80.0, 14.0, 1.0, 0.05], layers=LAYERS, batch_size=5)
    assert more.shape == (4, 5, 3, 16, 16) and torch.equal(more[0], one)
    np.testing.assert_array_equal(more_feats["midblock"][0], feats["midblock"][0])
    assert not torch.allclose(more[3], more[0])


def test_step_noise_is_fresh_and_disjoint():
    noise = path_noise(3, [0, 1], 4, (3, 4, 4))
    torch.testing.assert_close(noise[0], sample_noise(3, [0, 1], (3, 4, 4)), rtol=0, atol=0)
    torch.testing.assert_close(noise[2], sample_noise(3, [2 * RENOISE_STRIDE, 2 * RENOISE_STRIDE + 1], (3, 4, 4)),
                               rtol=0, atol=0)
    flat = torch.stack(noise).reshape(8, -1)
    assert torch.unique(flat, dim=0).shape[0] == 8


@pytest.mark.parametrize("mode", ["class", "uniform", "zero", "blend"])
def test_same_paths_for_any_batch_size(tiny_net, mode):
    n = 6
    labels = condition_vectors(mode, 10, classes=list(range(n)) if mode == "class" else None, count=n,
                               weights=np.eye(10)[[0, 1, 2, 3, 4, 5]] + np.eye(10)[[9, 8, 7, 6, 5, 4]] if mode == "blend" else None)
    sig = [80.0, 14.0, 1.0, 0.05]
    whole, fw = sample_paths(tiny_net, 2, range(n), labels, sig, layers=LAYERS, batch_size=n)
    parts, fp = sample_paths(tiny_net, 2, range(n), labels, sig, layers=LAYERS, batch_size=4)
    single, _ = sample_paths(tiny_net, 2, [4], labels[4:5], sig, batch_size=1)
    # Batched convolutions may round differently, nothing more.
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-4)
    torch.testing.assert_close(whole[:, 4:5], single, rtol=0, atol=1e-4)
    for l in LAYERS:
        np.testing.assert_allclose(fw[l], fp[l], rtol=0, atol=1e-3)
    again, _ = sample_paths(tiny_net, 2, range(n), labels, sig, batch_size=n)
    assert torch.equal(whole, again)
    other_seed, _ = sample_paths(tiny_net, 3, range(n), labels, sig, batch_size=n)
    assert not torch.allclose(whole[-1], other_seed[-1])


@pytest.fixture(scope="module")
def traj_run(tmp_path_factory):
    """The tiny model on a 60-image NPZ set: extract, generate, fit and trajectory stages."""
    from conftest import TINY_CLASSES, npz_labels_for_standard_ids, synthetic_images

    tmp = tmp_path_factory.mktemp("traj")
    root = tmp / "npz"
    root.mkdir()
    ids = np.tile(np.arange(TINY_CLASSES), 6)
    np.savez(root / "train_data_batch_1.npz", data=synthetic_images(len(ids), ids).transpose(0, 3, 1, 2).reshape(len(ids), -1),
             labels=npz_labels_for_standard_ids(ids))
    config = load_config(None, {
        "run.workdir": str(tmp / "work"), "run.device": "cpu", "model.preset": "tiny", "data.source": "imagenet64-npz",
        "data.path": str(root), "data.max_samples": 0, "features.batch_size": 8, "features.chunk_size": 16,
        "report.thumb_size": 8, "generate.samples": 20, "generate.variants": ["class"], "generate.variant_samples": 10,
        "embedding.pca_components": 8, "embedding.n_neighbors": 8, "metrics.bootstrap": 10,
        "trajectory.sigmas": [80.0, 10.0, 0.5], "trajectory.samples": 7, "trajectory.real_references": 9})
    ctx = Context.create(config)
    ran = run_stages(ctx, ("extract", "generate", "fit", "trajectory"))
    assert ran == ["extract", "generate", "fit", "trajectory"]
    return ctx


def test_stage_stores_every_step(traj_run):
    from dmd2report.store import Store

    out = traj_run.workdir.root / "trajectory"
    paths, real = Store(out / "paths"), Store(out / "real")
    assert paths.manifest["steps"] == 3 and paths.manifest["sigmas"] == [80.0, 10.0, 0.5]
    assert len(paths) == 7 * 3 and len(real) == 9 * 3
    meta = paths.metadata()
    assert meta["step"].tolist() == [0, 1, 2] * 7 and meta["path"].tolist() == list(np.repeat(np.arange(7), 3))
    assert meta["sigma"].tolist() == [80.0, 10.0, 0.5] * 7
    assert paths.features("midblock").shape[0] == 21 and paths.thumbnails().shape == (21, 8, 8, 3)
    # With class conditioning a path's first step is the class-conditioned set's sample of the same seed, and its
    # features are made as that set's are (features.generated = "reencode", the default): the step's image fed
    # back as real images are, so the steps' metrics compare images with images, as the set's do.
    gen = Store(traj_run.workdir.root / "stores" / "gen-class")
    assert paths.manifest["generated_features"] == gen.manifest["generated_features"] == "reencode"
    np.testing.assert_array_equal(paths.features("midblock")[::3], gen.features("midblock")[:7])
    np.testing.assert_array_equal(paths.thumbnails()[::3], gen.thumbnails()[:7])
    # Real references: classes spread evenly, every sigma of the schedule.
    rmeta = real.metadata()
    assert rmeta["class_id"][rmeta["step"] == 0].nunique() == 9
    pts = pd.read_parquet(out / "points.parquet")
    assert len(pts) == 21 + 27 and np.isfinite(pts[["x", "y"]].to_numpy()).all()
    doc = json.loads((out / "metrics.json").read_text())
    assert [s["sigma"] for s in doc["steps"]] == [80.0, 10.0, 0.5]
    assert doc["features"] == "reencode" and "fed back through the model" in doc["definitions"]["vs_real"]
    for s in doc["steps"]:
        assert 0 <= s["vs_real"]["coverage"] <= 1 and s["vs_real"]["n_generated"] == 7
        assert s["vs_noised_real"]["n_real"] == 9 and 0 <= s["vs_noised_real"]["precision"] <= 1
    assert doc["floor"]["n_generated"] == 7 and 0 <= doc["floor"]["coverage"] <= 1 and doc["floor"]["fd"] > 0
    assert "held out of the real set" in doc["definitions"]["floor"]


def test_stage_rerun_reuses_stores(traj_run):
    out = traj_run.workdir.root / "trajectory"
    before = (out / "paths" / "features" / "midblock" / "chunk_000000.npy").stat().st_mtime_ns
    # Another UMAP: the trajectory stage reruns (re-projects) but keeps the sampled stores.
    cfg = traj_run.config
    cfg.embedding.min_dist = 0.3
    ran = run_stages(Context.create(cfg), ("fit", "trajectory"))
    assert ran == ["fit", "trajectory"]
    assert (out / "paths" / "features" / "midblock" / "chunk_000000.npy").stat().st_mtime_ns == before


def test_blend_paths_use_the_generate_stage_blend(traj_run):
    from dmd2report.store import Store

    cfg = traj_run.config
    cfg.trajectory.conditioning = "blend"
    with pytest.raises(UserError, match="needs 'blend' in generate.variants"):
        run_stages(Context.create(cfg), ("trajectory",))
    cfg.generate.variants = ["class", "blend"]
    cfg.trajectory.samples = 11  # more than the 10 seeds of the blend set
    with pytest.raises(UserError, match=r"trajectory.samples \(11\) exceeds"):
        run_stages(Context.create(cfg), ("generate", "trajectory"))
    cfg.trajectory.samples = 7
    assert run_stages(Context.create(cfg), ("trajectory",)) == ["trajectory"]
    paths = Store(traj_run.workdir.root / "trajectory" / "paths")
    blend = Store(traj_run.workdir.root / "stores" / "gen-blend")
    np.testing.assert_allclose(paths.label_vectors(10)[::3], blend.label_vectors(10)[:7], rtol=0, atol=1e-6)
    assert (paths.label_vectors(10) > 0).sum(1).max() > 1  # really blends, not one-hots


def test_last_step_of_the_shipped_demo_matches_its_class_set(tmp_path):
    """Issue 18 item 6: every step's image is re-encoded as the class-conditioned set's are, so the steps are
    measured like that set and, for the shipped demo generator, the last step's precision interval holds the set's
    precision (features from the generating pass gave 0.00 at every step). 600 real images, 300 class samples and
    the 48 paths of the default (the full demo: 0.854 [0.770, 0.958] against 0.886)."""
    config = load_config(None, {"run.workdir": str(tmp_path / "work"), "run.device": "cpu", "data.max_samples": 600,
                                "generate.samples": 300, "generate.variants": ["class"], "trajectory.samples": 48})
    ctx = Context.create(config)
    run_stages(ctx, ("extract", "generate", "fit", "measure", "trajectory"))
    steps = json.loads((ctx.workdir.trajectory / "metrics.json").read_text())
    doc = json.loads((ctx.workdir.measure / "metrics.json").read_text())
    class_set = doc["feature_spaces"][steps["feature_space"]]["variants"]["class"]["overall"]["precision"]["value"]
    last = steps["steps"][-1]["vs_real"]
    assert steps["features"] == "reencode" and steps["sigmas"][-1] < 0.1 and last["n_generated"] == 48
    assert last["precision_ci"][0] <= class_set <= last["precision_ci"][1], (last, class_set)


def test_the_steps_floor_is_real_data_of_the_paths_size_measured_as_a_step():
    """The per-step metrics' sample-size floor: as many real rows as paths, of the paths' classes, held out of the real
    set and measured against the rest; with the fit stage's real k-NN closed up over the held rows, exactly what a
    fresh search of the rest gives."""
    from dmd2report.knn import knn
    from dmd2report.metrics import measure
    from dmd2report.stages.trajectory import floor_rows, real_floor

    rng = np.random.default_rng(0)
    real_classes = np.repeat(np.arange(6), 40)
    x = (rng.normal(size=(len(real_classes), 5)) + real_classes[:, None]).astype(np.float32)
    paths = np.array([0, 0, 1, 2, 2, 2, 5, 5, 3, 4, 1, 0])
    held = floor_rows(real_classes, paths, seed=3)
    assert len(held) == len(paths) and len(np.unique(held)) == len(held)
    np.testing.assert_array_equal(np.sort(real_classes[held]), np.sort(paths))     # the paths' class mix
    np.testing.assert_array_equal(held, floor_rows(real_classes, paths, seed=3))
    assert not np.array_equal(held, floor_rows(real_classes, paths, seed=4))
    assert len(floor_rows(real_classes, np.full(7, -1), seed=3)) == 7                 # paths without a class
    kw = dict(k_pr=3, k_dc=5, k_fidelity=10, k_neighbours=1, bootstrap=20, seed=3, per_class=False, per_class_fd=False)
    fit_knn = knn(x, None, 15, exclude_self=True)
    floor = real_floor(x, real_classes, paths, 3, kw, "t", fit_knn)
    rest = np.setdiff1d(np.arange(len(x)), held)
    ref = measure(x[rest], real_classes[rest], {"floor": (x[held], None)}, feature_space="t", arrays=False,
                  **kw)["variants"]["floor"]["overall"]
    assert floor["n_generated"] == len(paths) and floor["n_real"] == len(rest)
    for key in ("precision", "recall", "density", "coverage", "fd"):
        assert floor[key] == pytest.approx(ref[key]["value"], rel=1e-9), key
    assert floor["coverage_ci"] == [ref["coverage"]["ci_low"], ref["coverage"]["ci_high"]]
    assert real_floor(x, real_classes, paths, 3, kw, "t", None)["coverage"] == floor["coverage"]   # searched afresh
    assert floor["fd"] > 0 and floor["coverage"] < 1       # real data itself, at this count, is no perfect score
