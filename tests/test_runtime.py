"""The compiled path (`model.compile`): whole-network graphs, the reference vectors reproduced."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmd2report.layers import ActivationCapture, mask_layers
from dmd2report.models import EDMPrecond
from dmd2report.runtime import (
    AUTO_COMPILE_MIN_SAMPLES,
    compile_forward,
    stage_samples,
    prepare,
    use_box_resampling,
)

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def traced_graphs(monkeypatch):
    """The stages compile only on CUDA (runtime.prepare), where tests/test_gpu.py checks Inductor's kernels against
    float32. Here the same whole graphs (fullgraph, static shapes, one per capture) run through AOTAutograd's traced
    graph (backend aot_eager): what is checked is this package's part, the compiled forms' arithmetic and their
    capture as one graph, in seconds instead of Inductor's CPU C++ builds (about a minute cold on 2 cores)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **(kw | {"backend": "aot_eager"})))


def _tiny():
    cfg = json.loads((FIX / "dhariwal_tiny.config.json").read_text())["config"]
    cfg["sigma_max"] = float(cfg["sigma_max"])
    net = EDMPrecond(**cfg)
    net.load_state_dict(load_file(FIX / "dhariwal_tiny.weights.safetensors"))
    return net.eval().requires_grad_(False), load_file(FIX / "dhariwal_tiny.vectors.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("box", [False, True])
def test_compiled_network_reproduces_reference_vectors(box):
    # The compiled forms (models.compiled) over the network, with the up blocks' convolutions from the
    # low-resolution maps where the resampling filter is the box, or without: the reference results.
    torch._dynamo.reset()
    net, v = _tiny()
    if box:
        use_box_resampling(net)  # as runtime.prepare does (the tiny configuration's filter is the box)
        assert any(getattr(m, "box_resample", False) for m in net.modules())
    x, sigma, labels = v["input.x"], v["input.sigma"], v["input.class_labels"]
    n = len(x)
    fwd = compile_forward(net, batch=4)  # n = 6: one whole batch of 4, one padded batch of 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a compile failure (eager fallback) warns: fail instead
        warnings.filterwarnings("ignore", message=".*script_method.*")
        cap = ActivationCapture(net, ["encoder_bottleneck", "midblock"])
        with torch.no_grad():
            out = cap.run(x, sigma, labels)
        # The early-exit graph is compiled as the network runs it (runtime.prepare always applies the box
        # resampling where the filter is the box); the plain network checks the capture graph only.
        if box:
            early = ActivationCapture(net, ["midblock"], early_exit=True)
            with torch.no_grad():
                stopped = early.run(x, sigma, labels)
            assert stopped is None
            torch.testing.assert_close(early.activations["midblock"], v["activation.dec.4x4_in0"], atol=1e-5, rtol=0)
    graphs = 2 if box else 1
    assert not fwd.failed and len(fwd.graphs) == graphs  # one graph per (capture, stop_after)
    assert out.shape[0] == n
    torch.testing.assert_close(out, v["output.D_x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.activations["midblock"], v["activation.dec.4x4_in0"], atol=1e-5, rtol=0)
    # Masking hooks: the eager path runs (the compiled graph knows nothing of hooks), still exact.
    held = v["activation.dec.4x4_in0"][:1]  # sample 0's, broadcast
    with torch.no_grad(), mask_layers(net, {"midblock": held}):
        masked = net(x, sigma, labels)
    torch.testing.assert_close(masked, v["masked.dec_first_block_from_sample0.output.D_x"], atol=1e-5, rtol=0)
    assert len(fwd.graphs) == graphs


def test_auto_compiles_only_large_stages():
    net, _ = _tiny()
    fwd = compile_forward(net, batch=4, enabled=False)
    fwd.auto = True
    stage_samples(net, AUTO_COMPILE_MIN_SAMPLES - 1)
    assert not fwd.enabled
    stage_samples(net, AUTO_COMPILE_MIN_SAMPLES)
    assert fwd.enabled
    stage_samples(net, 0)  # the stage ended: later small work runs eager
    assert not fwd.enabled
    # On the CPU nothing is compiled, whatever the setting; a bad setting is a clear error.
    assert "forward_capture" not in prepare(_tiny()[0], torch.device("cpu"), compile="on").__dict__
    from dmd2report.errors import UserError

    with pytest.raises(UserError, match="model.compile"):
        prepare(_tiny()[0], torch.device("cpu"), compile=True)  # the boolean of old: a mode is a string


def test_any_hook_in_the_network_runs_eager():
    """Masking the first encoder layer (a Conv2d, not a UNetBlock) must not be bypassed by a graph."""
    net, v = _tiny()
    fwd = compile_forward(net, batch=4)
    assert not fwd._hooked()
    with mask_layers(net, {"enc.16x16_conv": torch.zeros(32, 16, 16)}):
        assert fwd._hooked()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert fwd._hooked()
    finally:
        handle.remove()
    assert not fwd._hooked()


def test_compile_failure_falls_back_but_runtime_errors_surface(monkeypatch):
    import dmd2report.runtime as runtime

    net, v = _tiny()
    x, sigma, labels = v["input.x"], v["input.sigma"], v["input.class_labels"]

    def broken_backend(fn, **kw):
        def compiled(*a):
            raise RuntimeError("backend exploded")
        return compiled

    monkeypatch.setattr(runtime.torch, "compile", broken_backend)
    fwd = compile_forward(net, batch=8)
    with pytest.warns(UserWarning, match="torch.compile failed .*backend exploded.*running eager"), torch.no_grad():
        out = net(x, sigma, labels)
    torch.testing.assert_close(out, v["output.D_x"], atol=1e-5, rtol=0)  # the eager network answered
    assert fwd.failed

    calls = []

    def flaky_backend(fn, **kw):  # compiles fine, then fails while running (out of memory, say)
        def compiled(*a):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("CUDA out of memory")
            return fn(*a)
        return compiled

    monkeypatch.setattr(runtime.torch, "compile", flaky_backend)
    net, _ = _tiny()
    fwd = compile_forward(net, batch=8)
    with torch.no_grad():
        net(x, sigma, labels)
        with pytest.raises(RuntimeError, match="out of memory"):
            net(x, sigma, labels)
    assert not fwd.failed


def test_compiled_network_runs_the_compiled_forms(monkeypatch):
    """The graphs CompiledForward compiles run models.compiled (here traced by no compiler, so that the
    calls are seen): the up blocks' low-resolution convolutions, channels-last concatenations and
    group norms over (n, h, w, c) views, giving the reference results."""
    import dmd2report.runtime as runtime
    from dmd2report.models import compiled

    calls = {}

    def spy(name):
        original = getattr(compiled, name)

        def counted(*a, **kw):
            calls[name] = calls.get(name, 0) + 1
            return original(*a, **kw)
        monkeypatch.setattr(compiled, name, counted)

    for name in ("conv_after_upsampling", "cat_channels_last", "group_norm", "block_forward"):
        spy(name)
    monkeypatch.setattr(runtime.torch, "compile", lambda fn, **kw: fn)
    net, v = _tiny()
    use_box_resampling(net)
    fwd = compile_forward(net, batch=4)
    with torch.no_grad():
        out = net(v["input.x"], v["input.sigma"], v["input.class_labels"])
    torch.testing.assert_close(out, v["output.D_x"], atol=1e-5, rtol=0)
    assert not fwd.failed and len(fwd.graphs) == 1
    up_blocks = [name for name in net.model.dec if name.endswith("_up")]
    # each up block's conv0 (its skip has no kernel: upsampling only), in each of the 2 batches
    assert calls["conv_after_upsampling"] == 2 * len(up_blocks) > 0
    assert calls["cat_channels_last"] > 0 and calls["group_norm"] > 0 and calls["block_forward"] > 0


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_compiled_group_norm_from_channel_statistics_equals_group_norm(offset):
    # Compiled, group norm is assembled from per-channel mean/variance over the (n, h, w, c) view
    # (coalesced in channels-last); it must be F.group_norm, also for maps whose mean is large
    # against their spread.
    from dmd2report.models import compiled, unet

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 5, 7, generator=g) * torch.rand(1, 12, 1, 1, generator=g) * 2 + offset
    x = x + torch.randn(1, 12, 1, 1, generator=g) * 3  # channel means differ within a group
    w, b = torch.randn(12, generator=g), torch.randn(12, generator=g)
    norm = unet.GroupNorm(12, num_groups=4, min_channels_per_group=3)
    with torch.no_grad():
        norm.weight.copy_(w), norm.bias.copy_(b)
    torch._dynamo.reset()
    fn = torch.compile(lambda x: compiled.group_norm(norm, x), fullgraph=True, dynamic=False)
    expected = torch.nn.functional.group_norm(x.double(), 4, w.double(), b.double(), 1e-5)
    with torch.no_grad():
        got = fn(x)
        # and eager is ATen's kernel itself
        assert torch.equal(norm(x), torch.nn.functional.group_norm(x, 4, w, b, 1e-5))
    assert torch.allclose(got.double(), expected, atol=2e-4 * (1 + offset / 100), rtol=1e-4)


@pytest.mark.parametrize("scale", [False, True])
def test_compiled_nhwc_norm_silu_equals_eager_and_is_channels_last(scale):
    # The (n, h, w, c) formulation of a block's tail (group norm, adaptive scale/shift, SiLU) gives
    # what the eager upstream sequence gives, as a channels-last map in the input's dtype.
    from dmd2report.models import compiled, unet

    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 16, 6, 5, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    norm = unet.GroupNorm(16, num_groups=4)
    params = torch.randn(2, 32, 1, 1, generator=g)
    sc, sh = params.chunk(2, dim=1) if scale else (None, None)  # strided halves, as UNetBlock passes them
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=g)), norm.bias.copy_(torch.randn(16, generator=g))
        expected = unet.norm_silu(norm, x, sc, sh)
        torch._dynamo.reset()
        got = torch.compile(compiled.group_norm, fullgraph=True, dynamic=False)(norm, x, sc, sh, silu=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.dtype == x.dtype and got.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch._dynamo.reset()
        plain = torch.compile(lambda x: compiled.group_norm(norm, x), fullgraph=True)(x)
        torch.testing.assert_close(plain, norm(x), atol=1e-5, rtol=1e-5)


def test_compile_drops_only_inductors_extern_choice_bookkeeping_warning(caplog):
    # Compiled attention blocks made Inductor log dozens of lines that say nothing to a user; only that
    # message is dropped, the logger's other warnings still show.
    import logging

    net, _ = _tiny()
    compile_forward(net, batch=4, enabled=False)
    logger = logging.getLogger("torch._inductor.select_algorithm")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Constructing input/output tensor meta failed for Extern Choice")
        logger.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
