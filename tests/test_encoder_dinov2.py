"""The DINOv2 encoder against timm's DINOv2 ViT fed the same official-layout state dict (random weights: the real
ones cannot be had offline), its preprocessing and position-embedding interpolation against direct transcriptions of
EDM2's DINOv2Detector and the hub model's formula, the official linear heads against their formula, every variant's
state-dict layout against timm's, and the refusal of bad weight files in one line naming the file.
"""

from __future__ import annotations

import math
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

from dmd2report.encoders.dinov2 import VARIANTS, DINOv2, build_dinov2, load_dinov2
from dmd2report.errors import UserError

timm = pytest.importorskip("timm", reason="a reference implementation: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[reference]'")
SwiGLUPacked = timm.layers.SwiGLUPacked

TIMM = {"dinov2-vits14": "vit_small_patch14_dinov2", "dinov2-vitb14": "vit_base_patch14_dinov2",
        "dinov2-vitl14": "vit_large_patch14_dinov2", "dinov2-vitg14": "vit_giant_patch14_dinov2"}


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights of meaningful size everywhere (timm's init leaves LayerScale at 1e-5, which would make every block
    nearly the identity and the comparison blind to them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.3 + 0.2 * r)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.ndim >= 2 and name not in ("cls_token", "pos_embed"):
                p.copy_(r / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * r)


def official_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's DINOv2 state dict in the layout of the official `dinov2_*_pretrain.pth` (the inverse of timm's
    `_convert_dinov2`: the SwiGLU's fc1/fc2 are w12/w3, and the training-only mask token is present)."""
    fc1, fc2 = timm_state["blocks.0.mlp.fc1.weight"], timm_state["blocks.0.mlp.fc2.weight"]
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]       # a packed SwiGLU: fc1 holds gate and value
    out = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if swiglu else k: v
           for k, v in timm_state.items()}
    out["mask_token"] = torch.randn(1, timm_state["cls_token"].shape[-1], generator=torch.Generator().manual_seed(5))
    return out


def timm_dinov2(kind: str, img_size: int = 518) -> torch.nn.Module:
    return timm.create_model(TIMM[kind], pretrained=False, img_size=img_size, num_classes=0).eval()


def official_interpolation(pos_embed: torch.Tensor, h: int, w: int, patch: int = 14) -> torch.Tensor:
    """Transcription of dinov2's `interpolate_pos_encoding` as the hub models run it (offset 0.1, no antialias)."""
    N = pos_embed.shape[1] - 1
    M = int(math.sqrt(N))
    w0, h0 = h // patch, w // patch           # upstream names x.shape[2] w: the same for square images
    sx, sy = float(w0 + 0.1) / M, float(h0 + 0.1) / M
    grid = F.interpolate(pos_embed.float()[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2), mode="bicubic",
                         antialias=False, scale_factor=(sx, sy))
    grid = grid.permute(0, 2, 3, 1).view(1, -1, pos_embed.shape[-1])
    return torch.cat((pos_embed.float()[:, 0].unsqueeze(0), grid), dim=1).to(pos_embed.dtype)


def edm2_preprocess(x: torch.Tensor) -> torch.Tensor:
    """Transcription of EDM2's DINOv2Detector (calculate_metrics.py, resize_mode 'torch') up to the model call."""
    x = F.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    return x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vits(tmp_path_factory):
    """timm's ViT-S/14 DINOv2 with random weights, the same weights as an official-layout file, and timm's network at
    224x224 given the position embedding the hub model interpolates (checked against the formula below; timm's own
    resampling differs). At the native 518 grid no interpolation happens in either: the same comparison, 5x slower."""
    ref = timm_dinov2("dinov2-vits14")
    randomise(ref)
    state = official_layout(ref.state_dict())
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    ref224 = timm_dinov2("dinov2-vits14", img_size=224)
    ref224.load_state_dict({**ref.state_dict(), "pos_embed": official_interpolation(ref.pos_embed, 224, 224)})
    return ref224, state, path


def one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg

# ------------------------------------------------------------------------------------------------
# Features and logits equal the references.


