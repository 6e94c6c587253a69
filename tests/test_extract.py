import errno
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmd2report import chunks as chunks_mod
from dmd2report import files as files_mod
from dmd2report import store as store_mod
from dmd2report.errors import UserError
from dmd2report.features import randomized_pca
from dmd2report.classes import ClassIndex
from dmd2report.layers import ActivationCapture
from dmd2report.sampling import condition_vectors, generate, sample_noise, to_uint8
from dmd2report.sources import NpzSource, source_class_index
from dmd2report.stages import extract, generate as generate_stage
from dmd2report.store import Store
from dmd2report.workdir import WorkDir

# Two cores shared with other jobs: one intra-op thread is several times faster than two contending ones.
torch.set_num_threads(1)


def extract_real(config, net, checksum, **kw):
    """The extract stage's function on `config`'s work directory, for the tiny network (ImageNet's classes)."""
    return extract.extract_real(config, WorkDir(config.run.workdir), net, checksum, ClassIndex.imagenet(), **kw)


def generate_set(config, net, checksum, *args, **kw):
    """The generate stage's function on `config`'s work directory, classes named as the stage names them."""
    return generate_stage.generate_set(config, WorkDir(config.run.workdir), net, checksum, *args,
                                       classes=source_class_index(config.data, ClassIndex.imagenet()), **kw)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_extract_stores_what_the_model_computes(tiny_net, npz_dir, make_config):
    config = make_config(path=npz_dir)
    path = extract_real(config, tiny_net, "sum0", progress=False)
    s = Store(path)
    meta = s.metadata()
    assert len(s) == 60 and s.manifest["feature_dims"] == {"encoder_bottleneck": 64, "midblock": 64}
    assert meta["sample_id"].tolist() == list(range(60)) and (meta["variant"] == "real").all()
    # Recompute three samples by hand: G(80 x, 80, one_hot) with x = uint8 / 127.5 - 1.
    rows = [0, 17, 59]
    images = NpzSource(npz_dir, 16).load(0, 60).images[rows]
    x = torch.from_numpy(images).float() / 127.5 - 1
    y = F.one_hot(torch.tensor(meta["class_id"].to_numpy()[rows]), 10).float()
    cap = ActivationCapture(tiny_net, ["encoder_bottleneck", "midblock"], reduce="mean")
    out = cap.run(80 * x, torch.full((3,), 80.0), y)
    for layer in ("encoder_bottleneck", "midblock"):
        np.testing.assert_allclose(s.features(layer)[rows], cap.activations[layer].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(s.thumbnails()[rows], to_uint8(F.interpolate(x, size=(8, 8), mode="area")))
    ids, recon = s.reconstructions()
    assert len(ids) == 40 and meta.groupby("class_id")["has_recon"].sum().eq(4).all()
    pos = {int(i): k for k, i in enumerate(ids)}
    for r, o in zip(rows, out):
        if r in pos:
            assert np.abs(recon[pos[r]].astype(int) - to_uint8(o[None])[0]).max() <= 1
    ids, full = s.full_activations("midblock")
    assert full.shape == (60, 64, 4, 4) and full.dtype == np.float32


_KILLED_RUN = """
import os, signal, sys
import numpy as np
from safetensors.torch import load_file
from dmd2report import files, store
from dmd2report.classes import ClassIndex
from dmd2report.config import load_config
from dmd2report.stages.extract import extract_real
from dmd2report.models import build_preset
from dmd2report.workdir import WorkDir

weights, workdir, data = sys.argv[1:]
net = build_preset("tiny").eval().requires_grad_(False)
net.load_state_dict(load_file(weights))
save = store.save_npy

def killed_mid_chunk_2(path, array):
    if path.name == "chunk_000002.npy" and path.parent.name == "thumbs":
        def write(f):
            f.write(b"half a file")  # a temporary file left behind, as a kill leaves it
            os.kill(os.getpid(), signal.SIGKILL)
        return files.atomic_write(path, write)
    return save(path, array)

store.save_npy = killed_mid_chunk_2
config = load_config(None, {"run.workdir": workdir, "data.source": "imagenet64-npz", "data.path": data,
    "data.max_samples": 0, "features.batch_size": 8, "features.chunk_size": 16, "report.thumb_size": 8})
extract_real(config, WorkDir(workdir), net, "sum0", ClassIndex.imagenet(), progress=False)
"""


def test_resume_after_a_kill_is_byte_identical(tiny_net, npz_dir, make_config, tmp_path, monkeypatch):
    import subprocess
    import sys

    from safetensors.torch import save_file

    reference = extract_real(make_config(path=npz_dir, run__workdir=str(tmp_path / "a")), tiny_net, "sum0", progress=False)
    weights = tmp_path / "w.safetensors"
    save_file(tiny_net.state_dict(), weights)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(weights), str(tmp_path / "b"), str(npz_dir)], env=env)
    assert run.returncode == -9  # SIGKILL, part-way through chunk 2
    store = tmp_path / "b" / "stores" / "real"
    assert list(store.rglob("*.tmp")) and (store / "chunks" / "chunk_000001.json").exists()
    with pytest.raises(UserError, match="incomplete"):
        Store(store)
    real_write = store_mod.StoreWriter.write_chunk
    written = []
    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", lambda self, i, *a, **k: (written.append(i), real_write(self, i, *a, **k)))
    resumed = extract_real(make_config(path=npz_dir, run__workdir=str(tmp_path / "b")), tiny_net, "sum0", progress=False)
    assert written == [2, 3]  # chunks 0 and 1 were kept
    assert _files(resumed) == _files(reference)


