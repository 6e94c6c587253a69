"""The CUDA paths (bf16 + flash SDPA, eager and with `model.compile`) against float32.

Run on a CUDA machine: `pytest -m gpu tests/test_gpu.py`. Skipped elsewhere. The tolerances are
the ones stated in benchmarks/README.md.
"""

import pytest
import torch

from dmd2report.layers import ActivationCapture
from dmd2report.models import build_preset
from dmd2report.runtime import prepare
from dmd2report.sampling import condition_vectors, sample_noise

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

IMAGE_REL_TOL = 2e-2        # ||bf16 - fp32|| / ||fp32|| of the one-step images
ACTIVATION_REL_TOL = 3e-2   # same, for the captured encoder_bottleneck and midblock outputs


def _random_net(seed=0):
    net = build_preset("dmd2-imagenet64")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():  # no zero-initialised branch left
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 if p.ndim > 1
                    else (1 if name.endswith("weight") else 0) + 0.1 * torch.randn(p.shape, generator=g))
    return net


@pytest.fixture(scope="module")
def nets():
    """float32 reference, optimised eager and optimised compiled copies of one random network."""
    ref_net = _random_net()
    dev = torch.device("cuda")
    fast = {}
    for compile in ("off", "on"):
        net = build_preset("dmd2-imagenet64")
        net.load_state_dict(ref_net.state_dict())
        # The default batch on an H200 (n = 32 runs padded): the benchmarks' graphs, so a device run compiles them once.
        fast[compile] = prepare(net, dev, "auto", compile=compile, batch_hint=1024)
    ref_net = ref_net.eval().requires_grad_(False).to(dev)
    ref_net.use_fp16 = False
    return ref_net, fast


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("compile", ["off", "on"], ids=["eager", "compiled"])
@pytest.mark.parametrize("mode", ["class", "uniform", "zero", "blend"])
def test_optimised_path_matches_float32(nets, mode, compile):
    ref_net, fast = nets
    fast = fast[compile]
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = 32
    z = sample_noise(5, range(n), (3, 64, 64)).to(dev)
    weights = torch.rand(n, 1000) ** 8
    c = condition_vectors(mode, 1000, classes=list(range(n)), weights=weights, count=n).to(dev)
    s = torch.full((n,), 80.0, device=dev)
    layers = ["encoder_bottleneck", "midblock"]
    a = ActivationCapture(ref_net, layers)
    with torch.no_grad():
        ref = a.run(80 * z, s, c)
    b = ActivationCapture(fast, layers)
    with torch.no_grad():
        out = b.run(80 * z, s, c)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < IMAGE_REL_TOL
    for k in layers:
        rel = _rel(b.activations[k], a.activations[k])
        assert rel < ACTIVATION_REL_TOL, (k, rel)


@pytest.mark.parametrize("n", [20, 70])  # batches padded to the compiled size
def test_compiled_extraction_early_exit_and_odd_batches(nets, n):
    ref_net, fast = nets
    fast = fast["on"]
    dev = torch.device("cuda")
    x = sample_noise(9, range(n), (3, 64, 64)).to(dev).clamp(-1, 1)
    c = condition_vectors("class", 1000, classes=[i * 7 for i in range(n)]).to(dev)
    s = torch.full((n,), 80.0, device=dev)
    layers = ["encoder_bottleneck", "midblock"]
    a = ActivationCapture(ref_net, layers, early_exit=True)
    with torch.no_grad():
        assert a.run(80 * x, s, c) is None
    b = ActivationCapture(fast, layers, early_exit=True)
    with torch.no_grad():
        assert b.run(80 * x, s, c) is None
    for k in layers:
        assert b.activations[k].shape == a.activations[k].shape
        assert _rel(b.activations[k], a.activations[k]) < ACTIVATION_REL_TOL
    assert fast.forward_capture.enabled and not fast.forward_capture.failed and fast.forward_capture.graphs


def test_store_stages_on_cuda_match_float32(nets, tmp_path):
    """`extract` and `generate` on CUDA with the compiled network (several chunks, host copies under
    way while the next chunk runs) store what the float32 network stores: features and the masking
    subsets within the tolerances, metadata and input thumbnails exactly."""
    import numpy as np

    from dmd2report.classes import ClassIndex
    from dmd2report.config import load_config
    from dmd2report.stages.extract import extract_real
    from dmd2report.stages.generate import generate_set
    from dmd2report.store import Store
    from dmd2report.workdir import WorkDir

    ref_net, fast = nets
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(3)
    n = 80
    (tmp_path / "npz").mkdir()
    images = np.repeat(np.repeat(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), 8, axis=2), 8, axis=3)
    np.savez(tmp_path / "npz" / "train_data_batch_1.npz", data=images.reshape(n, -1), labels=rng.integers(1, 1001, n))

    def stores(net, name):
        config = load_config(None, {
            "run.workdir": str(tmp_path / name), "run.device": "cuda", "model.preset": "dmd2-imagenet64",
            "data.source": "imagenet64-npz", "data.path": str(tmp_path / "npz"), "data.max_samples": 0,
            "features.batch_size": 1024, "features.chunk_size": 32, "features.generated": "generation",
            "report.thumb_size": 16})
        wd, classes = WorkDir(config.run.workdir), ClassIndex.imagenet()
        real = Store(extract_real(config, wd, net, "m", classes, progress=False))
        gen = Store(generate_set(config, wd, net, "m", "class", np.arange(40) * 7, np.arange(40), classes=classes,
                                 progress=False))
        return real, gen

    ref_real, ref_gen = stores(ref_net, "float32")
    real, gen = stores(fast["on"], "compiled")
    assert fast["on"].forward_capture.graphs and not fast["on"].forward_capture.failed
    for ref, got in ((ref_real, real), (ref_gen, gen)):
        assert len(got) == len(ref) > 32  # more than one chunk
        pd_ref, pd_got = ref.metadata(), got.metadata()
        for column in ("sample_id", "class_id", "synset", "source", "has_full", "has_recon"):
            assert pd_got[column].tolist() == pd_ref[column].tolist(), column
        for layer in ref.layers:
            a, b = ref.features(layer).astype(np.float32), got.features(layer).astype(np.float32)
            assert np.isfinite(b).all() and np.abs(b).max() > 0
            assert np.linalg.norm(b - a) / np.linalg.norm(a) < ACTIVATION_REL_TOL, layer
    assert np.array_equal(real.thumbnails(), ref_real.thumbnails())  # thumbnails of the input images
    (ids_ref, full_ref), (ids, full) = ref_real.full_activations(), real.full_activations()
    assert np.array_equal(ids, ids_ref) and len(ids) > 32
    assert np.linalg.norm(full - full_ref) / np.linalg.norm(full_ref) < ACTIVATION_REL_TOL
    (ids_ref, recon_ref), (ids, recon) = ref_real.reconstructions(), real.reconstructions()
    assert np.array_equal(ids, ids_ref) and len(ids) > 32
    assert np.abs(recon.astype(int) - recon_ref.astype(int)).mean() < 2  # grey levels
    assert np.abs(gen.thumbnails().astype(int) - ref_gen.thumbnails().astype(int)).mean() < 2  # grey levels
