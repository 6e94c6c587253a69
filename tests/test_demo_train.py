"""The demo generator: its training script runs, and the shipped weights are a working one-step generator."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dmd2report.demo import quality, train
from dmd2report.errors import UserError
from dmd2report.models.precond import EDMPrecond
from dmd2report.models.presets import PRESETS, build_preset

TINY = ["--set", "model.model_channels=8", "--set", "model.num_blocks=1", "--set", "data.n_per_class=2",
        "--set", "teacher.steps=2", "--set", "teacher.batch=4", "--set", "teacher.log_every=1",
        "--set", "pairs.count=12", "--set", "pairs.batch=12", "--set", "pairs.heun_steps=2",
        "--set", "student.steps=2", "--set", "student.batch=4", "--set", "student.log_every=1", "--set", "student.holdout=4"]


def test_training_script_smoke_and_resume(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--device", "cpu", "--seed", "3", *TINY]) == 0

    record = json.loads((out / "train_config.json").read_text())
    assert record["run"]["seed"] == 3 and record["run"]["teacher"]["steps"] == 2 and record["run"]["student"]["steps"] == 2
    assert record["run"]["command"].startswith("python -m dmd2report.demo.train --out")
    assert record["model"]["model_channels"] == 8
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["teacher", "teacher", "student", "student"]
    assert all(np.isfinite(r["loss"]) for r in log) and all(np.isfinite(r["holdout_mse"]) for r in log[2:])

    # The weights are EDMPrecond's state dict exactly, for the config the run recorded.
    state = load_file(str(out / "generator.safetensors"))
    assert set(state) == set(EDMPrecond(**record["model"]).state_dict())
    net = train.load_weights(out / "generator.safetensors", record["model"])
    x = net(80 * torch.randn(2, 3, 32, 32), 80.0, torch.eye(12)[:2])
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()

    # A snapshot step leaves the EMA of that step beside the final weights, float16, loadable strictly.
    snap_out = tmp_path / "snap"
    assert train.main(["--out", str(snap_out), "--device", "cpu", *TINY, "--set", "student.snapshot_steps=[1]"]) == 0
    snap = load_file(str(snap_out / "generator-step1.safetensors"))
    assert set(snap) == set(state) and {v.dtype for v in snap.values()} == {torch.float16}
    assert json.loads((snap_out / "train_config.json").read_text())["run"]["snapshots"] == [
        {"step": 1, "file": "generator-step1.safetensors"}]
    early = train.load_weights(snap_out / "generator-step1.safetensors", record["model"])
    final = train.load_weights(snap_out / "generator.safetensors", record["model"])
    assert any(not torch.equal(a, b) for a, b in zip(early.state_dict().values(), final.state_dict().values()))

    # A second run in the same folder reuses the finished teacher instead of training it again.
    assert train.main(["--out", str(out), "--device", "cpu", *TINY]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"student"}
    assert json.loads((out / "train_config.json").read_text())["run"]["teacher"]["loaded"].endswith("teacher.safetensors")


def test_config_mistakes_are_user_errors(tmp_path):
    config = train.load_train_config()
    with pytest.raises(UserError, match="teacher.stepz"):
        train.apply_overrides(config, ["teacher.stepz=3"])
    assert train.apply_overrides(config, ["teacher.steps=3"])["teacher"]["steps"] == 3
    with pytest.raises(UserError, match="does not match the demo model config"):
        train.load_weights(train.demo_file("generator.safetensors"), config["model"] | {"model_channels": 16})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match="bad.json"):
        train.load_train_config(bad)


def test_shipped_generator_makes_its_classes():
    torch.set_num_threads(2)
    config = train.demo_model_config()
    net = train.load_weights(train.demo_file("generator.safetensors"), config)  # strict=True inside
    assert set(net.state_dict()) == set(load_file(str(train.demo_file("generator.safetensors"))))
    assert train.demo_file("generator.safetensors").stat().st_size <= 20 * 2**20

    classifier = quality.bundled_classifier()  # the demo classifier, trained on real images only
    fake, labels = quality.generate_per_class(net, n_per_class=4, seed=0)
    assert fake.shape == (48, 32, 32, 3) and fake.dtype == np.uint8
    fidelity = (classifier.predict(fake) == labels).mean()
    assert fidelity >= 0.7, fidelity

    # The same measurement on random weights of the same shape is at chance: the classifier is no pushover.
    torch.manual_seed(0)
    untrained, _ = quality.generate_per_class(EDMPrecond(**config).eval(), n_per_class=4, seed=0)
    assert (classifier.predict(untrained) == labels).mean() <= 0.25


def test_demo_preset_is_the_trained_config():
    # sigma_min/sigma_max are left to EDMPrecond's defaults in the JSON (JSON has no infinity).
    assert PRESETS["demo"] == {"sigma_min": 0, "sigma_max": float("inf")} | train.demo_model_config()
    build_preset("demo").load_state_dict(load_file(str(train.demo_file("generator.safetensors"))), strict=True)


def test_shipped_snapshot_is_an_earlier_step_of_the_same_run():
    """data/demo/generator-step100.safetensors, the second bundled generator: at most 5 MB, loads strictly into the
    demo architecture (as `checkpoint = "bundled:demo-step100"`), its metadata names the model and a snapshot step the
    shipped run recorded, and its weights are not the final ones (by far more than float16 rounding)."""
    from safetensors import safe_open

    from dmd2report.checkpoint import load_generator
    from dmd2report.files import sha256_file

    path = train.demo_file("generator-step100.safetensors")
    assert path.stat().st_size <= 5 * 2**20
    record = train.load_train_config()
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["model"]) == record["model"]
    step = json.loads(metadata["step"])
    assert {"step": step, "file": path.name} in record["run"]["snapshots"] and step < record["run"]["student"]["steps"]
    early, info = load_generator("demo", "bundled:demo-step100")   # strict, through the report's loader
    assert info.sha256 == sha256_file(path) and not info.untrained
    final, _ = load_generator("demo")
    squared = [((a - b) ** 2).sum() / (b ** 2).sum().clamp_min(1e-12)
               for a, b in zip(early.state_dict().values(), final.state_dict().values())]
    assert float(torch.stack(squared).mean().sqrt()) > 0.01   # float16 rounding alone: about 5e-4