def test_disk_full_during_extract_then_resume(tiny_net, npz_dir, make_config, tmp_path, monkeypatch):
    reference = extract_real(make_config(path=npz_dir, run__workdir=str(tmp_path / "a")), tiny_net, "sum0", progress=False)
    config = make_config(path=npz_dir, run__workdir=str(tmp_path / "b"))
    real_save = store_mod.save_npy

    def full_disk(path, array):
        if path.name == "chunk_000001.npy" and path.parent.name == "thumbs":  # after the features were written
            def write(f):
                f.write(b"\x93NUMPY")
                raise OSError(errno.ENOSPC, "No space left on device")
            return files_mod.atomic_write(path, write)
        return real_save(path, array)

    monkeypatch.setattr(store_mod, "save_npy", full_disk)
    with pytest.raises(UserError, match="thumbs/chunk_000001.npy: disk full"):
        extract_real(config, tiny_net, "sum0", progress=False)
    store = tmp_path / "b" / "stores" / "real"
    assert not list(store.rglob("chunk_000001*")) and not list(store.rglob("*.tmp"))
    monkeypatch.setattr(store_mod, "save_npy", real_save)
    assert _files(extract_real(config, tiny_net, "sum0", progress=False)) == _files(reference)


def test_changed_config_refused_unless_overwrite(tiny_net, npz_dir, make_config):
    extract_real(make_config(path=npz_dir), tiny_net, "sum0", progress=False)
    with pytest.raises(UserError, match="another configuration.*data.per_class was 0, now 2.*--overwrite"):
        extract_real(make_config(path=npz_dir, data__per_class=2), tiny_net, "sum0", progress=False)
    with pytest.raises(UserError, match="model_checksum"):
        extract_real(make_config(path=npz_dir), tiny_net, "other", progress=False)
    path = extract_real(make_config(path=npz_dir, data__per_class=2), tiny_net, "sum0", overwrite=True, progress=False)
    assert len(Store(path)) == 20


def test_pca_fitted_on_real_and_applied_unchanged_to_generated(tiny_net, npz_dir, make_config):
    config = make_config(path=npz_dir, features__reduce="pca:6")
    real = Store(extract_real(config, tiny_net, "sum0", progress=False))
    pca = real.pca()
    comps = pca["midblock"]["components"]
    assert comps.shape == (6, 1024) and torch.allclose(comps @ comps.T, torch.eye(6), atol=1e-4)
    # The same subspace and variances as an exact SVD of the fit data (the first 40 samples).
    images = NpzSource(npz_dir, 16).load(0, 40).images
    x = torch.from_numpy(images).float() / 127.5 - 1
    y = F.one_hot(torch.tensor(real.metadata()["class_id"].to_numpy()[:40]), 10).float()
    cap = ActivationCapture(tiny_net, ["midblock"])
    cap.run(80 * x, torch.full((40,), 80.0), y)
    a = cap.activations["midblock"].flatten(1)
    _, s, vh = torch.linalg.svd(a - a.mean(0), full_matrices=False)
    np.testing.assert_allclose(pca["midblock"]["explained_variance"], s[:6] ** 2 / 39, rtol=1e-3)
    assert torch.allclose((vh[:6] @ comps.T).abs().max(1).values, torch.ones(6), atol=1e-3)
    np.testing.assert_allclose(real.features("midblock")[:40], ((a - a.mean(0)) @ comps.T).numpy(), atol=2e-2, rtol=2e-3)

    gen = Store(generate_set(config, tiny_net, "sum0", "class", np.arange(12) % 10, np.arange(12), progress=False))
    z = sample_noise(0, np.arange(12), (3, 16, 16))
    labels = condition_vectors("class", 10, classes=np.arange(12) % 10)
    sigma = torch.full((12,), 80.0)
    # Default features.generated = reencode: the generated image, stored as uint8 and read back,
    # fed exactly as a real image is.
    image = tiny_net(80 * z, sigma, labels)
    stored = torch.from_numpy(to_uint8(image)).permute(0, 3, 1, 2).float() / 127.5 - 1
    cap = ActivationCapture(tiny_net, ["midblock"])
    cap.run(80 * stored, sigma, labels)
    want = (cap.activations["midblock"].flatten(1) - pca["midblock"]["mean"]) @ comps.T
    np.testing.assert_allclose(gen.features("midblock"), want.numpy(), atol=2e-2, rtol=2e-3)
    assert gen.manifest["key"]["features"]["pca"] is not None
    # features.generated = generation: the activations of the generating pass itself.
    config.features.generated = "generation"
    gen = Store(generate_set(config, tiny_net, "sum0", "class", np.arange(12) % 10, np.arange(12), overwrite=True,
                             progress=False))
    cap = ActivationCapture(tiny_net, ["midblock"])
    cap.run(80 * z, sigma, labels)
    want = (cap.activations["midblock"].flatten(1) - pca["midblock"]["mean"]) @ comps.T
    np.testing.assert_allclose(gen.features("midblock"), want.numpy(), atol=2e-2, rtol=2e-3)


