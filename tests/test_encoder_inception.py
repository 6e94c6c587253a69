"""The FID Inception-v3 encoder against pytorch-fid's own model fed the same random state dict and images; the
Frechet distance against pytorch-fid's, the Inception Score against torch-fidelity's; reference statistics files;
every bad weights file refused in one line that names it. Random weights: the real file cannot be had offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmd2report.encoders.inception import FIDInceptionV3, load_inception
from dmd2report.encoders.stats import inception_score, load_stats, save_stats
from dmd2report.encoders.weights import check_state_dict, guess_kind, read_state_dict
from dmd2report.errors import UserError
from dmd2report.metric_defs import frechet_from_stats, mean_and_cov

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception", reason="a reference implementation: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[reference]'")
torchvision = pytest.importorskip("torchvision", reason="a reference implementation: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[reference]'")
pytest.importorskip("torch_fidelity", reason="a reference implementation: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[reference]'")
REL = 1e-5   # the bound on |ours - reference| / max |reference|


def random_fid_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the layout of pt_inception-2015-12-05-6726825d.pth (torchvision's Inception3, 1008 classes, no
    aux head) with random values scaled so activations stay O(1) through the 94 layers."""
    with torch.device("meta"):   # the layout only
        net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
        elif k.endswith("conv.weight"):
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
        elif k.endswith(("running_var", "bn.weight")):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(("running_mean", "bn.bias")):
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        else:  # fc
            out[k] = torch.randn(v.shape, generator=g) * (0.05 if k == "fc.weight" else 1.0)
    return out


@pytest.fixture(scope="module")
def state():
    return random_fid_state_dict()


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def encoded(weights_file, images):
    """Our encoder loaded from the file, and its (features, logits) of the images."""
    enc = load_inception("inception", weights_file)
    with torch.no_grad():
        return enc, *enc(images)


@pytest.fixture(scope="module")
def cheap(state):
    """The state dict's keys and shapes with one stored value each (expanded views): files that are refused before
    any value matters, written in milliseconds."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def reference(state):
    """pytorch-fid's InceptionV3 as its FID path builds it, its weight download replaced by our random state dict."""
    mp = pytest.MonkeyPatch()
    mp.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **kw: dict(state))
    try:
        net = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    finally:
        mp.undo()
    return net.eval()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def test_features_and_logits_match_pytorch_fid(encoded, state, images, reference):
    enc, feats, logits = encoded
    with torch.no_grad():
        ref = reference(images.float() / 255)[0].squeeze(3).squeeze(2)   # ToTensor's /255, as pytorch-fid's loader
    assert feats.dtype == logits.dtype == torch.float32
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert float(ref.abs().max()) > 1e-2 and ref.std(0).mean() > 1e-3   # the random net did not collapse
    assert rel_err(feats, ref) <= REL, rel_err(feats, ref)
    ref_logits = ref.double() @ state["fc.weight"].double().T   # bias-free: torch-fidelity's "logits_unbiased"
    assert rel_err(logits, ref_logits) <= REL, rel_err(logits, ref_logits)
    biased = FIDInceptionV3(logits_bias=True)
    biased.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert rel_err(biased.eval()(images[:1])[1], ref_logits[:1] + state["fc.bias"].double()) <= REL


