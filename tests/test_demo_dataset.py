"""The demo dataset: deterministic, balanced, prefix-stable, ImageNet64 NPZ layout, and classes a
simple classifier tells apart, with the deliberately close pairs the nearest and most confused."""

import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from dmd2report.demo import dataset as demo
from dmd2report.demo.dataset import (CLOSE_PAIRS, DEMO_CLASSES, NUM_CLASSES, RESOLUTION, make_demo_images,
                                     write_demo_npz)
from dmd2report.errors import UserError


def test_shapes_dtypes_and_balance():
    images, labels = make_demo_images(3, seed=0)
    assert images.shape == (3 * NUM_CLASSES, RESOLUTION, RESOLUTION, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=NUM_CLASSES).tolist() == [3] * NUM_CLASSES
    assert len(DEMO_CLASSES) == NUM_CLASSES == 12
    assert len({synset for synset, _ in DEMO_CLASSES}) == NUM_CLASSES
    # Real images, not flat fields: every image uses a good part of the intensity range.
    assert (images.reshape(len(images), -1).std(axis=1) > 8).all()


def test_deterministic_from_seed():
    a, la = make_demo_images(2, seed=7)
    b, lb = make_demo_images(2, seed=7)
    c, _ = make_demo_images(2, seed=8)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert all(not np.array_equal(x, y) for x, y in zip(a, c))  # every image changes with the seed


def test_more_images_per_class_keeps_the_first_ones():
    small, small_labels = make_demo_images(2, seed=3)
    large, large_labels = make_demo_images(5, seed=3)
    for c in range(NUM_CLASSES):
        assert np.array_equal(large[large_labels == c][:2], small[small_labels == c])


def test_within_class_variation():
    images, labels = make_demo_images(6, seed=0)
    for c in range(NUM_CLASSES):
        x = images[labels == c].reshape(6, -1).astype(np.float64)
        assert cdist(x, x)[np.triu_indices(6, 1)].min() > 100, DEMO_CLASSES[c]  # no two near-duplicates