def test_uint8_images_end_to_end_equal_edm2_protocol_on_timm(vits):
    """64x64 and 32x32 uint8 images through our forward equal EDM2's preprocessing followed by timm's network, in
    float32 and float64."""
    ref224, _, path = vits
    model = load_dinov2("dinov2-vits14", path)
    assert (model.kind, model.feature_dim, model.num_classes, model.class_order) == ("dinov2-vits14", 384, 0, "")
    with torch.no_grad():
        for size in (64, 32):
            x = images(2, size)
            ours, logits = model(x)
            assert logits is None and ours.dtype == torch.float32 and ours.shape == (2, 384)
            theirs = ref224.forward_features(edm2_preprocess(x))[:, 0]
            assert rel(ours, theirs) <= 1e-5, (size, rel(ours, theirs))  # float32: 0 (bitwise) on CPU
            assert rel(ours[0], ours[1]) > 0.02                            # the images give different features
        x = edm2_preprocess(images(1, 64)).double()
        ours64, _ = model.double().encode(x)
        theirs64 = ref224.double().forward_features(x)[:, 0]
        ref224.float()
        assert ours64.dtype == torch.float32                                 # features are float32 whatever the dtype
        assert rel(ours64, theirs64.float()) <= 1e-7, rel(ours64, theirs64)  # float64 network: 0 after that cast
        model.blocks[7].ls2.gamma.mul_(1.001)                              # a 0.1% change in one block is seen
        assert rel(model.encode(x)[0], theirs64) > 1e-6


def test_position_embedding_interpolation_is_the_hub_models(vits):
    _, state, _ = vits
    model = build_dinov2("dinov2-vits14")
    model.load_state_dict(state)
    ours = model.interpolate_pos_encoding(224, 224)
    assert ours.shape == (1, 257, 384)
    assert torch.equal(ours, official_interpolation(model.pos_embed, 224, 224))
    # timm's resampling (by size, antialiased) is another function: why the end-to-end test gives timm ours.
    from timm.layers import resample_abs_pos_embed
    assert rel(resample_abs_pos_embed(model.pos_embed, [16, 16], num_prefix_tokens=1), ours) > 1e-3
    assert model.interpolate_pos_encoding(518, 518) is model.pos_embed


def test_preprocessing_is_edm2s():
    x = images(2, 64)
    ours = DINOv2.preprocess(x)
    assert torch.equal(ours, edm2_preprocess(x))
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32
    # resized before scaling and never clipped: the bicubic overshoot of a hard edge survives
    edge = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    edge[..., 4:] = 255
    assert DINOv2.preprocess(edge).max() > (1 - 0.406) / 0.225 + 0.01
    with pytest.raises(ValueError):
        DINOv2.preprocess(x.float())


def test_linear_heads_equal_the_official_formula(vits, tmp_path):
    """dinov2_vits14_linear_head.pth (layers 1) and *_linear4_head.pth (layers 4), as hub/classifiers.py reads them."""
    ref224, _, path = vits
    x = images(2, 64)
    with torch.no_grad():
        t = ref224._pos_embed(ref224.patch_embed(edm2_preprocess(x)))
        outs = []
        for block in ref224.blocks:
            t = block(t)
            outs.append(ref224.norm(t))                                  # get_intermediate_layers(norm=True)
    for layers, name in ((1, "dinov2_vits14_linear_head.pth"), (4, "dinov2_vits14_linear4_head.pth")):
        head = torch.nn.Linear((1 + layers) * 384, 1000)
        randomise(head, seed=3)
        torch.save(head.state_dict(), tmp_path / name)
        model = load_dinov2("dinov2-vits14", path, head=tmp_path / name)
        assert (model.num_classes, model.class_order, model.head_layers) == (1000, "imagenet", layers)
        assert "linear head" in model.protocol
        last = outs[-layers:]
        with torch.no_grad():
            features, logits = model(x)
            theirs = head(torch.cat([o[:, 0] for o in last] + [last[-1][:, 1:].mean(dim=1)], dim=1))
        assert logits.shape == (2, 1000) and logits.dtype == torch.float32
        assert rel(logits, theirs) <= 1e-5, (layers, rel(logits, theirs))  # 0 on CPU: the same ops
        assert rel(features, outs[-1][:, 0]) <= 1e-5


def test_swiglu_block_equals_timms_vitg_ffn():
    """ViT-g's fused SwiGLU (w12 = [gate; value], SiLU on the first half), on a tiny network of that layout."""
    ours = DINOv2("dinov2-vitg14", embed_dim=48, depth=2, num_heads=4, ffn_layer="swiglufused", img_size=56)
    ref = timm.models.VisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=2, num_heads=4,
                                        init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked,
                                        act_layer=torch.nn.SiLU, num_classes=0).eval()
    randomise(ref, seed=4)
    ours.load_state_dict(official_layout(ref.state_dict()), strict=True)
    assert ours.blocks[0].mlp.w12.weight.shape == (256, 48)        # (int(192 * 2 / 3) + 7) // 8 * 8 = 128, twice
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert rel(ours.eval().encode(x)[0], ref.forward_features(x)[:, 0]) <= 1e-5


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_state_dict_layout_is_the_official_one(kind):
    """Every variant built on the meta device has exactly the keys and shapes of timm's model converted to the official
    layout (no forward: ViT-g alone is 1.1e9 parameters)."""
    ours = {k: tuple(v.shape) for k, v in build_dinov2(kind, device="meta").state_dict().items()}
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in official_layout(timm_dinov2(kind).state_dict()).items()}
    assert ours == theirs
    assert build_dinov2(kind, device="meta").feature_dim == VARIANTS[kind]["embed_dim"]

