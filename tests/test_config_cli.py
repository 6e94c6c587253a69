"""Typed configuration from TOML and the command line; device selection; layer listing."""

import pytest
import torch
from click.testing import CliRunner

from dmd2report.cli import cli
from dmd2report.config import Config, load_config
from dmd2report.device import resolve_device
from dmd2report.errors import UserError
from dmd2report.layers import resolve_layer
from dmd2report.models import build_preset
from dmd2report.runtime import auto_batch_size


def test_example_config_round_trips(tmp_path):
    path = tmp_path / "report.toml"
    r = CliRunner().invoke(cli, ["init", str(path)])
    assert r.exit_code == 0 and path.exists()
    assert "[auto | cpu | cuda | cuda:N | mps] (option --device)\ndevice = \"auto\"\n" in path.read_text()
    assert load_config(path) == Config()
    r = CliRunner().invoke(cli, ["init", str(path)])
    assert r.exit_code == 2 and "already exists" in r.output


def test_file_then_command_line_override(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[embedding]\nn_neighbors = 30\nmin_dist = 0\n[data]\nclasses = [207, "goldfish"]\n')
    c = load_config(path, {"embedding.n_neighbors": 5, "run.seed": None})
    assert c.embedding.n_neighbors == 5 and c.embedding.min_dist == 0.0 and c.data.classes == ["207", "goldfish"]


@pytest.mark.parametrize("text,match", [
    ("[embedding]\nneighbours = 3\n", r"c\.toml: unknown key embedding\.neighbours"),
    ("[embedding]\nn_neighbors = \"many\"\n", r"c\.toml: embedding\.n_neighbors: expected an integer"),
    ("[plots]\nx = 1\n", r"c\.toml: unknown section \[plots\]"),
    ("[model]\ncompile = 1\n", r"model\.compile: expected a string"),
    ("[features]\nreduce = \"pca\"\n", r"features\.reduce"),
    ("[run\n", r"c\.toml: not valid TOML"),
])
def test_bad_config_names_key_and_file(tmp_path, text, match):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_config(path)


def test_section_hash_tracks_sections():
    a, b = Config(), Config()
    b.report.color_by = "variant"
    assert a.section_hash("model", "features") == b.section_hash("model", "features")
    assert a.section_hash("report") != b.section_hash("report")
    # files.short_hash, the one short hash, gives the value the config's own formula gave (the same JSON).
    import hashlib
    import json

    whole = a.to_dict()
    assert a.section_hash() == hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()[:16]


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        assert auto.type == ("mps" if mps else "cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(UserError, match="expected auto"):
        resolve_device("tpu")


def test_layer_names_and_listing():
    net = build_preset("dmd2-imagenet64", device="meta")
    assert resolve_layer(net, "encoder_bottleneck") == "enc.8x8_block2"
    assert resolve_layer(net, "midblock") == "dec.8x8_in0"
    assert resolve_layer(net, "encoder_block_0") == "enc.64x64_conv"
    assert resolve_layer(net, "decoder_block_20") == "dec.64x64_block3"
    assert resolve_layer(net, "dec.8x8_in0") == "dec.8x8_in0"
    with pytest.raises(UserError, match="unknown layer 'bottleneck'; valid layers: encoder_bottleneck, midblock"):
        resolve_layer(net, "bottleneck")
    r = CliRunner().invoke(cli, ["layers", "--preset", "dmd2-imagenet64"])
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert len(lines) == 16 + 21
    assert any(l.startswith("enc.8x8_block2") and "768x8x8" in l and "encoder_bottleneck" in l for l in lines)
    assert any(l.startswith("dec.8x8_in0") and "midblock" in l for l in lines)


def test_demo_subcommands_pass_their_arguments(tmp_path):
    r = CliRunner().invoke(cli, ["demo-data", "npz", str(tmp_path / "npz"), "--per-class", "2", "--seed", "3"])
    assert r.exit_code == 0, r.output
    import numpy as np

    with np.load(tmp_path / "npz" / "train_data_batch_1.npz") as z:
        assert z["data"].shape == (24, 3 * 32 * 32) and sorted(set(z["labels"].tolist())) == list(range(1, 13))
    r = CliRunner().invoke(cli, ["demo-train", "--no-such-option"])
    assert r.exit_code == 2  # argparse's usage error, from the training script itself


@pytest.mark.parametrize("gib, expected", [(139, 1024), (80, 1024), (40, 512), (24, 512), (16, 256)])
def test_automatic_batch_follows_gpu_memory(monkeypatch, gib, expected):
    # features.batch_size = 0: a batch that fits the GPU (~27 GiB at 1024 for the full model), 256 off CUDA
    class Props:
        total_memory = gib * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert auto_batch_size(torch.device("cuda", 0)) == expected and auto_batch_size("cuda", 0) == expected
    assert auto_batch_size(torch.device("cpu")) == 256
    assert auto_batch_size(torch.device("cuda"), 64) == 64 and auto_batch_size("cpu", 64) == 64


def test_configuration_doc_is_generated_from_the_declarations():
    from pathlib import Path

    from dmd2report.pipeline import reference_markdown

    committed = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert committed.read_text(encoding="utf-8") == reference_markdown(), \
        "docs/configuration.md is stale: python -m dmd2report.pipeline --markdown > docs/configuration.md"


def test_command_options_come_from_the_declarations():
    from dmd2report.config import keys

    declared = {k.setting.cli: k for k in keys().values() if k.setting.cli}
    assert list(declared) == ["--name", "--workdir", "--site", "--device", "--seed", "--preset", "--checkpoint",
                              "--precision", "--compile", "--source", "--data", "--classes", "--per-class",
                              "--max-samples", "--on-bad-image", "--layers", "--reduce", "--batch-size", "--samples",
                              "--fit-on", "--single-file", "--template-dir"]
    for command in ("build", "extract", "generate", "fit", "measure", "atlas", "trajectory", "render"):
        options = {p.opts[0]: p for p in cli.get_command(None, command).params}
        assert "--config" in options
        for flag, key in declared.items():
            assert key.setting.help in options[flag].help and f"[{key.dotted}" in options[flag].help
            if key.setting.choices and not callable(key.setting.choices):
                assert list(options[flag].type.choices) == list(key.setting.choices)
    # Comma-separated lists and the flag reach the typed config.
    import dmd2report.cli as cli_mod

    c = cli_mod._load({"config_path": None, "data__classes": "207, goldfish", "features__layers": "midblock",
                       "report__single_file": True, "data__per_class": 3, "run__seed": None})
    assert c.data.classes == ["207", "goldfish"] and c.features.layers == ["midblock"]
    assert c.report.single_file is True and c.data.per_class == 3 and c.run.seed == 0


def test_example_and_module_entry_point_agree(capsys):
    from dmd2report.config import example_toml
    from dmd2report.pipeline import main, read_by

    assert main(["--toml"]) == 0 and capsys.readouterr().out == example_toml(read_by())
    text = example_toml(read_by())
    assert "[atlas]\n" in text and "mask_layer" not in text.split("[metrics]")[1].split("[atlas]")[0]
    assert "# The generator. Read by the model stages: extract, generate, atlas, trajectory.\n[model]\n" in text


def test_loading_a_config_needs_no_torch_until_the_layers_are_checked():
    """Loading and checking a config, and the commands that run no stage (init, inspect, layers, compare), start
    without torch; `build` and the stage commands derive from the stages' declarations, whose modules import it."""
    import subprocess
    import sys

    code = ("import sys; from dmd2report.cli import _config_options, cli; "
            "from dmd2report.config import Config, example_toml, keys; Config(); keys(); "
            "_config_options(lambda **kw: None).__click_params__; "
            "[cli.get_command(None, name).params for name in ('init', 'inspect', 'layers', 'compare')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    from pathlib import Path

    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_old_compile_boolean_is_a_type_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\ncompile = false\n")
    with pytest.raises(UserError, match=r"c\.toml: model\.compile: expected a string, got False$"):
        load_config(path)