def test_randomized_pca_is_deterministic_and_checks_k():
    x = torch.randn(50, 300)
    a, b = randomized_pca(x, 5), randomized_pca(x, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="pca:60 needs at most"):
        randomized_pca(x, 60)


def test_full_reduction_prints_size(tiny_net, npz_dir, make_config, caplog):
    with caplog.at_level("INFO", logger="dmd2report"):
        path = extract_real(make_config(path=npz_dir, features__reduce="full", data__per_class=1), tiny_net, "sum0")
    assert "full activations, 10 samples x 2048 values (float16)" in caplog.text
    assert Store(path).features("encoder_bottleneck").shape == (10, 1024)


def test_folder_with_an_unreadable_image_is_skipped_and_listed(tiny_net, image_tree, make_config, caplog):
    (image_tree / "n01443537" / "img_2.jpg").write_bytes(b"\xff\xd8 truncated")
    with caplog.at_level("WARNING", logger="dmd2report"):
        s = Store(extract_real(make_config("folder", image_tree), tiny_net, "sum0", progress=False))
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(
        "[extract] skipped 1 unreadable image (data.on_bad_image = skip), e.g. n01443537/img_2.jpg (")
    assert len(s) == 59 and s.manifest["skipped"][0]["source"] == "n01443537/img_2.jpg"
    assert "n01443537/img_2.jpg" not in set(s.metadata()["source"])
    with pytest.raises(UserError, match="img_2.jpg: unreadable image"):
        extract_real(make_config("folder", image_tree, data__on_bad_image="fail"), tiny_net, "sum0",
                     overwrite=True, progress=False)


def test_generated_images_do_not_depend_on_chunking(tiny_net, npz_dir, make_config, tmp_path):
    classes, seeds = np.arange(20) % 10, np.arange(100, 120)
    a = Store(generate_set(make_config(path=npz_dir), tiny_net, "sum0", "class", classes, seeds, progress=False))
    b = Store(generate_set(make_config(path=npz_dir, run__workdir=str(tmp_path / "w2"), features__chunk_size=7,
                                       features__batch_size=3), tiny_net, "sum0", "class", classes, seeds, progress=False))
    np.testing.assert_array_equal(a.thumbnails(), b.thumbnails())
    np.testing.assert_allclose(a.features("midblock"), b.features("midblock"), atol=1e-3)
    img = generate(tiny_net, sample_noise(0, seeds[:4], (3, 16, 16)), condition_vectors("class", 10, classes=classes[:4]))
    np.testing.assert_array_equal(a.thumbnails()[:4], to_uint8(F.interpolate(img, size=(8, 8), mode="area")))
    meta = a.metadata()
    assert meta["seed_index"].tolist() == seeds.tolist() and meta["name"][1] == "goldfish"
    blend = np.full((20, 10), 0.0)
    blend[:, :2] = 0.5
    c = Store(generate_set(make_config(path=npz_dir), tiny_net, "sum0", "blend", np.full(20, -1), seeds, blend, progress=False))
    np.testing.assert_array_equal(c.label_vectors(), blend.astype(np.float32))
    with pytest.raises(UserError, match="seed indices repeat"):
        generate_set(make_config(path=npz_dir), tiny_net, "sum0", "zero", np.full(2, -1), [1, 1], progress=False)


