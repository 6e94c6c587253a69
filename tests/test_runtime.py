"""The compiled path (`model.compile`): one shared fused function, same results, hooks intact."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmd2report.layers import ActivationCapture
from dmd2report.models import EDMPrecond
from dmd2report.models.unet import UNetBlock, norm_silu
from dmd2report.runtime import _compile_blocks

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.slow
def test_compiled_norm_silu_matches_reference_with_few_graphs():
    from torch._dynamo.utils import counters

    cfg = json.loads((FIX / "dhariwal_tiny.config.json").read_text())["config"]
    cfg["sigma_max"] = float(cfg["sigma_max"])
    net = EDMPrecond(**cfg)
    net.load_state_dict(load_file(FIX / "dhariwal_tiny.weights.safetensors"))
    net = net.eval().requires_grad_(False)
    v = load_file(FIX / "dhariwal_tiny.vectors.safetensors")
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a compile failure (eager fallback) warns: fail instead
        warnings.filterwarnings("ignore", message=".*script_method.*")
        _compile_blocks(net, torch.device("cpu"), 4)
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    assert all(b.norm_silu is not norm_silu for b in blocks)  # every block uses the compiled function
    with torch.no_grad(), ActivationCapture(net, ["midblock"]) as cap:
        out = cap.run(v["input.x"], v["input.sigma"], v["input.class_labels"])
    torch.testing.assert_close(out, v["output.D_x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.activations["midblock"], v["activation.dec.4x4_in0"], atol=1e-5, rtol=0)
    # One function for all 22 blocks: a few graphs (shapes are dynamic), not one per block.
    assert counters["stats"]["unique_graphs"] <= 8
