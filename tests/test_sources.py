import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import FOLDER_CONFIG, TINY_RES, npz_labels_for_standard_ids
from dmd2report.classes import ClassIndex
from dmd2report.context import Context
from dmd2report.errors import UserError
from dmd2report.sources import FolderSource, NpzSource, ensure_demo_data, open_source, select_samples


def _read_all(source):
    loaded = source.load(0, len(source))
    return loaded.images


def test_npz_streams_planar_rows_with_standard_labels(npz_dir):
    src = NpzSource(npz_dir, TINY_RES)
    assert len(src) == 60 and src.samples["sample_id"].tolist() == list(range(60))
    raw = [np.load(p) for p in sorted(npz_dir.glob("*.npz"))]
    data = np.concatenate([r["data"] for r in raw])
    labels = np.concatenate([r["labels"] for r in raw])
    images = _read_all(src)
    assert images.shape == (60, 3, TINY_RES, TINY_RES) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(60, -1), data)
    # NPZ labels are ImageNet64-ordered; class ids are standard ids (our fixture used ids 0..9).
    np.testing.assert_array_equal(npz_labels_for_standard_ids(src.samples["class_id"]), labels)
    assert src.samples["source"][36] == "train_data_batch_2.npz#1"
    # A range straddling the two files equals the same rows of the whole.
    np.testing.assert_array_equal(src.load(30, 40).images, images[30:40])


def test_selection_is_balanced_seeded_and_deterministic(npz_dir):
    src = NpzSource(npz_dir, TINY_RES, classes=["0", "n01443537", "great white shark"], per_class=4, seed=3)
    counts = src.samples["class_id"].value_counts().to_dict()
    assert counts == {0: 4, 1: 4, 2: 4}
    again = NpzSource(npz_dir, TINY_RES, classes=["0", "n01443537", "great white shark"], per_class=4, seed=3)
    assert again.samples.equals(src.samples)
    other = NpzSource(npz_dir, TINY_RES, classes=["0", "n01443537", "great white shark"], per_class=4, seed=4)
    assert not other.samples["source"].equals(src.samples["source"])
    capped = NpzSource(npz_dir, TINY_RES, max_samples=25, seed=0)
    assert sorted(capped.samples["class_id"].value_counts().tolist()) == [2] * 5 + [3] * 5


def test_select_samples_rule():
    classes = np.array([0] * 10 + [1] * 2 + [2] * 10)
    chosen = select_samples(classes, None, per_class=0, max_samples=9, seed=0)
    # Rank by rank across classes: ranks 0 and 1 of every class (6), then rank 2 of classes 0 and 2,
    # then rank 3 of class 0 (classes in id order break ties).
    assert np.bincount(classes[chosen]).tolist() == [4, 2, 3]
    assert np.all(np.diff(chosen) > 0)


def _select_reference(class_ids, wanted, per_class, max_samples, seed):
    """The selection rule, written plainly: each class's candidates in a (seed, class) random order."""
    classes = list(wanted) if wanted else sorted(set(class_ids.tolist()))
    keyed = []  # (rank, position of the class, candidate)
    for pos, c in enumerate(classes):
        members = np.flatnonzero(class_ids == c)
        order = np.random.default_rng([seed, c]).permutation(len(members))
        keyed += [(r, pos, int(i)) for r, i in enumerate(members[order]) if per_class <= 0 or r < per_class]
    if max_samples > 0:
        keyed = sorted(keyed)[:max_samples]
    return np.array(sorted(i for _, _, i in keyed), dtype=np.int64)


@pytest.mark.parametrize("wanted,per_class,max_samples", [(None, 0, 0), (None, 0, 777), (None, 3, 0), (None, 5, 40),
                                                          ([7, 2, 30], 0, 25), ([4], 0, 2000), (None, 0, 1)])
def test_select_samples_matches_the_plain_rule(wanted, per_class, max_samples):
    rng = np.random.default_rng(5)
    class_ids = np.concatenate([rng.integers(0, 12, 1500), np.full(300, 4)])  # class 4 over-represented
    rng.shuffle(class_ids)
    for seed in (0, 3):
        np.testing.assert_array_equal(select_samples(class_ids, wanted, per_class, max_samples, seed),
                                      _select_reference(class_ids, wanted, per_class, max_samples, seed))


