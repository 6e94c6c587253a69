"""`dmd2report build` end to end on the demo, and the stage cache: only what changed reruns."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import ARTIFACTS
from dmd2report.cli import cli
from dmd2report.encoders.stats import load_stats, save_stats
from dmd2report.models import build_preset

SMALL = """
[run]
name = "pipeline test"
workdir = "{w}/work"
site = "{w}/site"
device = "cpu"
[model]
preset = "demo"
checkpoint = "{ckpt}"
[data]
max_samples = 240
[features]
batch_size = 64
full_per_class = 4
recon_per_class = 1
[generate]
samples = 96
variant_samples = 24
[embedding]
pca_components = 16
n_neighbors = 10
[metrics]
bootstrap = 20
[atlas]
anchors_per_class = 1
atlas_grid = 4
"""
# The demo data's encoder (the bundled classifier, used without [[encoders]] too), with reference statistics.
CLASSIFIER = """[[encoders]]
name = "classifier"
kind = "demo-classifier"
weights = "bundled:demo-classifier"
reference_stats = "{w}/ref.npz"
"""


def _ran(output: str) -> list[str]:
    return re.findall(r"^\[(\w+)\] running", output, flags=re.M)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    w = tmp_path_factory.mktemp("build")
    torch.manual_seed(1)
    net = build_preset("demo")
    with torch.no_grad():  # fill zero-initialised branches so labels and masks matter
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    save_file(net.state_dict(), w / "demo_a.safetensors")
    save_stats(w / "ref.npz", np.zeros(256), np.eye(256))   # reference statistics of the classifier's space
    cfg = w / "report.toml"
    cfg.write_text(SMALL.format(w=w, ckpt=w / "demo_a.safetensors") + CLASSIFIER.format(w=w))
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return w, cfg, r.output


def test_build_writes_every_stage_output(built):
    w, cfg, out = built
    assert _ran(out) == ["extract", "generate", "fit", "measure", "atlas", "trajectory", "render"]
    work = w / "work"
    for name in ("real", "gen-class", "gen-uniform", "gen-zero", "gen-blend"):
        manifest = json.loads((work / "stores" / name / "manifest.json").read_text())
        assert manifest["status"] == "complete"
    assert json.loads((work / "stores" / "gen-blend" / "manifest.json").read_text())["count"] == 24
    doc = json.loads((work / "measure" / "metrics.json").read_text())
    assert doc["provenance"]["model_checksum"] and doc["provenance"]["config_hash"]
    spaces = doc["feature_spaces"]
    assert len(spaces) == 3  # one per extracted layer, and the demo classifier's
    for space in spaces.values():
        assert set(space["variants"]) == {"class", "uniform", "zero", "blend"}
        p = space["variants"]["class"]["overall"]["precision"]
        assert 0 <= p["value"] <= 1 and p["n_real"] == 240 and p["n_generated"] == 96
    fit = json.loads((work / "fit" / "manifest.json").read_text())
    assert all(len(e["sha256"]) == 64 for e in fit["layers"].values())
    for page in ("index.html", "map.html", "metrics.html", "variants.html", "atlas.html"):
        assert (w / "site" / page).exists(), page
    assert "pipeline test" in (w / "site" / "index.html").read_text()
    with np.load(work / "atlas" / "atlas.npz") as z:
        assert z["anchor_images"].shape[0] == 12 and z["anchor_images"].dtype == np.uint8


def test_the_classifier_space_has_its_accuracy_and_reference_statistics(built):
    """The demo's standard space (the bundled classifier): in metrics.json beside the layers, with the classifier's
    accuracy overall, per class and on the real images, FD against the reference statistics the config names, the
    real set's statistics written for a later run, and the metrics page showing every space with its protocol."""
    w = built[0]
    doc = json.loads((w / "work" / "measure" / "metrics.json").read_text())
    space = doc["feature_spaces"]["classifier:demo-classifier"]
    assert space["dims"] == 256 and space["protocol"]["reference_stats"]["file"] == "ref.npz"
    overall = space["variants"]["class"]["overall"]
    assert overall["classification_accuracy"]["n_generated"] == 96 and 0 <= overall["classification_accuracy"]["value"] <= 1
    assert overall["fd_reference"]["value"] > 0 and "fd_reference" not in space["variants"]["class"]["per_class"]["0"]
    assert space["reference"]["classification_accuracy"]["value"] > 0.95   # the classifier on real demo images
    assert "classification_accuracy" in space["variants"]["class"]["per_class"]["3"]
    assert space["variants"]["uniform"]["overall"]["classification_accuracy"]["value"] is None   # no class asked for
    layer = doc["feature_spaces"]["midblock:mean+standardise+pca16"]["variants"]["class"]["overall"]
    assert "classification_accuracy" not in layer and "inception_score" not in overall
    mu, sigma = load_stats(w / "work" / "measure" / "classifier.stats.npz", 256)
    assert mu.shape == (256,) and sigma.shape == (256, 256)
    page = (w / "site" / "metrics.html").read_text()
    assert 'id="spaces"' in page and "demo classifier: images resized to 32x32" in page


