"""Several generators in one report ([[generators]]): one reference encoder, shared seeds, one real map, metrics.json
of every generator, `compare` of either form, and the config's one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ARTIFACTS
from test_browser_report import _open
from dmd2report.checkpoint import bundled_weights
from dmd2report.cli import cli
from dmd2report.compare import compare_metrics
from dmd2report.config import load_config
from dmd2report.errors import UserError
from dmd2report.pipeline import build
from dmd2report.resources import EXAMPLE_CONFIGS, bundled_file

# The shipped example (data/demo/compare.toml: the final demo generator against the EMA of its step 100), built at
# test sizes through the config API: its [features] and [[generators]] are the file's own.
SMALL = {"run.device": "cpu", "data.max_samples": 120, "features.batch_size": 64, "features.full_per_class": 2,
         "features.recon_per_class": 1, "generate.samples": 48, "generate.variants": ["class", "uniform"],
         "generate.variant_samples": 12, "embedding.pca_components": 8, "embedding.n_neighbors": 8,
         "metrics.bootstrap": 20, "atlas.anchors_per_class": 1, "atlas.atlas_grid": 3, "trajectory.samples": 6,
         "trajectory.real_references": 6}
EXAMPLE = bundled_file(EXAMPLE_CONFIGS["demo-compare"])


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A two-generator build of the shipped example on the demo data: the bundled final demo generator ("final", the
    reference encoder) and the bundled snapshot of its training's step 100 ("step-100")."""
    w = tmp_path_factory.mktemp("two")
    config = load_config(EXAMPLE, SMALL | {"run.workdir": str(w / "work"), "run.site": str(w / "site")})
    assert [(g.name, g.checkpoint) for g in config.generators] == [("final", "bundled:demo"),
                                                                  ("step-100", "bundled:demo-step100")]
    build(config)
    return w


def test_every_generator_is_measured_in_the_reference_space(two):
    work = two / "work"
    for name in ("real", "generators/final/gen-class", "generators/step-100/gen-class", "generators/step-100/gen-uniform"):
        assert json.loads((work / "stores" / name / "manifest.json").read_text())["status"] == "complete", name
    assert not (work / "stores" / "gen-class").exists()
    doc = json.loads((work / "measure" / "metrics.json").read_text())
    assert doc["encoder"] == "final" and set(doc["generators"]) == {"final", "step-100"}
    final, early = doc["generators"]["final"], doc["generators"]["step-100"]
    assert final["feature_spaces"].keys() == early["feature_spaces"].keys()
    assert early["provenance"]["generator"] == "step-100" and early["provenance"]["encoder"] == "final"
    assert final["provenance"]["model_checksum"] != early["provenance"]["model_checksum"]
    for space in final["feature_spaces"]:
        # one real set, one reference: the real side is the same for both
        assert final["feature_spaces"][space]["reference"] == early["feature_spaces"][space]["reference"]
        for d in (final, early):
            assert set(d["feature_spaces"][space]["variants"]) == {"class", "uniform"}
            assert d["feature_spaces"][space]["variants"]["class"]["overall"]["precision"]["n_generated"] == 48
        # a different generator scores differently in the same space
        assert final["feature_spaces"][space]["variants"]["class"]["overall"] != \
            early["feature_spaces"][space]["variants"]["class"]["overall"]


def test_seeds_are_shared_and_images_differ(two):
    from dmd2report.store import Store

    stores = {g: Store(two / "work" / "stores" / "generators" / g / "gen-class") for g in ("final", "step-100")}
    meta = {g: s.metadata() for g, s in stores.items()}
    for col in ("seed_index", "class_id"):
        assert (meta["final"][col].to_numpy() == meta["step-100"][col].to_numpy()).all()
    a, b = (np.asarray(stores[g].thumbnails(), np.int16) for g in ("final", "step-100"))
    # the same seed through an earlier checkpoint of the same training: a similar image, not the same one
    assert 0 < np.abs(a - b).mean() < np.abs(a - np.roll(b, 1, axis=0)).mean()


def test_points_carry_the_generator(two):
    import pandas as pd

    points = pd.read_parquet(two / "work" / "fit" / "points.parquet")
    counts = points.groupby(["generator", "variant"]).size().to_dict()
    assert counts == {("", "real"): 120, ("final", "class"): 48, ("final", "uniform"): 12,
                      ("step-100", "class"): 48, ("step-100", "uniform"): 12}