def test_npz_resized_when_resolution_differs(npz_dir):
    src = NpzSource(npz_dir, 8)
    assert src.load(0, 5).images.shape == (5, 3, 8, 8)


@pytest.mark.parametrize("problem,match", [
    ("missing", "data directory not found"),
    ("empty", "no NPZ files"),
    ("truncated", "train_data_batch_2.npz: not a readable NPZ file"),
    ("width", r"train_data_batch_2.npz: 'data' is uint8 \(10, 700\)"),
    ("label", "train_data_batch_2.npz: label 1001 at row 3 is outside 1..1000"),
])
def test_npz_bad_input(npz_dir, tmp_path, problem, match):
    bad = npz_dir / "train_data_batch_2.npz"
    root = npz_dir
    if problem == "missing":
        root = tmp_path / "nope"
    elif problem == "empty":
        root = tmp_path / "empty"
        root.mkdir()
    elif problem == "truncated":
        bad.write_bytes(bad.read_bytes()[:3000])
    elif problem == "width":
        np.savez(bad, data=np.zeros((10, 700), np.uint8), labels=np.ones(10, np.int64))
    elif problem == "label":
        labels = np.ones(10, np.int64)
        labels[3] = 1001
        np.savez(bad, data=np.zeros((10, 3 * TINY_RES ** 2), np.uint8), labels=labels)
    with pytest.raises(UserError, match=match):
        NpzSource(root, TINY_RES)


def test_npz_corrupt_data_member_named_on_read(npz_dir):
    path = npz_dir / "train_data_batch_2.npz"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data.npy")
    raw[info.header_offset + 200] ^= 0xFF  # inside the data bytes: the CRC check fails
    path.write_bytes(bytes(raw))
    src = NpzSource(npz_dir, TINY_RES)  # the header is still fine
    with pytest.raises(UserError, match="train_data_batch_2.npz: not a readable NPZ"):
        src.load(0, 60)


def test_folder_crop_resize_and_class_names(image_tree):
    with FolderSource(image_tree, TINY_RES, per_class=3) as src:
        assert len(src) == 30 and sorted(set(src.samples["class_id"])) == list(range(10))
        loaded = src.load(0, 30)
    assert loaded.images.shape == (30, 3, TINY_RES, TINY_RES) and loaded.kept.all()
    # Centre crop then BOX resize of a 32-wide, 40-high image equals PIL doing it by hand.
    with FolderSource(image_tree, TINY_RES) as src:
        (row,) = src.samples.index[src.samples["source"] == "n01443537/img_1.png"]
        got = src.load(row, row + 1).images[0]
    im = Image.open(image_tree / "n01443537/img_1.png").convert("RGB")
    assert im.size == (32, 40)
    want = np.asarray(im.resize((TINY_RES, TINY_RES), Image.Resampling.BOX, box=(0, 4, 32, 36)))
    np.testing.assert_array_equal(got.transpose(1, 2, 0), want)


def test_folder_bad_input(image_tree, tmp_path):
    (image_tree / "n01443537" / "img_3.png").write_bytes(b"not a png at all")
    with FolderSource(image_tree, TINY_RES, on_bad_image="skip") as src:
        loaded = src.load(0, len(src))
    assert (~loaded.kept).sum() == 1 and len(loaded.images) == 59
    assert loaded.skipped[0]["source"] == "n01443537/img_3.png" and "UnidentifiedImageError" in loaded.skipped[0]["error"]
    with FolderSource(image_tree, TINY_RES, on_bad_image="fail") as src:
        with pytest.raises(UserError, match="n01443537/img_3.png: unreadable image"):
            src.load(0, len(src))
    (image_tree / "n01491361").mkdir()
    with pytest.raises(UserError, match="n01491361: empty class folder"):
        FolderSource(image_tree, TINY_RES)
    (image_tree / "n01491361").rmdir()
    (image_tree / "not_a_class_xyz").mkdir()
    with pytest.raises(UserError, match="not_a_class_xyz: folder name is not a class"):
        FolderSource(image_tree, TINY_RES)
    with pytest.raises(UserError, match="image directory not found"):
        FolderSource(tmp_path / "missing", TINY_RES)