def test_map_neighbour_panel_matches_the_stored_arrays(built, browser):
    """In Chromium, a real point's panel of the built site against measure/arrays.npz and metrics.json:
    the true covering count, the stored covering samples nearest first (at most 12 shown), no padding;
    an uncovered point with its stored nearest generated samples and their distances."""
    w = built[0]
    work = w / "work"
    with np.load(work / "measure" / "arrays.npz") as z:
        a = {k: z[k] for k in z.files}
    doc = json.loads((work / "measure" / "metrics.json").read_text())
    space = json.loads((work / "measure" / "headline.json").read_text())["feature_space"]
    count, offs, vals = (a["variant.class.real_cover_count"], a["variant.class.real_covered_by.offsets"],
                         a["variant.class.real_covered_by.values"])
    n_real = len(count)
    # The panel's counts are the ones coverage is the share of.
    assert doc["feature_spaces"][space]["variants"]["class"]["overall"]["coverage"]["value"] == \
        pytest.approx(float((count > 0).mean()), abs=1e-6)
    assert (np.diff(offs) == np.minimum(count, 16)).all() and (vals >= 0).all()
    order = np.argsort(-count, kind="stable")
    picks = [int(order[0]), int(order[len(order) // 3]), *np.flatnonzero(count == 0)[:2].tolist()]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((w / "site" / "map.html").as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30000)
    ids = page.evaluate("DMD2_DATA.points.id")
    # Uncapped site: real rows first (the real store's order), then the class-conditioned set's.
    assert not page.evaluate("DMD2_DATA.site.capped") and all(i.startswith("class:") for i in ids[n_real:n_real + 5])
    panel = page.locator('[data-nbr-for="map"]')
    for row in picks:
        page.evaluate("r => DMD2Site.showNeighbours('map', r)", row)
        cover = panel.locator(".cover")
        text = re.sub(r"\s+", " ", cover.inner_text())
        shown = [int(r) for r in cover.locator(".nbr").evaluate_all("els => els.map(e => e.dataset.row)")]
        assert int(cover.get_attribute("data-count")) == count[row]
        assert f"r = {a['real.r_dc'][row]:.3f}" in text
        if count[row]:
            assert f"covered by {count[row]} class-conditioned" in text
            assert shown == (n_real + vals[offs[row]:offs[row + 1]][:12]).tolist()
        else:
            near = panel.locator('[data-list="generated"] .nbr')
            rows = [int(r) for r in near.evaluate_all("els => els.map(e => e.dataset.row)")]
            assert text.startswith("not covered") and shown == []
            assert rows == (n_real + a["variant.class.real_nn_gen_idx"][row]).tolist()
            assert near.first.inner_text().strip() == f"d {a['variant.class.real_nn_gen_dist'][row, 0]:.3f}"
        page.screenshot(path=str(ARTIFACTS / f"pipeline-map-panel-{'covered' if count[row] else 'uncovered'}.png"))
    assert errors == []
    page.close()


def test_unchanged_rebuild_runs_nothing(built):
    w, cfg, _ = built
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg)])
    assert r.exit_code == 0 and _ran(r.output) == [], r.output


def test_plot_option_rerenders_only(built):
    w, cfg, _ = built
    cfg.write_text(cfg.read_text() + '\n[report]\ncolor_by = "variant"\n')
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg)])
    assert _ran(r.output) == ["render"], r.output


def test_new_templates_rerender(built, monkeypatch):
    import dmd2report.stages.render as render_stage

    w, cfg, _ = built
    monkeypatch.setattr(render_stage, "renderer_fingerprint", lambda *a: "another dmd2report version")
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg)])
    assert _ran(r.output) == ["render"], r.output
    monkeypatch.undo()
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg)])
    assert _ran(r.output) == ["render"], r.output


