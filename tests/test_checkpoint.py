"""Checkpoints load strictly from every supported format; bad ones fail in one line, running no code."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from dmd2report.checkpoint import checkpoint_architecture, load_generator, load_into, read_checkpoint, read_shapes
from dmd2report.cli import cli
from dmd2report.errors import UserError
from dmd2report.models import build_preset
from dmd2report.models.architecture import shapes_of

FIX = Path(__file__).parent / "fixtures"
WEIGHTS = FIX / "dhariwal_tiny.weights.safetensors"


@pytest.fixture(scope="module")
def state():
    return load_file(WEIGHTS)


def _same(net, state):
    return all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_safetensors_and_torch_formats_load_strictly(tmp_path, state):
    torch.save(state, tmp_path / "g.pth")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": state}, tmp_path / "wrapped.bin")
    for path, fmt in [(WEIGHTS, "safetensors"), (tmp_path / "g.pth", "torch-zip"),
                      (tmp_path / "legacy.pt", "torch-legacy"), (tmp_path / "wrapped.bin", "torch-zip")]:
        net, info = load_generator("tiny", path)
        assert info.format == fmt and not info.untrained and len(info.sha256) == 64
        assert _same(net, state), path
        shapes = read_shapes(path)  # what preset = "auto" reads: the same keys and shapes, no values
        assert shapes.format == fmt and shapes_of(shapes.state_dict) == shapes_of(state)
        assert {t.device.type for t in shapes.state_dict.values()} == {"meta"}


def test_accelerate_folder(tmp_path, state):
    folder = tmp_path / "checkpoint_model_193500"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    torch.save({"fake_unet." + k: v for k, v in state.items()}, folder / "pytorch_model_1.bin")
    net, info = load_generator("tiny", folder)
    assert info.checkpoint == str(folder) and _same(net, state)
    with pytest.raises(UserError, match="guidance"):
        read_checkpoint(folder / "pytorch_model_1.bin")
    # A guidance state dict under another name is recognised by its keys.
    shutil.copy(folder / "pytorch_model_1.bin", tmp_path / "renamed.bin")
    with pytest.raises(UserError, match="guidance"):
        read_checkpoint(tmp_path / "renamed.bin")
    st = tmp_path / "st"
    st.mkdir()
    save_file(state, st / "model.safetensors")
    assert read_checkpoint(st).format == "safetensors"


def test_module_prefix_is_stripped(tmp_path, state):
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.bin")
    ckpt = read_checkpoint(tmp_path / "ddp.bin")
    assert ckpt.stripped_prefix == "module." and set(ckpt.state_dict) == set(state)
    assert checkpoint_architecture(ckpt)[1] == "tiny"
    net, _ = load_generator("tiny", tmp_path / "ddp.bin")
    assert _same(net, state)


def test_directory_without_model_file(tmp_path):
    (tmp_path / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="no model file"):
        read_checkpoint(tmp_path)
    (tmp_path / "pytorch_model_1.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="guidance"):
        read_checkpoint(tmp_path)


def test_truncated_files(tmp_path, state):
    torch.save(state, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        read_checkpoint(tmp_path / "cut.bin")
    st = WEIGHTS.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) // 2])
    with pytest.raises(UserError, match="truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    for name, payload in [("evil.bin", {"model.w": evil}), ("evil2.pth", evil)]:
        torch.save(payload, tmp_path / name)
        with pytest.raises(UserError, match="refused"):
            read_checkpoint(tmp_path / name)
    raw = tmp_path / "raw.pkl.bin"
    raw.write_bytes(pickle.dumps(evil))  # a plain (non-zip) pickle
    with pytest.raises(UserError):
        read_checkpoint(raw)
    assert not marker.exists()


def test_other_architecture_is_named_and_refused(tmp_path, state):
    other = torch.nn.Sequential(torch.nn.Linear(4, 4)).state_dict()
    torch.save(other, tmp_path / "other.bin")
    ckpt = read_checkpoint(tmp_path / "other.bin")
    with pytest.raises(UserError, match="does not match preset 'tiny'.*missing"):
        load_into(build_preset("tiny"), ckpt, "preset 'tiny'")
    # Same keys, one wrong shape: named.
    bad = dict(state)
    bad["model.out_conv.bias"] = torch.zeros(4)
    torch.save(bad, tmp_path / "shape.bin")
    with pytest.raises(UserError, match=r"shape mismatches \(e\.g\. model\.out_conv\.bias: \[4\] vs \[3\]"):
        load_generator("tiny", tmp_path / "shape.bin")


def test_inspect_cli(tmp_path, state):
    r = CliRunner().invoke(cli, ["inspect", str(WEIGHTS)])
    assert r.exit_code == 0, r.output
    assert "format:      safetensors" in r.output and "tensors:     315" in r.output
    assert "parameters:  2,007,907" in r.output and 'preset:      tiny (its shapes: loads strictly' in r.output
    assert "dec.4x4_in0" in r.output and "midblock" in r.output and "64x4x4" in r.output
    assert "\n[model.config]\nimg_resolution = 16\n" in r.output and "attn_resolutions = [8, 4]\n" in r.output
    dropped = ("model.out_conv.weight", "model.out_conv.bias")
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "partial.bin")
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "partial.bin")])
    assert r.exit_code == 2 and r.stderr.strip() == (f"error: {tmp_path / 'partial.bin'}: not a DhariwalUNet checkpoint: "
                                                     "model.out_conv.weight is missing (inferred: img_resolution=16, "
                                                     "img_channels=3, label_dim=10, augment_dim=0, model_channels=32, "
                                                     "channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=2, "
                                                     "attn_resolutions=[8, 4])")


@pytest.mark.parametrize("make", ["truncated", "evil", "nodir", "empty_dir"])
def test_cli_errors_are_one_line_without_traceback(tmp_path, make, state):
    target = tmp_path / "x.bin"
    if make == "truncated":
        torch.save(state, target)
        target.write_bytes(target.read_bytes()[:1000])
    elif make == "evil":
        evil = _RunsCode()
        evil.marker = tmp_path / "pwned"
        torch.save(evil, target)
    elif make == "nodir":
        target = tmp_path / "missing"
    else:
        target = tmp_path / "d"
        target.mkdir()
    p = subprocess.run([sys.executable, "-m", "dmd2report.cli", "inspect", str(target)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(target) in p.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_network_whose_outputs_do_not_depend_on_its_input_is_refused(tmp_path, state, tiny_net):
    """An all-zero checkpoint passes every shape check; the probe of two inputs refuses it in a build, in one line,
    before extract writes anything, and `inspect` says so. Random and trained networks pass (the demo generator: every demo build)."""
    from dmd2report.checkpoint import check_outputs

    check_outputs(tiny_net, "the tiny preset's random weights")
    check_outputs(load_generator("tiny", WEIGHTS)[0], WEIGHTS)
    zero = tmp_path / "zero.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, zero)
    r = CliRunner().invoke(cli, ["inspect", str(zero)])   # the file is described, and the refusal said
    assert r.exit_code == 0 and "[model.config]" in r.stdout, r.output
    reason = ("the network's activations do not depend on its input (block enc.16x16_conv is the same for two "
              "different noises and classes at sigma 80): all-zero or constant weights? Its features would all be one "
              "value; check the checkpoint")
    assert f"outputs:     REFUSED by every stage that loads it: {reason}\n" in r.stdout
    assert r.stderr.splitlines() == [f"warning: {zero}: {reason}"], r.stderr
    r = CliRunner().invoke(cli, ["inspect", str(WEIGHTS)])
    assert r.exit_code == 0 and "outputs:     finite, and depend on the input" in r.stdout
    work = tmp_path / "work"
    r = CliRunner().invoke(cli, ["build", "--checkpoint", str(zero), "--preset", "tiny", "--workdir", str(work),
                                 "--device", "cpu", "--source", "demo", "--per-class", "2"])
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.exit_code == 2 and errors == [f"error: {zero}: the network's activations do not depend on its input "
                                           f"(block enc.16x16_conv is the same for two different noises and classes at "
                                           f"sigma 80): all-zero or constant weights? Its features would all be one "
                                           f"value; check the checkpoint"], r.stderr
    assert "done in" not in r.stderr and not (work / "stores" / "real" / "chunks").exists()