def test_compare_reads_both_forms(two, tmp_path):
    both = two / "work" / "measure" / "metrics.json"
    doc = json.loads(both.read_text())
    single = tmp_path / "single.json"
    single.write_text(json.dumps(doc["generators"]["final"]))
    # the old form against one generator of the new
    lines, regressed = compare_metrics(single, both, ["precision"], 0.0, generator="final")
    assert not regressed and lines[-1].startswith("no regression")
    with pytest.raises(UserError, match="several generators .*--generator NAME"):
        compare_metrics(single, both, ["precision"], 0.0)
    with pytest.raises(UserError, match="no such generator"):
        compare_metrics(single, both, ["precision"], 0.0, generator="other")
    # two comparison files: generator by generator
    worse = json.loads(both.read_text())
    space = next(iter(worse["generators"]["step-100"]["feature_spaces"]))
    worse["generators"]["step-100"]["feature_spaces"][space]["variants"]["class"]["overall"]["precision"]["value"] -= 0.5
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    lines, regressed = compare_metrics(both, tmp_path / "worse.json", ["precision"], 0.02)
    assert regressed and [ln for ln in lines if ln.startswith("REGRESSED")] == \
        [f"REGRESSED step-100:{space}/class/overall/precision: " + ln.split(": ", 1)[1]
         for ln in lines if ln.startswith("REGRESSED")]
    assert sum(ln.startswith("REGRESSED") for ln in lines) == 1
    r = CliRunner().invoke(cli, ["compare", str(single), str(tmp_path / "worse.json"), "--generator", "step-100",
                                 "--metric", "precision"])
    assert r.exit_code == 1 and "REGRESSED" in r.output


@pytest.mark.parametrize("text, message", [
    ('[[generators]]\npreset = "demo"\n', r"\[\[generators\]\] #1: generators.name: required"),
    ('[[generators]]\nname = "a"\n[[generators]]\nname = "a"\n', r"generators.name: 'a' is repeated"),
    ('[[generators]]\nname = "a b"\n', r"\[\[generators\]\] #1: generators.name: 'a b' is not one of"),
    ('[[generators]]\nname = "a"\nweights = "x"\n', r"unknown key generators.weights"),
    ('[[generators]]\nname = "a"\npreset = "nope"\n', r"generators.preset: 'nope' is not one of"),
    ('[[generators]]\nname = "a"\ncheckpoint = "bundled:demo-step1"\n', r"#1: generators.checkpoint: "
     r"'bundled:demo-step1' is not one of PATH, bundled:demo, bundled:demo-step100$"),
    ('generators = 3\n', r"generators must be an array of tables"),
    ('[features]\nencoder = "c"\n[[generators]]\nname = "a"\n', r"features.encoder: 'c' is not one of the generators \(a\)"),
    ('[features]\nencoder = "c"\n', r"features.encoder: 'c' names no generator"),
    ('[model]\ncheckpoint = "x.pth"\n[[generators]]\nname = "a"\n', r"model.checkpoint: set per generator"),
    ('[model.config]\nnum_blocks = 2\n[[generators]]\nname = "a"\n', r"model.config.num_blocks: set per generator"),
    ('[[generators]]\nname = "a"\n[generators.config]\nblocks = 2\n', r"#1: unknown key generators.config.blocks"),
    ('[[generators]]\nname = "a"\n[generators.config]\nnum_blocks = -1\n', r"#1: generators.config.num_blocks: must be >= 0"),
    ('[[generators]]\nname = "a"\npreset = "auto"\n', r"\[\[generators\]\] 'a': generators.preset = \"auto\" reads the "
     r"architecture off generators.checkpoint, which is not set"),
    ('[[generators]]\nname = "a"\n[[generators]]\nname = "b"\npreset = "tiny"\n',
     r"generators.preset: 'b' \(tiny\) makes 16px images of 10 classes, the reference encoder 'a' \(demo\) reads"),
    ('[embedding]\nfit_on = "both"\n[[generators]]\nname = "a"\n[[generators]]\nname = "b"\n',
     r"embedding.fit_on: 'both' with several generators; use 'real'"),
    ('[features]\ngenerated = "generation"\n[[generators]]\nname = "a"\n[[generators]]\nname = "b"\n',
     r"features.generated: 'generation' with several generators"),
])
def test_generator_config_mistakes_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_config(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path))