def test_umap_settings_refit_and_rerender(built):
    w, cfg, _ = built
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg), "--fit-on", "both"])
    assert _ran(r.output) == ["fit", "measure", "atlas", "trajectory", "render"], r.output


def test_another_device_or_precision_redoes_the_model_stages(built, monkeypatch):
    """A workdir built on the CPU is not reused on a GPU (bf16 features), nor after --precision changes."""
    import dmd2report.device as device_module
    from dmd2report.config import load_config
    from dmd2report.context import Context
    from dmd2report.pipeline import stage_keys

    def keys_of(config):
        return stage_keys(Context.create(config))

    w, cfg, _ = built
    keys = keys_of(load_config(cfg))
    for precision in ("float32", "auto", "bfloat16"):
        assert keys_of(load_config(cfg, {"model.precision": precision})) == keys  # all float32 on CPU
    # --compile and --batch-size change only rounding: no stage reruns.
    assert keys_of(load_config(cfg, {"model.compile": "on", "features.batch_size": 7})) == keys
    monkeypatch.setattr(device_module, "resolve_device", lambda spec="auto": torch.device("cuda"))
    gpu = keys_of(load_config(cfg, {"model.preset": "dmd2-imagenet64"}))
    gpu32 = keys_of(load_config(cfg, {"model.preset": "dmd2-imagenet64", "model.precision": "float32"}))
    cpu32 = load_config(cfg, {"model.preset": "dmd2-imagenet64", "model.precision": "float32", "run.device": "cpu"})
    assert gpu["extract"] != gpu32["extract"] and gpu["generate"] != gpu32["generate"]
    monkeypatch.undo()
    assert keys_of(cpu32)["extract"] != gpu32["extract"]  # same dtype, another device type


def test_force_reruns_one_stage(built):
    w, cfg, _ = built
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg), "--fit-on", "both", "--force", "measure"])
    assert _ran(r.output) == ["measure"], r.output
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg), "--force", "sideways"])
    assert r.exit_code == 2 and "unknown stage" in r.output


def test_render_alone_needs_no_model(built, monkeypatch):
    w, cfg, _ = built
    import dmd2report.checkpoint as ck

    monkeypatch.setattr(ck, "load_generator", lambda *a, **k: pytest.fail("render loaded the model"))
    r = CliRunner().invoke(cli, ["render", "--config", str(cfg), "--fit-on", "both"])
    assert r.exit_code == 0 and _ran(r.output) == ["render"], r.output


def test_new_checkpoint_redoes_everything(built):
    w, cfg, _ = built
    torch.manual_seed(2)
    net = build_preset("demo")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(net.state_dict(), w / "demo_b.safetensors")
    r = CliRunner().invoke(cli, ["build", "--config", str(cfg), "--fit-on", "both",
                                 "--checkpoint", str(w / "demo_b.safetensors")])
    assert r.exit_code == 0, r.output
    assert _ran(r.output) == ["extract", "generate", "fit", "measure", "atlas", "trajectory", "render"]


def test_stage_command_refuses_another_config_unless_overwrite(built):
    w, cfg, _ = built
    ckpt = ["--checkpoint", str(w / "demo_b.safetensors"), "--fit-on", "both"]
    r = CliRunner().invoke(cli, ["extract", "--config", str(cfg), *ckpt, "--max-samples", "120"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "max_samples was 240, now 120" in r.output and "--overwrite" in r.output, r.output
    store = w / "work" / "stores" / "real"
    assert json.loads((store / "manifest.json").read_text())["count"] == 240  # nothing lost
    r = CliRunner().invoke(cli, ["extract", "--config", str(cfg), *ckpt])  # same config: found complete
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["extract", "--config", str(cfg), *ckpt, "--max-samples", "120", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads((store / "manifest.json").read_text())["count"] == 120


def test_build_output_is_one_voice(built):
    """A demo build's stderr holds the tool's own lines only: no Python warning (`file.py:12: UserWarning: ...`, and
    its source line) and no library warning the build meets (torch, PIL, numba, umap, scikit-learn: they would come
    out once each as `warning: <library>: <Category>: ...`)."""
    _, _, out = built
    python_style = [l for l in out.splitlines() if re.search(r"\.py:\d+: \w*Warning\b", l)]
    library = [l for l in out.splitlines() if re.match(r"warning: \w+: \w*Warning: ", l)
               and "DeprecationWarning" not in l]   # pytest shows DeprecationWarnings, which users never see
    assert not python_style and not library, out