@pytest.mark.parametrize("variant,given", [("uniform", False), ("class", False), ("blend", True)])
def test_generate_resumes_an_interrupted_store(tiny_net, npz_dir, make_config, tmp_path, monkeypatch, variant, given):
    classes, seeds = np.arange(40) % 10, np.arange(40) * 7
    vectors = np.random.default_rng(0).random((40, 10)) if given else None  # float64: used (and keyed) as float32
    reference = generate_set(make_config(path=npz_dir, run__workdir=str(tmp_path / "a")), tiny_net, "sum0", variant,
                             classes, seeds, vectors, progress=False)
    config = make_config(path=npz_dir, run__workdir=str(tmp_path / "b"))
    real_write = store_mod.StoreWriter.write_chunk

    def fail_chunk_1(self, i, *a, **k):
        if i == 1:
            raise RuntimeError("interrupted")
        real_write(self, i, *a, **k)

    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", fail_chunk_1)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_set(config, tiny_net, "sum0", variant, classes, seeds, vectors, progress=False)
    written = []
    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", lambda self, i, *a, **k: (written.append(i), real_write(self, i, *a, **k)))
    resumed = generate_set(config, tiny_net, "sum0", variant, classes, seeds, vectors, progress=False)
    assert written == [1, 2]  # chunk 0 (of 16 samples) was kept: the rerun's key is the interrupted run's
    assert _files(resumed) == _files(reference)
    if given:  # other label vectors are another configuration
        with pytest.raises(UserError, match="another configuration.*label_vectors was"):
            generate_set(config, tiny_net, "sum0", variant, classes, seeds, vectors[::-1], progress=False)


@pytest.mark.parametrize("variant,classes,vectors,match", [
    ("class", [0, -1], None, "every sample needs a class id"),
    ("class", [0, 10], None, r"class ids must lie in -1\.\.9"),
    ("blend", [-1, -1], None, "conditioning 'blend' needs label weights"),
    ("sideways", [-1, -1], None, "unknown conditioning mode 'sideways'"),
    ("blend", [-1, -1], np.ones((2, 9)), "label vector has length 9; the model takes 10 classes"),
    ("blend", [-1, -1], np.ones((3, 10)), "3 label vectors for 2 seeds"),
    ("blend", [-1, -1], np.array([[1.0] * 9 + [np.inf], [1.0] * 10]), "NaN or infinity"),
    ("uniform", [-1, -1, -1], None, "3 class ids for 2 seeds"),
])
def test_generate_refuses_bad_conditioning(tiny_net, npz_dir, make_config, variant, classes, vectors, match):
    with pytest.raises(UserError, match=match):
        generate_set(make_config(path=npz_dir), tiny_net, "sum0", variant, classes, [4, 5], vectors, progress=False)


def _shard_worker(rank, world, port, weights, config_overrides, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from dmd2report.config import load_config
    from dmd2report.models import build_preset

    net = build_preset("tiny").eval().requires_grad_(False)
    net.load_state_dict(load_file(weights))
    config = load_config(None, config_overrides)
    extract_real(config, net, "sum0", progress=False)
    generate_set(config, net, "sum0", "uniform", np.full(30, -1), np.arange(30), progress=False)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(chunks_mod.dist_rank_world(), f)
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tiny_net, npz_dir, make_config, tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import save_file

    one = make_config(path=npz_dir, features__reduce="pca:4", run__workdir=str(tmp_path / "one"))
    single = [extract_real(one, tiny_net, "sum0", progress=False),
              generate_set(one, tiny_net, "sum0", "uniform", np.full(30, -1), np.arange(30), progress=False)]
    weights = str(tmp_path / "w.safetensors")
    save_file(tiny_net.state_dict(), weights)
    overrides = {k: getattr(getattr(one, k.split(".")[0]), k.split(".")[1]) for k in
                 ["data.source", "data.path", "data.max_samples", "features.batch_size", "features.chunk_size",
                  "report.thumb_size", "features.pca_fit_samples", "features.reduce", "run.device"]}
    overrides["run.workdir"] = str(tmp_path / "two")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_shard_worker, args=(2, port, weights, overrides, str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[0, 2], [1, 2]]
    for path in single:
        sharded = tmp_path / "two" / "stores" / path.name
        assert _files(sharded) == _files(path), path.name
    assert json.loads((sharded / "manifest.json").read_text())["status"] == "complete"


def test_demo_data_through_extract(tiny_net, make_config):
    # The demo has 12 classes; the tiny model takes 10.
    with pytest.raises(UserError, match="class id 1[01] .*beyond the model's 10 classes"):
        extract_real(make_config("demo", data__per_class=1), tiny_net, "sum0", progress=False)
    config = make_config("demo", data__per_class=1, data__classes=[str(i) for i in range(10)])
    s = Store(extract_real(config, tiny_net, "sum0", overwrite=True, progress=False))
    assert len(s) == 10 and s.metadata()["name"].iloc[0] in {"red disc", "orange disc", "round ring", "oval ring",
        "level stripes", "tilted stripes", "green triangle", "yellow star", "purple square", "checkerboard"}