def test_a_generators_architecture_is_its_own(tmp_path):
    """preset = "auto" reads a generator's architecture off its checkpoint; [generators.config] sets keys over it."""
    from dmd2report.checkpoint import model_architecture
    from dmd2report.config import generator_entries

    path = tmp_path / "two.toml"
    path.write_text(f'[[generators]]\nname = "a"\n[[generators]]\nname = "b"\npreset = "auto"\n'
                    f'checkpoint = "{bundled_weights("demo")}"\n[generators.config]\ndropout = 0.25\n')
    a, b = generator_entries(load_config(path))
    assert b.config.dropout == 0.25 and a.config.dropout is None
    arch_a, arch_b = model_architecture(a), model_architecture(b)
    assert arch_b.kwargs == arch_a.kwargs | {"dropout": 0.25}


def test_one_generator_config_is_unchanged():
    from dmd2report.config import Config, generator_entries

    c = load_config()
    assert "generators" not in c.to_dict() and c.section_hash() == Config().section_hash()
    assert [(g.name, g.preset, g.checkpoint) for g in generator_entries(c)] == [("", "demo", "")]


def test_comparison_page_in_the_browser(two, browser):
    """The comparison page: every generator's metrics side by side with deltas against the reference (marked
    where the intervals do not overlap), the coverage difference's counts, per-class deltas largest first, and
    the same seeds' images of every generator."""
    doc = json.loads((two / "work" / "measure" / "metrics.json").read_text())
    space = json.loads((two / "work" / "measure" / "headline.json").read_text())["feature_space"]
    final, early = (doc["generators"][g]["feature_spaces"][space]["variants"]["class"] for g in ("final", "step-100"))
    page, problems, requests = _open(browser, (two / "site" / "compare.html").as_uri())
    # one table a feature space, the map's first: every space both generators were measured in
    spaces = doc["generators"]["final"]["feature_spaces"]
    shown = [t.get_attribute("data-space") for t in page.locator('[data-compare="overall"]').all()]
    assert shown[0] == space and sorted(shown) == sorted(spaces) and len(shown) >= 2
    for name in shown:
        final, early = (doc["generators"][g]["feature_spaces"][name]["variants"]["class"] for g in ("final", "step-100"))
        table = page.locator(f'[data-compare="overall"][data-space="{name}"]')
        assert table.locator("thead th[data-generator]").all_inner_texts() == ["final", "step-100"]
        for key in ("precision", "coverage", "fd"):
            a, b = final["overall"][key], early["overall"][key]
            cell = table.locator(f'tr[data-metric="{key}"] td[data-generator="step-100"]')
            text = cell.inner_text()
            assert f"{b['value']:.3f}" in text and f"{b['value'] - a['value']:+.3f}" in text
            separated = b.get("ci_low") is not None and (b["ci_low"] > a["ci_high"] or b["ci_high"] < a["ci_low"])
            assert (cell.get_attribute("data-separated") is not None) == separated, (name, key)
        if "protocol" in spaces[name]:   # a standard space says how its numbers are made
            protocol = page.locator(f'h3[data-space="{name}"] + p.protocol').inner_text()
            assert spaces[name]["protocol"]["protocol"][:40] in protocol
    final, early = (doc["generators"][g]["feature_spaces"][space]["variants"]["class"] for g in ("final", "step-100"))
    # coverage difference: the four kinds add up to the real set, and A only + both is the reference's coverage
    counts = {r.get_attribute("data-cover").split(" ")[0]: int(r.locator("td").nth(1).inner_text().replace(",", ""))
              for r in page.locator('[data-compare="coverage"] tbody tr').all()}
    assert sum(counts.values()) == 120
    assert (counts["A"] + counts["both"]) / 120 == pytest.approx(final["overall"]["coverage"]["value"], abs=1e-6)
    assert (counts["B"] + counts["both"]) / 120 == pytest.approx(early["overall"]["coverage"]["value"], abs=1e-6)
    # per-class coverage deltas, largest first, each the difference of the two per-class values
    rows = page.locator('[data-compare="classes"][data-metric="coverage"] tbody tr')
    deltas = [abs(float(t)) for t in rows.locator("td:nth-child(4)").all_inner_texts()]
    assert deltas and deltas == sorted(deltas, reverse=True)
    c = rows.first.get_attribute("data-class")
    want = early["per_class"][c]["coverage"]["value"] - final["per_class"][c]["coverage"]["value"]
    assert deltas[0] == pytest.approx(abs(want), abs=1e-3)
    # same-seed grids: a column per generator, an image in every cell
    grid = page.locator("[data-seed-table]").first
    assert grid.locator("thead th").all_inner_texts()[1:] == ["final", "step-100"]
    assert grid.locator("tbody td .thumb.missing").count() == 0 and grid.locator("tbody td .thumb").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "compare-page.png"), full_page=True)
    page.goto((two / "site" / "index.html").as_uri())
    assert "compares 2 generators (final, step-100)" in page.locator("[data-compared]").inner_text()
    page.locator('[data-compared] a').click()
    assert page.url.endswith("compare.html")
    assert problems == [] and all(r.startswith("file://") for r in requests)   # offline, no errors
    page.close()


