"""The standard feature spaces in the pipeline: an encoder sees exactly the uint8 images the generator's features come
from (real images as loaded, generated ones as stored), its features and logits land in the stores, the measure
stage scores every metric in its space with the classifier's accuracy and the reference statistics, and a bad
weights file stops the build in one line before any image is encoded."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmd2report.classes import ClassIndex
from dmd2report.cli import cli
from dmd2report.config import EncoderConfig
from dmd2report.encoders.registry import load_encoder
from dmd2report.encoders.stats import load_stats, save_stats
from dmd2report.metric_defs import mean_and_cov
from dmd2report.sampling import generate, quantise, sample_noise
from dmd2report.sources import NpzSource
from dmd2report.stages.extract import extract_real
from dmd2report.stages.generate import generate_set
from dmd2report.store import Store
from dmd2report.workdir import WorkDir

torch.set_num_threads(1)
CLASSIFIER = EncoderConfig(name="cls", kind="demo-classifier", weights="bundled:demo-classifier")


def test_encoders_see_the_images_the_generator_sees(tiny_net, npz_dir, make_config):
    config = make_config(path=npz_dir)
    wd = WorkDir(config.run.workdir)
    encoder = load_encoder(CLASSIFIER, "cpu", wd)
    real = Store(extract_real(config, wd, tiny_net, "sum0", ClassIndex.imagenet(), encoders={"cls": encoder},
                              progress=False))
    assert real.layers == ["encoder_bottleneck", "midblock"] and set(real.encoders) == {"cls"}
    assert real.encoders["cls"]["kind"] == "demo-classifier" and "32x32" in real.encoders["cls"]["protocol"]
    images = torch.from_numpy(NpzSource(npz_dir, 16).load(0, 60).images)
    with torch.no_grad():
        want_f, want_l = encoder(images)
    np.testing.assert_allclose(real.features("cls"), want_f.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(real.logits("cls"), want_l.numpy(), rtol=1e-5, atol=1e-5)
    assert real.features("cls").dtype == np.float32   # a standard space is stored unrounded

    classes, seeds = np.arange(12) % 10, np.arange(12)
    gen = Store(generate_set(config, wd, tiny_net, "sum0", "class", classes, seeds, classes=ClassIndex.imagenet(),
                             encoders={"cls": encoder}, progress=False))
    z = sample_noise(config.run.seed, seeds, (3, 16, 16))
    with torch.no_grad():
        stored = quantise(generate(tiny_net, z, torch.nn.functional.one_hot(torch.from_numpy(classes), 10).float()))
        want_f, _ = encoder(stored)
    np.testing.assert_allclose(gen.features("cls"), want_f.numpy(), rtol=1e-4, atol=1e-4)
    # Another encoder (or none) is another store: the key holds the encoders' identities.
    with pytest.raises(Exception, match="another configuration"):
        extract_real(config, wd, tiny_net, "sum0", ClassIndex.imagenet(), progress=False)


def test_reference_statistics_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = mean_and_cov(x)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = load_stats(tmp_path / "ref.npz", 6)
    np.testing.assert_array_equal(mu, mu2) and np.testing.assert_array_equal(sigma, sigma2)


DEMO = """[run]
workdir = "{w}/work"
site = "{w}/site"
device = "cpu"
[data]
per_class = 20
[features]
batch_size = 64
full_per_class = 2
recon_per_class = 1
[generate]
samples = 96
variant_samples = 24
[embedding]
pca_components = 12
n_neighbors = 8
[metrics]
bootstrap = 20
[trajectory]
enabled = false
[atlas]
anchors_per_class = 1
atlas_grid = 3
"""


def test_bad_encoder_weights_stop_the_build_before_any_image(tmp_path):
    bad = tmp_path / "inception.pth"
    bad.write_bytes(b"PK\x03\x04 not a whole zip file")
    toml = DEMO.format(w=tmp_path) + f'[[encoders]]\nname = "inception"\nkind = "inception"\nweights = "{bad}"\n'
    (tmp_path / "report.toml").write_text(toml)
    r = CliRunner().invoke(cli, ["build", "--config", str(tmp_path / "report.toml")])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(bad) in line
    assert not (tmp_path / "work" / "stores" / "real" / "chunks").exists()   # no image was encoded


@pytest.mark.slow
def test_the_map_can_be_drawn_in_a_standard_space(tmp_path):
    """metrics.layer naming an encoder: the map is fitted on its features, the neighbour arrays are of its space, and
    the few-step paths (UNet activations only) must be off, which the config says in one line."""
    toml = DEMO.format(w=tmp_path).replace("[metrics]\n", '[metrics]\nlayer = "classifier"\n')
    (tmp_path / "report.toml").write_text(toml)
    r = CliRunner().invoke(cli, ["build", "--config", str(tmp_path / "report.toml")])
    assert r.exit_code == 0, r.output
    work = tmp_path / "work"
    assert json.loads((work / "measure" / "headline.json").read_text())["feature_space"] == "classifier:demo-classifier"
    fit = json.loads((work / "fit" / "manifest.json").read_text())
    assert fit["headline"] == "classifier" and set(fit["layers"]) == {"encoder_bottleneck", "midblock", "classifier"}
    with np.load(work / "measure" / "arrays.npz") as z:
        assert z["real.nn_real_idx"].shape[0] == 240
    assert (tmp_path / "site" / "map.html").exists()
    (tmp_path / "on.toml").write_text(toml.replace("enabled = false", "enabled = true"))
    r = CliRunner().invoke(cli, ["build", "--config", str(tmp_path / "on.toml")])
    assert r.exit_code == 2 and "an encoder's space" in r.output.strip().splitlines()[-1]
