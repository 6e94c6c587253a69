"""The demo classifier (encoders/demo_classifier.py) and its training command (demo/classifier.py): the bundled weights
load strictly and classify held-out real demo images as data/demo/README.md states; the encoder contract (uint8 in,
float32 features and logits out, resize as stated); training is bit-reproducible from its seed; bad weight files are
refused in one line naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dmd2report import resources
from dmd2report.demo import classifier as training
from dmd2report.demo.dataset import make_demo_images
from dmd2report.encoders.demo_classifier import KIND, DemoClassifier, load_demo_classifier
from dmd2report.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BUNDLED = resources.bundled_by_name(resources.BUNDLED_ENCODERS, "demo-classifier", "encoder weights")


@pytest.fixture(scope="module")
def bundled():
    torch.set_num_threads(2)
    return load_demo_classifier(KIND, BUNDLED)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_bundled_classifier_is_small_strict_and_as_accurate_as_stated(bundled):
    assert BUNDLED.stat().st_size <= 2 * 2**20
    assert set(load_file(str(BUNDLED))) == set(bundled.state_dict())  # strict: nothing left over either way
    meta = training.read_metadata(BUNDLED)
    assert meta["kind"] == KIND and meta["command"].startswith("python -m dmd2report.demo.classifier train")
    # The README states the accuracy the file's metadata records.
    readme = (REPO / "data/demo/README.md").read_text(encoding="utf-8")
    stated = re.search(r"held-out accuracy \*\*([0-9.]+)%\*\*", readme)
    assert stated and abs(float(stated.group(1)) / 100 - meta["heldout_accuracy"]) < 5e-4, stated
    # On a sample of the same held-out images (the report's real images, seed 0), within a margin of it.
    images, labels = make_demo_images(20, seed=training.HELDOUT_SEED)
    accuracy = (bundled.predict(images) == labels).mean()
    assert accuracy >= meta["heldout_accuracy"] - 0.02, accuracy


def test_contract_shapes_dtypes_and_determinism(bundled):
    images = _nchw(make_demo_images(2, seed=5)[0])
    features, logits = bundled(images)
    assert features.shape == (24, bundled.feature_dim) == (24, 256) and logits.shape == (24, 12)
    assert features.dtype == logits.dtype == torch.float32
    assert bundled.kind == "demo-classifier" and bundled.class_order == "demo" and bundled.num_classes == 12
    assert "32x32" in bundled.protocol and "[-1, 1]" in bundled.protocol
    again, _ = bundled(images)
    assert torch.equal(features, again)
    # Eval mode: a sample's features do not depend on the batch it comes in.
    alone, alone_logits = bundled(images[3:4])
    torch.testing.assert_close(alone[0], features[3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone_logits[0], logits[3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        bundled(images.float())


def test_other_sizes_are_resized_as_pils_bilinear_filter():
    """The protocol sentence says PIL's bilinear filter: the 64x64 demo images resize as PIL resizes float images."""
    images = make_demo_images(1, seed=3, resolution=64)[0][:4]
    ours = DemoClassifier.preprocess(_nchw(images))
    pil = np.stack([np.stack([np.asarray(Image.fromarray(im[..., c].astype(np.float32), mode="F")
                                         .resize((32, 32), Image.BILINEAR)) for c in range(3)]) for im in images])
    np.testing.assert_allclose(ours.numpy(), pil / 127.5 - 1, atol=2e-5)
    assert torch.equal(DemoClassifier.preprocess(_nchw(images[:, ::2, ::2].copy())),
                       _nchw(images[:, ::2, ::2].copy()).float() / 127.5 - 1)  # 32x32: no resampling at all


def test_training_is_bit_reproducible_from_its_seed(tmp_path):
    torch.set_num_threads(2)
    args = ["train", str(tmp_path / "c.safetensors"), "--seed", "3", "--epochs", "1", "--per-class", "3",
            "--width", "4", "--batch", "8", "--heldout-per-class", "1", "--threads", "2"]
    assert training.main(args) == 0
    first, first_meta = load_file(str(tmp_path / "c.safetensors")), training.read_metadata(tmp_path / "c.safetensors")
    assert training.main(args) == 0
    second, meta = load_file(str(tmp_path / "c.safetensors")), training.read_metadata(tmp_path / "c.safetensors")
    # Bit-identical tensors and the same record (safetensors writes the metadata's keys in no fixed order, so the
    # files' bytes may differ in the header).
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert meta == first_meta
    assert meta["seed"] == 3 and meta["epochs"] == 1 and meta["width"] == 4 and " --seed 3 " in meta["command"]
    net = load_demo_classifier(KIND, tmp_path / "c.safetensors")
    assert net.feature_dim == 32
    # Another seed gives other weights: the seed is what the result depends on.
    other = training.train_classifier(seed=4, epochs=1, per_class=3, width=4, batch=8)
    assert not torch.equal(other.convs[0].weight, net.convs[0].weight)


def _refused(path: Path, *match: str) -> str:
    with pytest.raises(UserError) as e:
        load_demo_classifier(KIND, path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for m in match:
        assert m in message, message
    return message


def test_bad_weights_are_refused_in_one_line_naming_the_file(tmp_path):
    state = load_file(str(BUNDLED))

    wrong = dict(state, **{"head.weight": torch.zeros(10, 256), "head.bias": torch.zeros(10)})
    save_file(wrong, tmp_path / "shapes.safetensors")
    _refused(tmp_path / "shapes.safetensors", "head.weight", "[10, 256]")

    poisoned = state["convs.1.weight"].clone().index_fill_(0, torch.tensor([0]), float("nan"))
    nan = dict(state, **{"convs.1.weight": poisoned})
    save_file(nan, tmp_path / "nan.safetensors")
    _refused(tmp_path / "nan.safetensors", "convs.1.weight", "NaN")

    (tmp_path / "cut.safetensors").write_bytes(BUNDLED.read_bytes()[: BUNDLED.stat().st_size // 2])
    _refused(tmp_path / "cut.safetensors", "truncated")

    missing = {k: v for k, v in state.items() if not k.startswith("norms.2.")}
    save_file(missing, tmp_path / "missing.safetensors")
    _refused(tmp_path / "missing.safetensors", "norms.2.")

    # Another network's weights: the demo generator is named as what it is.
    _refused(resources.bundled_file("demo/generator.safetensors"), "generator")

    # A pickle that only full unpickling could read is refused, not run.
    torch.save({"net": Path("x"), **state}, tmp_path / "pickled.pth")
    _refused(tmp_path / "pickled.pth", "safetensors")

    _refused(tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match="head file"):
        load_demo_classifier(KIND, BUNDLED, head=BUNDLED)
    with pytest.raises(UserError, match="not 'demo-classifier'"):
        load_demo_classifier("inception", BUNDLED)


def test_training_command_refuses_bad_arguments(tmp_path, capsys):
    assert training.main(["train", str(tmp_path / "x.pth")]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert training.main(["train", str(tmp_path / "x.safetensors"), "--epochs", "0"]) == 2
    assert not (tmp_path / "x.safetensors").exists()
    assert json.loads(json.dumps(training.DEFAULTS)) == training.DEFAULTS