def test_compared_tables_carry_intervals_and_real_scales_from_metrics_json(two, browser):
    """The pipeline's numbers on the pages that compare: the compare page's per-class cells with both generators'
    intervals, ▲/▼ where they do not overlap, its FD beside the real halves'; the metrics page's row of the class set's
    first seeds (metrics.json's matched.class, as many samples as the other variants) and each class's real/real FD."""
    doc = json.loads((two / "work" / "measure" / "metrics.json").read_text())
    space_name = json.loads((two / "work" / "measure" / "headline.json").read_text())["feature_space"]
    spaces = {g: doc["generators"][g]["feature_spaces"][space_name] for g in ("final", "step-100")}
    final, early = (spaces[g]["variants"]["class"] for g in ("final", "step-100"))
    page, problems, _ = _open(browser, (two / "site" / "compare.html").as_uri())
    assert f"real against real (two halves): {spaces['final']['reference']['fd']['value']:.2f}" in \
        page.inner_text(f'[data-compare="overall"][data-space="{space_name}"] tr[data-metric="fd"] th')
    rows = page.locator('[data-compare="classes"][data-metric="coverage"] tbody tr')
    assert rows.count() > 0
    for r in rows.all():
        c = r.get_attribute("data-class")
        a, b = final["per_class"][c]["coverage"], early["per_class"][c]["coverage"]
        ref_cell, cell = r.locator("td").nth(1), r.locator("td").nth(2)
        assert f"{a['ci_low']:.3f} – {a['ci_high']:.3f}" in ref_cell.inner_text()
        assert f"{b['ci_low']:.3f} – {b['ci_high']:.3f}" in cell.inner_text()
        want = "above" if b["ci_low"] > a["ci_high"] else "below" if b["ci_high"] < a["ci_low"] else None
        assert cell.get_attribute("data-separated") == want, c
    page.goto((two / "site" / "metrics.html").as_uri())
    matched = spaces["final"]["matched"]["class"]
    n = matched["n_seeds"]
    assert n == SMALL["generate.variant_samples"] and matched["overall"]["coverage"]["n_generated"] == n
    row = page.locator('table[data-table="variants"] tr[data-matched]')
    assert row.locator("th").inner_text() == f"class, first {n} seeds" and row.locator("td").first.inner_text() == str(n)
    assert f"{matched['overall']['coverage']['value']:.3f}" in row.inner_text()
    assert f"{n}" in page.inner_text('[data-caution="variants"]')
    scales = page.locator("table.data.sortable").last.locator("[data-real-scale]").all_inner_texts()
    per_class = spaces["final"]["reference_per_class"]
    assert scales and set(scales) <= {f"real/real {e['fd']['value']:.2f}" for e in per_class.values()
                                      if e["fd"]["value"] is not None}
    assert problems == []
    page.close()


