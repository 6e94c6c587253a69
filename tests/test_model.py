"""The generator reproduces upstream EDM/DMD2 exactly (reference vectors in tests/fixtures)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmd2report.layers import ActivationCapture, block_names, layer_shapes, mask_layers
from dmd2report.models import EDMPrecond, build_preset

FIX = Path(__file__).parent / "fixtures"
# The reference README: float32 on a CPU reproduces the vectors to about 1e-5 absolute. The decoder's activations reach
# |13|, where round-off that differs between CPUs (AVX2 against AVX-512 summation order) is 1.2e-5 after ~20 blocks:
# a relative term of the same size keeps the check at float32 round-off (an error of the architecture is O(1)).
ATOL = 1e-5
RTOL_ACT = 1e-5


@pytest.fixture(scope="module")
def tiny():
    cfg = json.loads((FIX / "dhariwal_tiny.config.json").read_text())["config"]
    cfg["sigma_max"] = float(cfg["sigma_max"])
    net = EDMPrecond(**cfg)
    net.load_state_dict(load_file(FIX / "dhariwal_tiny.weights.safetensors"), strict=True)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vectors():
    return load_file(FIX / "dhariwal_tiny.vectors.safetensors")


def _inputs(v):
    return v["input.x"], v["input.sigma"], v["input.class_labels"]


def test_output_matches_reference(tiny, vectors):
    out = tiny(*_inputs(vectors))
    torch.testing.assert_close(out, vectors["output.D_x"], atol=ATOL, rtol=0)


def test_every_block_activation_matches_reference(tiny, vectors):
    names = block_names(tiny)
    cap = ActivationCapture(tiny, names)
    cap.run(*_inputs(vectors))
    expected = {k[len("activation."):]: v for k, v in vectors.items() if k.startswith("activation.")}
    assert set(expected) == set(names)
    for name in names:
        torch.testing.assert_close(cap.activations[name], expected[name], atol=ATOL, rtol=RTOL_ACT, msg=name)


def test_masked_output_matches_reference(tiny, vectors):
    x, sigma, labels = _inputs(vectors)
    held = vectors["activation.dec.4x4_in0"][0]  # sample 0's first decoder block output, broadcast
    with mask_layers(tiny, {"midblock": held}):
        out = tiny(x, sigma, labels)
    torch.testing.assert_close(out, vectors["masked.dec_first_block_from_sample0.output.D_x"], atol=ATOL, rtol=0)
    # Per-sample masks give the same result when every row holds sample 0's activation.
    with mask_layers(tiny, {"dec.4x4_in0": held.expand(6, -1, -1, -1)}):
        out2 = tiny(x, sigma, labels)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    # The hook is gone afterwards.
    torch.testing.assert_close(tiny(x, sigma, labels), vectors["output.D_x"], atol=ATOL, rtol=0)


def test_mask_rejects_nan_and_wrong_shape(tiny, vectors):
    from dmd2report.errors import UserError

    bad = torch.zeros(64, 4, 4)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        with mask_layers(tiny, {"midblock": bad}):
            pass
    with pytest.raises(UserError, match="shape"):
        with mask_layers(tiny, {"midblock": torch.zeros(32, 4, 4)}):
            pass
    with pytest.raises(UserError, match="samples"):
        with mask_layers(tiny, {"midblock": torch.zeros(4, 64, 4, 4)}):
            tiny(*_inputs(vectors))


def test_capture_reduces_on_device_and_exits_early(tiny, vectors):
    x, sigma, labels = _inputs(vectors)
    calls = []
    hook = tiny.model.out_conv.register_forward_hook(lambda *a: calls.append(1))
    try:
        cap = ActivationCapture(tiny, ["encoder_bottleneck", "midblock"], reduce="mean", early_exit=True)
        out = cap.run(x, sigma, labels)
    finally:
        hook.remove()
    assert out is None and not calls  # nothing after midblock ran
    assert cap.activations["midblock"].shape == (6, 64)
    torch.testing.assert_close(cap.activations["midblock"], vectors["activation.dec.4x4_in0"].mean((2, 3)), atol=ATOL, rtol=0)
    torch.testing.assert_close(cap.activations["encoder_bottleneck"], vectors["activation.enc.4x4_block1"].mean((2, 3)), atol=ATOL, rtol=0)


def test_dmd2_imagenet64_preset_matches_checkpoint_layout():
    spec = json.loads((FIX / "dmd2_imagenet64.spec.json").read_text())
    net = build_preset("dmd2-imagenet64", device="meta")
    state = net.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == list(spec["state_dict_shapes"].items())
    assert len(state) == spec["num_tensors"] == 553
    assert sum(v.numel() for v in state.values()) == spec["num_parameters"] == 295_899_315
    assert not hasattr(net.model, "map_augment") or net.model.map_augment is None
    assert list(net.model.enc) == spec["enc_blocks"] and list(net.model.dec) == spec["dec_blocks"]
    shapes = layer_shapes(net)
    assert shapes["enc.8x8_block2"] == shapes["dec.8x8_in0"] == (768, 8, 8)


def test_use_fp16_means_bfloat16_on_cuda_only():
    net = build_preset("dmd2-imagenet64", device="meta")
    assert net.unet_dtype(torch.device("cuda")) == torch.bfloat16
    assert net.unet_dtype(torch.device("cuda"), force_fp32=True) == torch.float32
    assert net.unet_dtype(torch.device("cpu")) == torch.float32
    assert build_preset("tiny", device="meta").unet_dtype(torch.device("cuda")) == torch.float32


def test_constructor_takes_upstream_keywords():
    cfg = json.loads((FIX / "dhariwal_tiny.config.json").read_text())["config"]
    cfg["sigma_max"] = float(cfg["sigma_max"])
    assert set(cfg) == {"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data",
                        "model_type", "augment_dim", "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                        "attn_resolutions", "dropout", "label_dropout"}
    with torch.device("meta"):
        net = EDMPrecond(**(cfg | {"augment_dim": 9}))
    assert net.model.map_augment.weight.shape == (32, 9)  # present only when asked for


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bfloat16_path_close_to_float32_on_cuda(tiny, vectors):
    net = EDMPrecond(**(tiny.init_kwargs | {"use_fp16": True})).cuda().eval()
    net.load_state_dict(tiny.state_dict())
    x, sigma, labels = (t.cuda() for t in _inputs(vectors))
    ref = net(x, sigma, labels, force_fp32=True)
    out = net(x, sigma, labels)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel


def test_box_resampling_is_the_same_arithmetic(vectors):
    """runtime.prepare switches [1, 1]-filter resampling to pooling / nearest upsampling: still exact."""
    from dmd2report.models.unet import Conv2d
    from dmd2report.runtime import use_box_resampling

    cfg = json.loads((FIX / "dhariwal_tiny.config.json").read_text())["config"]
    cfg["sigma_max"] = float(cfg["sigma_max"])
    net = EDMPrecond(**cfg)
    net.load_state_dict(load_file(FIX / "dhariwal_tiny.weights.safetensors"), strict=True)
    net = net.eval().requires_grad_(False)
    use_box_resampling(net)
    resampling = [m for m in net.modules() if isinstance(m, Conv2d) and m.resample_filter is not None]
    assert resampling and all(m.box_resample for m in resampling)
    cap = ActivationCapture(net, block_names(net))
    out = cap.run(*_inputs(vectors))
    torch.testing.assert_close(out, vectors["output.D_x"], atol=ATOL, rtol=0)
    for name in block_names(net):
        torch.testing.assert_close(cap.activations[name], vectors[f"activation.{name}"], atol=ATOL, rtol=RTOL_ACT, msg=name)
    # Any other filter keeps the general (depthwise convolution) path.
    m = resampling[0]
    m.resample_filter = torch.tensor([1.0, 3, 3, 1]).ger(torch.tensor([1.0, 3, 3, 1]))[None, None] / 64
    use_box_resampling(net)
    assert not m.box_resample


def test_reduced_precision_attention_keeps_upstream_channel_layout():
    """The bf16 path (flash SDPA on 4-D heads) computes what the float32 einsums do, compiled also
    as token matrix products with q, k, v read in place (models.compiled.attention)."""
    from dmd2report.models import compiled
    from dmd2report.models.unet import UNetBlock

    # Four heads, so that a mixed-up channel layout (heads, channels per head, q|k|v) would show.
    torch.manual_seed(0)
    block = UNetBlock(64, 64, emb_channels=32, attention=True, channels_per_head=16).eval()
    assert block.num_heads == 4
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():  # no zero-initialised projection: attention must show in the output
            p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5 if p.ndim > 1 else 1 + 0.1 * torch.randn(p.shape, generator=g))
        x = torch.randn(3, block.in_channels, 4, 4, generator=g)
        emb = torch.randn(3, block.emb_channels, generator=g)
        ref = block(x, emb)
        got = block(x.bfloat16(), emb).float()
        # Compiled (Inductor fuses the q, k, v layout with the qkv bias): the same.
        torch._dynamo.reset()
        compiled_block = torch.compile(compiled.block_forward, fullgraph=True, dynamic=False)
        out = compiled_block(block, x.bfloat16(), emb).float()
    assert ((got - ref).norm() / ref.norm()).item() < 2e-2
    assert ((out - ref).norm() / ref.norm()).item() < 2e-2


def test_compiled_skip_concatenation_is_channels_last_and_exact():
    # Compiled, the decoder's concatenations are built channels-last (the layout of the convolutions
    # around them); the values are torch.cat's, eager as well as compiled.
    from dmd2report.models.compiled import cat_channels_last

    g = torch.Generator().manual_seed(0)
    x, skip = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    torch._dynamo.reset()
    got = torch.compile(cat_channels_last, fullgraph=True, dynamic=False)(x, skip)
    assert torch.equal(got, torch.cat([x, skip], 1))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cat_channels_last(x, skip), torch.cat([x, skip], 1))


@pytest.mark.parametrize("kernel", [1, 3])
def test_convolution_after_upsampling_from_the_low_resolution_map(kernel):
    # Compiled, an up block's convolution runs on the map before upsampling (models.compiled.conv2d):
    # four 2x2 phase convolutions, or the 1x1 convolution before the upsampling. Same function as
    # upsampling then convolving, with odd sizes too; the Conv2d module itself (eager) upsamples first.
    from dmd2report.models import compiled
    from dmd2report.models.unet import Conv2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 5, generator=g).contiguous(memory_format=torch.channels_last)
    conv = Conv2d(6, 4, kernel=kernel, up=True, init_bias=1).eval()
    conv.box_resample = True
    with torch.no_grad():
        conv.bias.copy_(torch.randn(4, generator=g))
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        ref = torch.nn.functional.conv2d(up, conv.weight, padding=kernel // 2).add_(conv.bias.reshape(1, -1, 1, 1))
        assert torch.equal(conv(x), ref)  # eager: upstream's order of operations
        torch.testing.assert_close(compiled.conv_after_upsampling(x, conv.weight, conv.bias), ref, atol=1e-5, rtol=0)
        torch._dynamo.reset()
        traced = []

        def inductor_keeping_the_graph(gm, example_inputs):
            from torch._inductor.compile_fx import compile_fx

            traced.append(gm.code)
            return compile_fx(gm, example_inputs)

        got = torch.compile(lambda x: compiled.conv2d(conv, x), backend=inductor_keeping_the_graph,
                            fullgraph=True, dynamic=False)(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert got.shape == (2, 4, 6, 10)
    # The compiled graph took that path: phase taps summed from the weights, or the 1x1 convolution
    # ahead of the upsampling.
    (code,) = traced
    assert ("einsum" in code) if kernel == 3 else code.index("conv2d") < code.index("interpolate")