def test_tf1_protocol_matches_torch_fidelity(weights_file, images, encoded):
    """"inception-tf1" against torch-fidelity's Inception (its TensorFlow-1 resize and (x-128)/128) on the same file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from dmd2report.encoders.inception import resize_like_tf1
    for shape in ((64, 64), (32, 32), (17, 45), (300, 400)):   # up and down, odd and non-square
        x = torch.rand((1, 3, *shape), generator=torch.Generator().manual_seed(4)) * 255
        want = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert rel_err(resize_like_tf1(x, 299), want) <= 1e-6, shape
    ref = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(weights_file))   # our own file: safe
    enc = load_inception("inception-tf1", weights_file)
    assert enc.kind == "inception-tf1" and "torch-fidelity" in enc.protocol and "TensorFlow 1" in enc.protocol
    with torch.no_grad():
        (feats, logits), (ref_feats, ref_logits) = enc(images[:1]), ref(images[:1])
    assert rel_err(feats, ref_feats) <= REL and rel_err(logits, ref_logits) <= REL
    assert rel_err(encoded[1][:1], ref_feats) > 1e-3   # pytorch-fid's protocol is another one: the check can fail


def test_the_fid_patches_matter(state, images, encoded):
    """torchvision's unpatched Inception-v3 with the same weights gives other features: the comparison above can
    fail."""
    plain = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    plain.load_state_dict(state)
    plain.fc = torch.nn.Identity()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images[:1].float() / 255, size=(299, 299), mode="bilinear",
                                            align_corners=False)
        assert rel_err(encoded[1][:1], plain.eval()(2 * x - 1)) > 1e-2


def test_contract_attributes_and_formats(state, encoded, tmp_path, images):
    enc = encoded[0]
    assert (enc.kind, enc.feature_dim, enc.num_classes, enc.class_order) == ("inception", 2048, 1008, "")
    assert "pytorch-fid" in enc.protocol and "EDM" in enc.protocol and "bias" in enc.protocol
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    from safetensors.torch import save_file
    st = tmp_path / "part.safetensors"   # the loader is the same after reading: a part of the tensors shows the format
    part = {k: state[k] for k in list(state)[:30]}
    save_file(part, str(st))
    got = read_state_dict(st, "test weights")
    assert got.keys() == part.keys() and all(torch.equal(got[k], v) for k, v in part.items())
    # The other layouts with one distinct value per tensor (expanded views: small files), so a key read into the
    # wrong place shows.
    marked = {k: torch.full((), i % 97, dtype=v.dtype).expand(v.shape) for i, (k, v) in enumerate(state.items())}
    wrapped, ddp_old = tmp_path / "wrapped.pth", tmp_path / "ddp-old.pth"
    torch.save({"state_dict": marked, "epoch": 3}, wrapped)
    # DDP's `module.` prefix, and no BatchNorm step counters (saved before PyTorch 0.4.1)
    torch.save({"module." + k: v for k, v in marked.items() if not k.endswith("num_batches_tracked")}, ddp_old)
    got = load_inception("inception", wrapped).state_dict()
    assert got.keys() == marked.keys() and all(torch.equal(got[k], marked[k]) for k in marked)
    got = load_inception("inception", ddp_old).state_dict()
    assert got.keys() == marked.keys()
    assert all(torch.equal(got[k], v if not k.endswith("num_batches_tracked") else torch.tensor(0))
               for k, v in marked.items())
    with torch.no_grad():   # another input size (the demo's 32x32) goes through the same 299x299 resize
        assert enc(images[:1, :, :32, :32].contiguous())[0].shape == (1, 2048)
    with pytest.raises(ValueError):
        enc(images.float())


def one_line_error(path, fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    return msg


def test_bad_weights_are_refused_in_one_line(cheap, weights_file, tmp_path):
    load = lambda p: lambda: load_inception("inception", p)
    missing = tmp_path / "nothing.pth"
    assert "no such file" in one_line_error(missing, load(missing))

    dino = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 1370, 384),
                "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14),
                "blocks.0.attn.qkv.weight": torch.zeros(1152, 384)},
               dino)
    msg = one_line_error(dino, load(dino))
    assert "DINOv2 ViT-S/14" in msg and "wrong kind" in msg

    from dmd2report.models import build_preset
    generator = tmp_path / "pytorch_model.bin"   # the DMD2 checkpoint given as the encoder
    torch.save(build_preset("tiny").state_dict(), generator)
    assert "DMD2/EDM generator" in one_line_error(generator, load(generator))

    raw = weights_file.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[: len(raw) // 2])
    assert "truncated" in one_line_error(cut, load(cut))
    legacy, cut_legacy = tmp_path / "legacy.pth", tmp_path / "cut-legacy.pth"
    torch.save(cheap, legacy, _use_new_zipfile_serialization=False)
    cut_legacy.write_bytes(legacy.read_bytes()[:5000])
    assert "truncated" in one_line_error(cut_legacy, load(cut_legacy))
    from safetensors.torch import save_file
    st, cut_st = tmp_path / "w.safetensors", tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in list(cheap.items())[:40]}, str(st))
    cut_st.write_bytes(st.read_bytes()[:-1000])
    assert "truncated" in one_line_error(cut_st, load(cut_st))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    one_line_error(empty, load(empty))

    shapes = tmp_path / "imagenet1000.pth"
    torch.save(cheap | {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, shapes)
    msg = one_line_error(shapes, load(shapes))
    assert "'fc.weight'" in msg and "[1000, 2048]" in msg and "[1008, 2048]" in msg
    no_key = tmp_path / "no-key.pth"
    torch.save({k: v for k, v in cheap.items() if k != "Mixed_7c.branch_pool.conv.weight"}, no_key)
    assert "'Mixed_7c.branch_pool.conv.weight'" in one_line_error(no_key, load(no_key))
    extra = tmp_path / "aux.pth"
    torch.save(cheap | {"AuxLogits.fc.weight": torch.zeros(1008, 768)}, extra)
    assert "'AuxLogits.fc.weight'" in one_line_error(extra, load(extra))

    nan = tmp_path / "nan.pth"
    bad = dict(cheap)
    bad["Mixed_6b.branch7x7_2.bn.running_var"] = torch.ones(160)
    bad["Mixed_6b.branch7x7_2.bn.running_var"][5] = float("nan")
    torch.save(bad, nan)
    assert "'Mixed_6b.branch7x7_2.bn.running_var'" in one_line_error(nan, load(nan))

    pickled = tmp_path / "full-model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)    # a whole nn.Module: only full unpickling could read it
    msg = one_line_error(pickled, load(pickled))
    assert "refused" in msg and "safetensors" in msg and "weights_only=False" in msg

    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_dict)
    assert "state dict" in one_line_error(not_dict, load(not_dict))
    msg = one_line_error(weights_file, lambda: load_inception("dinov2-vitl14", weights_file))
    assert "not the FID Inception-v3" in msg


def test_read_state_dict_is_never_a_full_unpickle(tmp_path, monkeypatch):
    """A pickle whose loading would run code is refused without running it."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": Evil()}, path)
    one_line_error(path, lambda: read_state_dict(path, "test weights"))
    assert not (tmp_path / "ran").exists()

