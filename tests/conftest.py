"""Shared fixtures: the random-weight "tiny" model and small synthetic datasets written into tmp_path."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmd2report.classes import ClassIndex, imagenet64_npz_label_map

TINY_RES = 16
TINY_CLASSES = 10
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"   # browser tests' screenshots


# A tiny network over a class-folder tree (the `image_tree` fixture): a config for the CLI's one-line checks.
FOLDER_CONFIG = """
[run]
workdir = "{w}"
device = "cpu"
[model]
preset = "tiny"
[data]
source = "folder"
path = "{data}"
workers = 2
[features]
batch_size = 8
chunk_size = 16
pca_fit_samples = 40
[report]
thumb_size = 8
"""


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """The CLI replaces the package logger's handler and level (setup_logging): put them back after each test."""
    import logging

    logger = logging.getLogger("dmd2report")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright, one per test module (skipped where either is missing)."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser tests need Debian's Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def tiny_net():
    from dmd2report.models import build_preset

    torch.manual_seed(0)
    return build_preset("tiny").eval().requires_grad_(False)


def synthetic_images(n: int, label_ids: np.ndarray, resolution: int = TINY_RES, seed: int = 0) -> np.ndarray:
    """uint8 (n, R, R, 3): noise around a class-dependent colour, so classes differ."""
    rng = np.random.default_rng(seed)
    base = (np.asarray(label_ids)[:, None] * np.array([25, 70, 140])) % 256
    noise = rng.integers(-40, 40, (n, resolution, resolution, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def npz_labels_for_standard_ids(ids) -> np.ndarray:
    """ImageNet64 NPZ labels (1..1000) of the given standard ImageNet class ids."""
    label_of = {int(c): label for label, c in enumerate(imagenet64_npz_label_map()) if label > 0}
    return np.array([label_of[i] for i in ids], dtype=np.int64)


@pytest.fixture
def npz_dir(tmp_path):
    """ImageNet64-format batches (no class_index.json): 10 standard classes (ids 0..9) x 6 images, 16x16, two files."""
    root = tmp_path / "npz"
    root.mkdir()
    ids = np.tile(np.arange(TINY_CLASSES), 6)
    np.random.default_rng(1).shuffle(ids)
    images = synthetic_images(len(ids), ids)
    data = images.transpose(0, 3, 1, 2).reshape(len(ids), -1)  # channel-planar rows
    labels = npz_labels_for_standard_ids(ids)
    np.savez(root / "train_data_batch_1.npz", data=data[:35], labels=labels[:35])
    np.savez(root / "train_data_batch_2.npz", data=data[35:], labels=labels[35:])
    return root


@pytest.fixture
def image_tree(tmp_path):
    """Class folders of 10 standard classes x 6 images (JPEG and PNG, non-square); some folders by name."""
    from PIL import Image

    root = tmp_path / "images"
    standard = ClassIndex.imagenet()
    for c in range(TINY_CLASSES):
        folder = root / (standard.names[c] if c % 3 == 0 else standard.synsets[c])
        folder.mkdir(parents=True)
        imgs = synthetic_images(6, np.full(6, c), resolution=40, seed=c)
        for i, img in enumerate(imgs):
            im = Image.fromarray(img[:, : 32 if i % 2 else 40])
            im.save(folder / (f"img_{i}.png" if i % 2 else f"img_{i}.jpg"))
    return root


@pytest.fixture
def make_config(tmp_path):
    """Config for the tiny model on a fixture dataset: make_config(source, path, **{"section.key": value})."""
    from dmd2report.config import load_config

    def make(source="imagenet64-npz", path="", **overrides):
        o = {"run.workdir": str(tmp_path / "work"), "run.device": "cpu", "model.preset": "tiny",
             "data.source": source, "data.path": str(path), "data.max_samples": 0, "data.workers": 2,
             "features.batch_size": 8, "features.chunk_size": 16, "report.thumb_size": 8,
             "features.pca_fit_samples": 40}
        o.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(None, o)

    return make


class FullDisk:
    """A file object that fails with ENOSPC after `budget` bytes, as a full disk does."""

    def __init__(self, f, budget: int = 0):
        self.f, self.budget = f, budget

    def write(self, data):
        self.budget -= len(data)
        if self.budget < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


# The demo report as a user builds it (`dmd2report build` on the bundled demo generator and demo data), through the
# command line, at test sizes: what the guide's screenshots show and what the terminal prints. With
# DMD2REPORT_SCREENSHOTS=1 at the demo's own sizes, and the browser test writes the guide's images (docs/images/).
SCREENSHOTS = os.environ.get("DMD2REPORT_SCREENSHOTS") == "1"
DEMO_AT_TEST_SIZES = """
[data]
max_samples = 120
[features]
batch_size = 64
full_per_class = 2
recon_per_class = 1
[generate]
samples = 48
variant_samples = 12
[embedding]
pca_components = 8
n_neighbors = 8
[metrics]
bootstrap = 20
[atlas]
anchors_per_class = 1
atlas_grid = 3
[trajectory]
samples = 6
real_references = 6
"""


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """(work directory, site, the lines the build wrote to stderr, its stdout) of `dmd2report build` on the demo."""
    import logging

    from click.testing import CliRunner

    from dmd2report.cli import cli

    w = tmp_path_factory.mktemp("demo")
    cfg = w / "demo.toml"
    cfg.write_text(f'[run]\nworkdir = "{w / "work"}"\nsite = "{w / "site"}"\ndevice = "cpu"\n'
                   + ("" if SCREENSHOTS else DEMO_AT_TEST_SIZES))
    logger = logging.getLogger("dmd2report")
    handlers, level = list(logger.handlers), logger.level
    argv = sys.argv
    sys.argv = ["dmd2report", "build"]   # the command line the overview page shows, as a user types it
    try:
        r = CliRunner().invoke(cli, ["build", "--config", str(cfg)], catch_exceptions=False)
    finally:   # the CLI replaces the package logger's handler: put it back for the other tests
        sys.argv = argv
        logger.handlers[:] = handlers
        logger.setLevel(level)
    assert r.exit_code == 0, r.stderr
    return w / "work", w / "site", r.stderr.splitlines(), r.stdout