def test_resolution_draws_the_same_scene():
    small, _ = make_demo_images(1, seed=2, resolution=32)
    large, _ = make_demo_images(1, seed=2, resolution=64)
    assert large.shape == (NUM_CLASSES, 64, 64, 3)
    pooled = large.reshape(NUM_CLASSES, 32, 2, 32, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(pooled - small).mean() < 8  # only pixel noise and anti-aliasing differ


@pytest.mark.parametrize("kwargs", [{"n_per_class": -1}, {"n_per_class": 2, "seed": -1},
                                    {"n_per_class": 2.5}, {"n_per_class": 2, "resolution": 4}])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        make_demo_images(**kwargs)


def _decode(data):
    """ImageNet64 rows (N, 3*R*R), channel-planar, back to (N, R, R, 3)."""
    return data.reshape(len(data), 3, RESOLUTION, RESOLUTION).transpose(0, 2, 3, 1)


def test_npz_round_trip(tmp_path):
    out = tmp_path / "demo"
    write_demo_npz(out, 5, seed=1, batch_size=7)  # 9 batches, to be replaced by 3 below
    paths = write_demo_npz(out, 5, seed=1, batch_size=25)
    assert [p.name for p in paths] == [f"train_data_batch_{i}.npz" for i in (1, 2, 3)]
    assert sorted(p.name for p in out.iterdir()) == ["class_index.json"] + [p.name for p in paths]  # stale + temp gone

    batches = [np.load(p) for p in paths]
    assert [len(b["labels"]) for b in batches] == [25, 25, 10]
    data = np.concatenate([b["data"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    assert data.dtype == np.uint8 and data.shape == (60, 3 * RESOLUTION * RESOLUTION)
    assert np.issubdtype(labels.dtype, np.integer) and set(labels.tolist()) == set(range(1, NUM_CLASSES + 1))

    images, image_labels = make_demo_images(5, seed=1)
    # The first plane of a row is the red channel of the image, rows first.
    decoded = _decode(data)
    assert np.array_equal(data[:, :RESOLUTION * RESOLUTION], decoded[..., 0].reshape(60, -1))
    written = sorted((int(l) - 1, img.tobytes()) for l, img in zip(labels, decoded))
    expected = sorted((int(l), img.tobytes()) for l, img in zip(image_labels, images))
    assert written == expected
    assert not np.array_equal(labels - 1, image_labels)  # shuffled

    again = write_demo_npz(tmp_path / "again", 5, seed=1, batch_size=25)
    assert all(np.array_equal(np.load(p)["data"], b["data"]) for p, b in zip(again, batches))


def test_npz_bad_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        write_demo_npz(tmp_path / "file", 1)


def test_class_index_form(tmp_path):
    write_demo_npz(tmp_path, 1)
    written = json.loads((tmp_path / "class_index.json").read_text())
    shipped = json.loads(resources.files("dmd2report").joinpath("data/demo_class_index.json").read_text())
    imagenet = json.loads(resources.files("dmd2report").joinpath("data/imagenet64_npz_class_index.json").read_text())
    assert written == shipped
    assert list(shipped) == [str(k) for k in range(NUM_CLASSES)]  # NPZ label L is entry str(L - 1)
    assert [tuple(v) for v in shipped.values()] == DEMO_CLASSES
    assert {type(k) for k in imagenet} == {type(k) for k in shipped}
    assert all(isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in shipped.values())


def _spectrum_features(images):
    """Log magnitudes of the low spatial frequencies of each channel: blind to where the object is."""
    f = np.abs(np.fft.rfft2(images.astype(np.float32) / 255, axes=(1, 2)))
    rows = np.r_[0:9, RESOLUTION - 8:RESOLUTION]
    return np.log1p(f[:, rows, :9]).reshape(len(images), -1)


@pytest.fixture(scope="module")
def held_out():
    """Nearest-class-mean classifier fitted on 30 images a class, applied to 30 others."""
    images, labels = make_demo_images(60, seed=11)
    train = np.tile(np.arange(60), NUM_CLASSES) < 30
    f = _spectrum_features(images)
    f = (f - f[train].mean(0)) / (f[train].std(0) + 1e-3)
    means = np.stack([f[train & (labels == c)].mean(0) for c in range(NUM_CLASSES)])
    predicted = cdist(f[~train], means).argmin(1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(confusion, (labels[~train], predicted), 1)
    return f[~train], labels[~train], confusion


def test_classes_are_distinguishable(held_out):
    _, _, confusion = held_out
    accuracy = np.trace(confusion) / confusion.sum()
    assert accuracy > 0.6  # chance is 1/12
    assert (np.diag(confusion) > confusion.sum(1) / 4).all()  # every class well above chance


def test_close_pairs_are_nearest_and_most_confused(held_out):
    features, labels, confusion = held_out
    # Energy distance between the classes' feature distributions.
    d = cdist(features, features)
    mean = np.array([[d[labels == a][:, labels == b].mean() for b in range(NUM_CLASSES)] for a in range(NUM_CLASSES)])
    energy = 2 * mean - np.diag(mean)[:, None] - np.diag(mean)[None, :]
    np.fill_diagonal(energy, np.inf)
    for a, b in CLOSE_PAIRS:
        assert energy[a].argmin() == b and energy[b].argmin() == a, (DEMO_CLASSES[a], DEMO_CLASSES[b])

    # The spectrum sees orientation well, so the stripes pair is near but rarely mistaken by this
    # classifier; the colour and shape pairs are its two largest confusions.
    mutual = confusion + confusion.T
    upper = np.triu_indices(NUM_CLASSES, 1)
    top_two = {(int(upper[0][k]), int(upper[1][k])) for k in np.argsort(-mutual[upper], kind="stable")[:2]}
    assert top_two == {(0, 1), (2, 3)}


def test_grid_command(tmp_path):
    out = tmp_path / "grid.png"
    assert demo.main(["grid", str(out), "--per-class", "3", "--scale", "2"]) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    images, _ = make_demo_images(3)
    tile, gap, left = 2 * RESOLUTION, demo.GRID_GAP, demo.GRID_LABEL_WIDTH
    assert grid.shape == (NUM_CLASSES * (tile + gap) + gap, left + 3 * (tile + gap), 3)
    for c in range(NUM_CLASSES):  # row c holds the samples of class c, upscaled without blur
        top = gap + c * (tile + gap)
        for i in range(3):
            shown = grid[top:top + tile, left + i * (tile + gap):][:, :tile]
            assert np.array_equal(shown, images[3 * c + i].repeat(2, axis=0).repeat(2, axis=1))
        assert (grid[top:top + tile, :left] < 128).any()  # the class name is written on the left
    assert demo.main(["grid", str(tmp_path / "grid.jpg")]) == 2