def test_check_state_dict_names_the_kind_it_sees(tmp_path):
    """The hints the other encoders' loaders get from the same check (DINOv2 sizes, heads, the generator)."""
    def vit(dim):
        return {"cls_token": (1, 1, dim), "patch_embed.proj.weight": (dim, 3, 14, 14), "blocks.0.attn.qkv.weight":
                (3 * dim, dim)}
    path = tmp_path / "w.pth"
    sd = {k: torch.zeros(s) for k, s in vit(384).items()}
    msg = one_line_error(path, lambda: check_state_dict(sd, vit(1024), path, "DINOv2 ViT-L/14 weights"))
    assert "holds a DINOv2 ViT-S/14 backbone, not DINOv2 ViT-L/14 weights" in msg and "'cls_token'" in msg
    assert guess_kind({"weight": (1000, 2048), "bias": (1000,)}) == "a linear classification head (2048 -> 1000)"
    assert guess_kind({"model.enc.64x64_conv.weight": (192, 3, 3, 3)}) == "a DMD2/EDM generator (EDMPrecond)"
    assert guess_kind({"foo": (1,)}) is None
    same_kind = vit(384) | {"norm.weight": (384,)}
    msg = one_line_error(path, lambda: check_state_dict(sd, same_kind, path, "DINOv2 ViT-S/14 weights"))
    assert "does not match" in msg and "1 key(s) missing" in msg
    check_state_dict(sd, vit(384), path, "DINOv2 ViT-S/14 weights")   # exact: no error


