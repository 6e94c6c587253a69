"""A DhariwalUNet's architecture read off its state dict (model.preset = "auto", `inspect`), and [model.config]."""

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from dmd2report.checkpoint import (check_outputs, checkpoint_architecture, load_generator, model_architecture,
                                   read_shapes)
from dmd2report.cli import cli, inspect_table
from dmd2report.config import ArchitectureConfig, keys, load_config
from dmd2report.context import Context
from dmd2report.errors import UserError
from dmd2report.models import PRESETS, ArchitectureError, build_network, build_preset, infer_architecture, preset_config
from dmd2report.models.architecture import DEFAULTS, FIXED, shapes_of
from dmd2report.pipeline import stage_keys

FIX = Path(__file__).parent / "fixtures"
REVEALED = ("img_resolution", "img_channels", "label_dim", "augment_dim", "model_channels", "channel_mult",
            "channel_mult_emb", "num_blocks", "attn_resolutions")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_read_off_their_shapes(name):
    kwargs, like = infer_architecture(shapes_of(build_preset(name, device="meta")))
    assert (kwargs, like) == (preset_config(name), name)


def test_real_dmd2_checkpoint_layout_is_the_dmd2_preset():
    spec = json.loads((FIX / "dmd2_imagenet64.spec.json").read_text())
    kwargs, like = infer_architecture(spec["state_dict_shapes"])
    assert (kwargs, like) == (preset_config("dmd2-imagenet64"), "dmd2-imagenet64")
    guide = (Path(__file__).resolve().parents[1] / "docs" / "your-model-and-data.md").read_text(encoding="utf-8")
    assert f"```toml\n{inspect_table(kwargs, like)}\n```" in guide, \
        "docs/your-model-and-data.md's [model.config] example is not inspect's"
    assert checkpoint_architecture(read_shapes(FIX / "dhariwal_tiny.weights.safetensors")) == (preset_config("tiny"), "tiny")


def random_config(rng: np.random.Generator) -> dict:
    """EDMPrecond keywords drawn within the DhariwalUNet's rules: 1-4 levels halving the resolution,
    any widths, depths (0 blocks too), attention sets, label and augment dimensions, and random values
    of the keywords that shapes cannot tell."""
    levels = int(rng.integers(1, 5))
    resolution = int(rng.integers(1, 5)) * 2 ** (levels - 1)
    return dict(img_resolution=resolution, img_channels=int(rng.integers(1, 5)),
                label_dim=int(rng.choice([0, rng.integers(1, 1001)])), augment_dim=int(rng.choice([0, rng.integers(1, 10)])),
                model_channels=int(rng.choice([8, 16, 24, 32, 40, 64, 96, 128, 192])),
                channel_mult=[int(m) for m in rng.integers(1, 5, levels)], channel_mult_emb=int(rng.integers(1, 5)),
                num_blocks=int(rng.integers(0, 4)),
                attn_resolutions=[resolution >> i for i in range(levels) if rng.random() < 0.5],
                use_fp16=bool(rng.random() < 0.5), sigma_data=float(rng.uniform(0.1, 1)),
                dropout=float(rng.uniform(0, 0.5)), label_dropout=float(rng.uniform(0, 0.5)), **FIXED)


@pytest.mark.parametrize("seed", range(3))
def test_random_configurations_are_read_exactly(seed):
    rng = np.random.default_rng(seed)
    for _ in range(6):
        config = random_config(rng)
        shapes = list(shapes_of(build_network(config, device="meta")).items())
        random.Random(seed).shuffle(shapes)  # key order tells nothing (safetensors sorts keys)
        kwargs, like = infer_architecture(dict(shapes))
        # A block of fewer than 64 channels has no attention heads: attention there is no part of the network.
        width = dict(zip([config["img_resolution"] >> i for i in range(len(config["channel_mult"]))],
                         [config["model_channels"] * m for m in config["channel_mult"]]))
        expected = {k: config[k] for k in REVEALED} | {
            "attn_resolutions": [r for r in config["attn_resolutions"] if width[r] >= 64]}
        assert {k: kwargs[k] for k in REVEALED} == expected, config
        assert {k: kwargs[k] for k in DEFAULTS} == ({k: PRESETS[like][k] for k in DEFAULTS} if like else DEFAULTS)
        assert shapes_of(build_network(kwargs, device="meta")) == dict(shapes)