def test_map_colours_by_generator_and_coverage_difference(two, browser):
    page, problems, requests = _open(browser, (two / "site" / "map.html").as_uri() + "#colour=generator")
    assert page.locator('[data-colour="map"]').input_value() == "generator"
    key = page.locator('[data-key="map"]')
    assert [t.split("\n")[-1] for t in key.locator("[data-generator]").all_inner_texts()] == \
        ["final (60)", "step-100 (48)"]   # the reference's class and uniform sets, the other's class set
    style = page.evaluate("DMD2_DATA.style.generators")
    colours = {g: c for g, c, _ in style}
    # every drawn generated point is filled with its generator's colour
    fills = page.evaluate("""() => { const out = {}; const P = DMD2_DATA.points, G = DMD2_DATA.style.generators;
        for (const m of Bokeh.documents[0].all_models) {
          if (!m.data_source || !m.name || !m.name.startsWith("map:pt:gen:")) continue;
          const d = m.data_source.data;
          d.row.forEach((r, i) => { const g = G[P.generator[r]][0]; (out[g] = out[g] || new Set()).add(d.color[i]); });
        }
        return Object.fromEntries(Object.entries(out).map(([g, s]) => [g, Array.from(s)])); }""")
    assert fills == {g: [colours[g]] for g in ("final", "step-100")}
    page.select_option('[data-colour="map"]', "coverdiff")
    rows = key.locator("[data-cover-diff]")
    assert rows.count() == 4
    counts = page.evaluate("DMD2_DATA.style.coverDiff.map(r => r[2])")
    codes = page.evaluate("DMD2_DATA.points.coverDiff.filter((c, i) => !DMD2_DATA.points.gen[i])")
    assert sum(counts) == 120 and [codes.count(i) for i in range(4)] == counts   # uncapped: every real point carried
    assert "#colour=coverdiff" in page.url
    page.screenshot(path=str(ARTIFACTS / "compare-map-coverdiff.png"))
    assert problems == [] and all(r.startswith("file://") for r in requests)   # offline, no errors
    page.close()


def test_ci_example_config_compares_a_candidate_in_the_published_space():
    # docs/ci-snapshots.md's example: both checkpoints in one report, measured in the published one's space
    cfg = load_config(Path(__file__).resolve().parents[1] / "docs" / "ci-compare.toml")
    assert [g.name for g in cfg.generators] == ["published", "candidate"] and cfg.features.encoder == "published"
    assert "--generator candidate" in (Path(__file__).resolve().parents[1] / "docs" / "ci-snapshots.md").read_text()


def test_init_writes_the_bundled_comparison_example(tmp_path):
    """README's command: `dmd2report init --example demo-compare compare.toml` writes the shipped example (built at
    test sizes by the `two` fixture), which builds apart from the one-generator demo; an unknown example name is one
    line naming it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "dmd2report init --example demo-compare compare.toml && dmd2report build --config compare.toml" in readme
    path = tmp_path / "compare.toml"
    r = CliRunner().invoke(cli, ["init", "--example", "demo-compare", str(path)])
    assert r.exit_code == 0 and path.read_bytes() == EXAMPLE.read_bytes()
    c, demo = load_config(path), load_config()
    assert c.features.encoder == "final" and [g.name for g in c.generators] == ["final", "step-100"]
    assert c.run.workdir != demo.run.workdir and c.run.site != demo.run.site
    r = CliRunner().invoke(cli, ["init", "--example", "demo-compared", str(tmp_path / "other.toml")])
    assert r.exit_code == 2 and r.output == "error: demo-compared: no bundled example config of that name (bundled: demo-compare)\n"
    assert not (tmp_path / "other.toml").exists()


def test_bundled_checkpoints_by_name():
    """`bundled:NAME` names a checkpoint that ships with dmd2report wherever a checkpoint path goes (here `inspect`);
    a name that ships nothing is one line listing those that do."""
    r = CliRunner().invoke(cli, ["inspect", "bundled:demo-step100"])
    assert r.exit_code == 0 and "generator-step100.safetensors" in r.output and "preset:      demo " in r.output
    r = CliRunner().invoke(cli, ["inspect", "bundled:demo-step1"])
    assert r.exit_code == 2 and r.output == ("error: bundled:demo-step1: no bundled checkpoint of that name "
                                             "(bundled: bundled:demo, bundled:demo-step100)\n")
