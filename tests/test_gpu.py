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


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("mode", ["class", "uniform", "zero", "blend"])
def test_optimised_path_matches_float32(mode, compile):
    ref_net = _random_net()
    fast = build_preset("dmd2-imagenet64")
    fast.load_state_dict(ref_net.state_dict())
    dev = torch.device("cuda")
    ref_net = ref_net.eval().requires_grad_(False).to(dev)
    ref_net.use_fp16 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    fast = prepare(fast, dev, "auto", compile=compile, batch_hint=32)
    n = 32
    z = sample_noise(5, range(n), (3, 64, 64)).to(dev)
    weights = torch.rand(n, 1000) ** 8
    c = condition_vectors(mode, 1000, classes=list(range(n)), weights=weights, count=n).to(dev)
    s = torch.full((n,), 80.0, device=dev)
    layers = ["encoder_bottleneck", "midblock"]
    with torch.no_grad(), ActivationCapture(ref_net, layers) as a:
        ref = a.run(80 * z, s, c)
    with torch.no_grad(), ActivationCapture(fast, layers) as b:
        out = b.run(80 * z, s, c)
    assert torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < IMAGE_REL_TOL
    for k in layers:
        rel = ((b.activations[k] - a.activations[k]).norm() / a.activations[k].norm()).item()
        assert rel < ACTIVATION_REL_TOL, (k, rel)