def _tiny_state():
    return shapes_of(build_preset("tiny", device="meta"))


def _edited(**changes):
    state = _tiny_state()
    for key, shape in changes.items():
        if shape is None:
            del state[key]
        else:
            state[key] = shape
    return state


@pytest.mark.parametrize("state, message", [
    ({"0.weight": (4, 4), "0.bias": (4,)},
     "no model.map_layer0.weight (the embedding's first layer); not an EDMPrecond DhariwalUNet state dict"),
    ({k.removeprefix("model."): v for k, v in _tiny_state().items()},  # a bare DhariwalUNet, not EDMPrecond's
     "no model.map_layer0.weight (the embedding's first layer); not an EDMPrecond DhariwalUNet state dict"),
    (_edited(**{"model.map_layer0.weight": (100, 32)}),
     "model.map_layer0.weight has shape [100, 32]: 100 embedding channels are not a multiple of 32 model channels"),
    (_edited(**{"model.enc.16x16_conv.weight": None, "model.enc.16x16_conv.bias": None}),
     "no input convolution model.enc.RxR_conv.weight"),
    (_edited(**{"model.dec.8x8_block0.conv0.weight": (48, 128, 3, 3)}),
     "model.dec.8x8_block0.conv0.weight has 48 output channels, not a multiple of 32 model channels"),
    (_edited(**{"model.enc.8x8_block1.conv1.weight": (64, 64, 1, 1)}),
     "model.enc.8x8_block1.conv1.weight has shape [64, 64, 1, 1], not [64, 64, 3, 3] (inferred: img_resolution=16"),
    (_edited(**{"model.extra.weight": (3,)}), "model.extra.weight is not a key of that network (1 such keys)"),
    (_edited(**{"model.dec.16x16_block2.norm0.bias": None}), "model.dec.16x16_block2.norm0.bias is missing"),
])
def test_anything_else_names_the_key_it_could_not_read(state, message):
    with pytest.raises(ArchitectureError) as e:
        infer_architecture(state)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ------------------------------------------------------------------ [model.config] and preset = "auto"


def test_model_config_declares_every_constructor_keyword():
    declared = [k.name for k in keys().values() if k.section == "model.config"]
    assert [f.name for f in dataclasses.fields(ArchitectureConfig)] == declared
    assert set(declared) | set(FIXED) == set(preset_config("dmd2-imagenet64"))
    assert declared[-len(DEFAULTS):] == list(DEFAULTS)  # "the last four change no tensor's shape" (its docstring)


def _config(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('[model]\npreset = "auto"\n', 'model.preset = "auto" reads the architecture off model.checkpoint, which is not set'),
    ("[model.config]\nchannels = 3\n", "unknown key model.config.channels; valid keys of [model.config]: img_resolution, "
                                       "img_channels, label_dim"),
    ("[model]\nconfig = 3\n", "[model.config] must be a table"),
    ("[model]\nsize = 3\n", "unknown key model.size; valid keys of [model]: preset, checkpoint, precision, compile, "
                            "[model.config]"),
    ("[model.config]\nchannel_mult = [1, 0]\n", "model.config.channel_mult: must be >= 1, got 0"),
    ("[model.config]\nuse_fp16 = 1\n", "model.config.use_fp16: expected true or false, got 1"),
    ("[model.config]\nsigma_data = 0\n", "model.config.sigma_data: must be > 0, got 0"),
    ("[model.config]\nattn_resolutions = [8, 5]\n",
     "model.config.attn_resolutions: 5 is not the resolution of a level; the levels are [32, 16, 8]"),
    ("[model.config]\nimg_resolution = 18\n",
     "model.config: img_resolution 18 does not halve to a whole number at each of the 3 levels of channel_mult [1, 2, 2]"),
])
def test_bad_model_config_is_one_line_naming_file_and_key(tmp_path, text, message):
    path = _config(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value), str(e.value)