def test_demo_data_written_once_and_read_as_npz(tmp_path, make_config):
    config = make_config("demo", data__per_class=2)
    src = open_source(config, TINY_RES, ClassIndex.imagenet(), tmp_path / "work" / "demo_data")
    assert len(src) == 24 and len(src.class_index) == 12 and src.class_index.name(0) == "red disc"
    marker = tmp_path / "work" / "demo_data" / "demo_data.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_data(tmp_path / "work" / "demo_data", 2) == marker.parent and marker.stat().st_mtime_ns == stamp
    assert src.load(0, 24).images.shape == (24, 3, TINY_RES, TINY_RES)  # 32x32 demo images resized


def test_folder_tree_without_index_takes_the_models_classes(tmp_path):
    from PIL import Image

    from dmd2report.config import load_config
    from dmd2report.demo.dataset import DEMO_CLASSES
    from dmd2report.sources import open_source

    root = tmp_path / "tree"
    for c in (0, 5):
        (root / DEMO_CLASSES[c][0]).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 48), (40 * c, 90, 20 * i)).save(root / DEMO_CLASSES[c][0] / f"{i}.png")
    cfg = load_config(None, {"data.source": "folder", "data.path": str(root), "model.preset": "demo",
                             "run.workdir": str(tmp_path / "w")})
    with open_source(cfg, 32, Context.create(cfg).generator.class_index(), tmp_path / "w" / "demo_data") as src:
        assert sorted(src.samples["class_id"].unique().tolist()) == [0, 5]
    cfg.model.preset = "dmd2-imagenet64"  # ImageNet's classes: a demo synset is no class there
    with pytest.raises(UserError, match="d00_red_disc: folder name is not a class"):
        open_source(cfg, 64, Context.create(cfg).generator.class_index(), tmp_path / "w" / "demo_data")


# ---------------------------------------------------------------------------------------------
# Nothing empty: a source or a class left with no usable image is refused in one line after extract, and is read
# again once the files are fixed.



def _cli(*args):
    from click.testing import CliRunner

    from dmd2report.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _break(folder):
    """Overwrite every image of a folder with bytes no decoder reads; returns the originals to put back."""
    saved = {p: p.read_bytes() for p in sorted(folder.iterdir())}
    for p in saved:
        p.write_bytes(b"\xff\xd8 not an image")
    return saved


def test_a_class_left_empty_by_skips_is_refused_and_reread_once_fixed(image_tree, tmp_path):
    folder = image_tree / "n01443537"
    saved = _break(folder)
    cfg = tmp_path / "report.toml"
    cfg.write_text(FOLDER_CONFIG.format(w=tmp_path / "work", data=image_tree))
    r = _cli("build", "--config", str(cfg))
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: {image_tree}: class goldfish (n01443537) has no usable image: its 6 selected "
                                f"images are unreadable (e.g. n01443537/"), errors
    assert "[generate]" not in r.stderr and "Traceback" not in r.output
    for p, data in saved.items():   # fixed: the chunks that held them are read again, and the build goes on
        p.write_bytes(data)
    r = _cli("extract", "--config", str(cfg))
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "work" / "stores" / "real" / "manifest.json").read_text())
    assert manifest["count"] == 60 and manifest["skipped"] == []


def test_a_source_with_no_usable_image_is_refused(image_tree, tmp_path):
    for folder in image_tree.iterdir():
        _break(folder)
    cfg = tmp_path / "report.toml"
    cfg.write_text(FOLDER_CONFIG.format(w=tmp_path / "work", data=image_tree))
    r = _cli("build", "--config", str(cfg))
    assert r.exit_code == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"error: {image_tree}: no usable image: all 60 selected images are "
                                                f"unreadable (e.g. "), r.stderr
    assert "[generate]" not in r.stderr
    manifest = json.loads((tmp_path / "work" / "stores" / "real" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and not list((tmp_path / "work" / "stores" / "real" / "chunks").glob("*.json"))