# ------------------------------------------------------------------------------------------------
# Bad weights: refused in one line naming the file, before any image is encoded.


def test_another_size_names_the_right_kind(vits):
    _, _, path = vits
    with pytest.raises(UserError) as e:
        load_dinov2("dinov2-vitb14", path)
    msg = one_line(e, path)
    assert "ViT-S/14" in msg and "'dinov2-vits14'" in msg


def test_truncated_file(vits, tmp_path):
    _, _, path = vits
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: 2 << 20])
    with pytest.raises(UserError) as e:
        load_dinov2("dinov2-vits14", cut)
    assert "truncated" in one_line(e, cut)


def test_wrong_shapes_missing_keys_nan_registers(vits, tmp_path):
    _, state, _ = vits
    cases = {
        "shape": ({**state, "blocks.3.attn.qkv.weight": state["blocks.3.attn.qkv.weight"][:-1]},
                  "'blocks.3.attn.qkv.weight' has shape"),
        "missing": ({k: v for k, v in state.items() if not k.startswith("blocks.11.")},
                    "missing, the first 'blocks.11."),
        "nan": ({**state, "blocks.5.ls1.gamma": torch.full((384,), float("nan"))}, "'blocks.5.ls1.gamma' holds NaN"),
        "registers": ({**state, "register_tokens": torch.zeros(1, 4, 384)}, "4 register tokens"),
    }
    for name, (sd, expected) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        with pytest.raises(UserError) as e:
            load_dinov2("dinov2-vits14", path)
        assert expected in one_line(e, path), (name, str(e.value))


def test_other_networks_and_unsafe_pickles(tmp_path):
    inception = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3), "fc.weight": torch.zeros(1008, 2048),
                "Mixed_7c.branch_pool.conv.weight": torch.zeros(192, 2048, 1, 1)}, inception)
    with pytest.raises(UserError) as e:
        load_dinov2("dinov2-vitl14", inception)
    assert "Inception-v3" in one_line(e, inception)

    unsafe = tmp_path / "dinov2_vitl14_pretrain.pth"
    with open(unsafe, "wb") as f:                   # an object only full unpickling could build
        pickle.dump({"cls_token": torch.zeros(1, 1, 1024), "config": pytest.approx(1.0)}, f)
    with pytest.raises(UserError) as e:
        load_dinov2("dinov2-vitl14", unsafe)
    assert "safetensors" in one_line(e, unsafe)

    with pytest.raises(UserError) as e:
        load_dinov2("dinov2-vitl14", tmp_path / "absent.pth")
    one_line(e, tmp_path / "absent.pth")
    with pytest.raises(UserError, match="unknown DINOv2 kind 'dinov2-vith14'"):
        load_dinov2("dinov2-vith14", inception)


def test_bad_heads(vits, tmp_path):
    _, state, path = vits
    cases = {
        "vitb_head.pth": ({"weight": torch.zeros(1000, 2 * 768), "bias": torch.zeros(1000)},
                          "1536 -> 1000,[^;]*; the head of kind 'dinov2-vitb14'"),
        "nan_head.pth": ({"weight": torch.full((1000, 768), float("nan")), "bias": torch.zeros(1000)}, "NaN"),
        "bias_head.pth": ({"weight": torch.zeros(1000, 768), "bias": torch.zeros(999)}, "'bias' has shape"),
        "backbone_as_head.pth": (state, "holds a DINOv2 ViT-S/14 backbone"),
    }
    for name, (sd, expected) in cases.items():
        head = tmp_path / name
        torch.save(sd, head)
        with pytest.raises(UserError) as e:
            load_dinov2("dinov2-vits14", path, head=head)
        assert re.search(expected, one_line(e, head)), (name, str(e.value))


def test_bfloat16_runs_in_bfloat16_and_returns_float32(vits):
    """`load_dinov2(dtype=torch.bfloat16)` (or `.to(torch.bfloat16)`): the network in bfloat16, the preprocessing in
    float32 as EDM2's, the features float32 and near the float32 ones (random weights; the real drift of FD_DINOv2 is
    the benchmark's to state)."""
    _, _, path = vits
    model = load_dinov2("dinov2-vits14", path, dtype=torch.bfloat16)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and not model.training
    x = images(2, 32)
    with torch.no_grad():
        ours, _ = model(x)
        reference, _ = model.float()(x)
    assert ours.dtype == torch.float32 and 0 < rel(ours, reference) < 0.05, rel(ours, reference)