def test_auto_on_something_else_names_the_file_and_key(tmp_path):
    torch.save(torch.nn.Linear(4, 4).state_dict(), tmp_path / "other.bin")
    path = _config(tmp_path, f'[model]\npreset = "auto"\ncheckpoint = "{tmp_path / "other.bin"}"\n')
    with pytest.raises(UserError, match=re.escape(
            f'{path}: model.preset = "auto": {tmp_path / "other.bin"}: not a DhariwalUNet checkpoint: no model.map_layer0.weight')):
        load_config(path)
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "other.bin")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'other.bin'}: not a DhariwalUNet checkpoint: no model.map_layer0.weight (the embedding's "
        f"first layer); not an EDMPrecond DhariwalUNet state dict"]


def test_model_config_over_a_preset_is_a_custom_architecture_with_its_own_stores(tmp_path):
    base = f'[run]\nworkdir = "{tmp_path / "w"}"\n[model]\npreset = "tiny"\n[features]\nlayers = ["midblock"]\n[metrics]\nlayer = "midblock"\n'
    plain = load_config(_config(tmp_path, base))
    custom = load_config(_config(tmp_path, base + "[model.config]\nsigma_data = 0.6\nuse_fp16 = true\n"))
    assert model_architecture(plain.model).name == "tiny"
    arch = model_architecture(custom.model)
    assert arch.name == "custom" and arch.kwargs == preset_config("tiny") | {"sigma_data": 0.6, "use_fp16": True}
    plain_ctx, custom_ctx = Context.create(plain), Context.create(custom)
    assert custom_ctx.generator.identity()["architecture"] == arch.kwargs
    assert stage_keys(plain_ctx)["extract"] != stage_keys(custom_ctx)["extract"]  # another network: extract again
    net, info = load_generator(arch, FIX / "dhariwal_tiny.weights.safetensors")
    assert net.sigma_data == 0.6 and info.preset == "custom"


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory):
    """A DhariwalUNet of no preset (random weights): 8x8 images, 7 classes, a map_augment layer, attention at 4x4."""
    config = dict(img_resolution=8, img_channels=3, label_dim=7, augment_dim=3, model_channels=16, channel_mult=[1, 4],
                  channel_mult_emb=2, num_blocks=1, attn_resolutions=[4], **DEFAULTS, **FIXED)
    torch.manual_seed(0)
    net = build_network(config)
    path = tmp_path_factory.mktemp("own") / "own.safetensors"
    save_file(net.state_dict(), path)
    return path, config, net.state_dict()


def test_inspect_prints_a_table_that_loads_the_checkpoint_strictly(tmp_path, own_checkpoint):
    path, config, state = own_checkpoint
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert 'preset:      none (a DhariwalUNet of its own: loads strictly with model.preset = "auto"' in r.output
    assert "dec.4x4_in0" in r.output and "# Not in the shapes (no tensor depends on them): the defaults" in r.output
    table = r.output[r.output.index("\n[model.config]\n"):]
    # Pasted under another preset's name, the table alone decides the network.
    pasted = load_config(_config(tmp_path, f'[model]\npreset = "dmd2-imagenet64"\ncheckpoint = "{path}"\n{table}'))
    auto = load_config(None, {"model.preset": "auto", "model.checkpoint": str(path)})
    assert model_architecture(pasted.model).kwargs == model_architecture(auto.model).kwargs == config
    net, info = load_generator(model_architecture(pasted.model), path)
    assert info.preset == "custom" and all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    check_outputs(net, path)