#----------------------------------------------------------------------------
# Frechet distance, Inception Score, reference statistics.

def test_frechet_distance_equals_pytorch_fid():
    """The FD the report prints in a standard space (the engine's, over its own statistics) is pytorch-fid's."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(0)
    for n, d, rel in ((200, 16, 1e-12), (3000, 256, 1e-12), (12, 32, 1e-7)):   # full rank, then n < d
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n + 7, d)) * 1.3 + 0.2
        s = (*mean_and_cov(x), *mean_and_cov(y))
        assert np.allclose(s[0], np.mean(x, axis=0)) and np.allclose(s[1], np.cov(x, rowvar=False))
        ours, ref = frechet_from_stats(*s), float(calculate_frechet_distance(*s))
        assert abs(ours - ref) <= rel * abs(ref), (ours, ref)
    assert frechet_from_stats(*mean_and_cov(x), *mean_and_cov(x)) == pytest.approx(0, abs=1e-6)


def test_inception_score_equals_torch_fidelity():
    from torch_fidelity.defaults import DEFAULTS
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric
    # The protocol our docstrings state: bias-free logits, 10 splits, shuffled with seed 2020.
    assert FeatureExtractorInceptionV3.get_default_feature_layer_for_metric("isc") == "logits_unbiased"
    assert (DEFAULTS["isc_splits"], DEFAULTS["samples_shuffle"], DEFAULTS["rng_seed"]) == (10, True, 2020)
    logits = np.random.default_rng(2).normal(size=(103, 1008)).astype(np.float32) * 4
    ref = isc_features_to_metric(torch.from_numpy(logits))
    mean, std = inception_score(logits)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)
    ref3 = isc_features_to_metric(torch.from_numpy(logits), splits=3, shuffle=False)
    assert inception_score(logits, splits=3, shuffle=False) == pytest.approx(
        (ref3["inception_score_mean"], ref3["inception_score_std"]), rel=1e-9)
    assert inception_score(logits, splits=3, shuffle=False) != pytest.approx((mean, std), rel=1e-3)


def test_reference_statistics_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = mean_and_cov(rng.normal(size=(50, 6)))
    path = tmp_path / "ref.npz"
    save_stats(path, mu, sigma)
    got_mu, got_sigma = load_stats(path, dim=6)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)
    assert got_mu.dtype == got_sigma.dtype == np.float64
    openai = tmp_path / "VIRTUAL_imagenet64_labeled.npz"   # OpenAI's batches: images and spatial stats beside mu, sigma
    np.savez(openai, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu.astype(np.float32), sigma=sigma, mu_s=mu,
             sigma_s=sigma)
    assert np.allclose(load_stats(openai)[0], mu, rtol=1e-6)

    def bad(name, **arrays):
        p = tmp_path / name
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        return one_line_error(p, lambda: load_stats(p, dim=6))
    assert "'sigma'" in bad("no-sigma.npz", mu=mu)
    assert "(D, D)" in bad("flat.npz", mu=mu, sigma=sigma.ravel())
    assert "dimension 6" in bad("mismatch.npz", mu=mu, sigma=sigma[:5, :5])
    assert "dimension 5" in bad("dim.npz", mu=mu[:5], sigma=sigma[:5, :5])
    nan_mu = mu.copy()
    nan_mu[2] = np.nan
    assert "NaN" in bad("nan.npz", mu=nan_mu, sigma=sigma)
    assert "cannot read" in bad("object.npz", mu=np.array([{"a": 1}], dtype=object), sigma=sigma)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, mu)
    assert "single array" in one_line_error(single, lambda: load_stats(single))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    one_line_error(junk, lambda: load_stats(junk))
    one_line_error(tmp_path / "none.npz", lambda: load_stats(tmp_path / "none.npz"))
    with pytest.raises(UserError):
        save_stats(tmp_path / "x.npz", mu, sigma[:3])
