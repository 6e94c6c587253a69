"""The report renderer without a browser: escaping, sprites, atomic writes, single-file limits."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from dmd2report.errors import UserError
from dmd2report.config import ReportConfig, load_config
from dmd2report.report import sprites
from dmd2report.report.render import SITE_MARKER, json_for_script, render_site
from synthetic import replace, synthetic_report_data

HOSTILE = "<script>alert(1)</script>"
QUOTED_PATH = 'data/"quoted" it\'s </script><!--.JPEG'


@pytest.fixture(scope="module")
def data():
    d = synthetic_report_data(120, 60, 4, seed=3, class_names={1: HOSTILE})
    d.points.loc[0, "source"] = QUOTED_PATH
    d.run.name = 'run "<b>bold</b>"'
    return d


@pytest.fixture(scope="module")
def site(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("r") / "site"
    return root, render_site(data, root)


def test_site_has_every_page_and_local_bokehjs(site, data):
    root, files = site
    names = {p.relative_to(root).as_posix() for p in files}
    for page in ("index.html", "map.html", "variants.html", "classes.html", "metrics.html", "atlas.html",
                 "static/bokeh.min.js", "static/bokeh-gl.min.js", "static/site.js", "assets/data.js",
                 "assets/thumbs-000.webp"):
        assert page in names
    assert not any(n.endswith(".png") for n in names)  # WebP sheets only by default
    assert {f"classes/class-{c}.html" for c in range(4)} <= names
    for f in files:
        if f.suffix == ".html":
            html = f.read_text()
            assert "cdn.bokeh.org" not in html and "https://" not in html
            assert re.search(r'<script src="(\.\./)?static/bokeh\.min\.js">', html)
            assert data.run.config_hash in html                       # footer on every page
            assert "Untrained model." not in html


def test_data_strings_are_escaped(site):
    root, files = site
    for f in files:
        if f.suffix in (".html", ".js") and f.parent.name != "static":
            text = f.read_text()
            assert HOSTILE not in text, f"raw hostile class name in {f}"
            assert "<b>bold</b>" not in text
    # Inside the embedded JSON the strings survive exactly, with '<' escaped.
    js = (root / "assets" / "data.js").read_text()
    payload = json.loads(js[js.index("=") + 1:].rstrip().rstrip(";"))
    assert payload["classes"]["1"][1] == HOSTILE
    assert payload["points"]["src"][0] == QUOTED_PATH
    assert "</" not in js and "<!--" not in js


def test_json_for_script_cannot_break_out():
    s = json_for_script({"a": "</script><!-- \u2028 & >"})
    assert "<" not in s and ">" not in s and "\u2028" not in s and "&" not in s
    assert json.loads(s) == {"a": "</script><!-- \u2028 & >"}


def test_untrained_banner_on_every_page(data, tmp_path):
    d = replace(data, model=replace_model(data, untrained=True))
    files = render_site(d, tmp_path / "s")
    pages = [f for f in files if f.suffix == ".html"]
    assert pages and all("Untrained model." in f.read_text() for f in pages)


def replace_model(data, **kw):
    import dataclasses
    return dataclasses.replace(data.model, **kw)


def test_sprite_sheets_hold_each_thumbnail_where_layout_says(tmp_path):
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    lay, images = sprites.sheet_images(thumbs)
    for i in (0, 13, 69):
        s, c, r = lay.locate(i)
        tile = np.asarray(images[s])[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
        assert np.array_equal(tile, thumbs[i])
    lay2 = sprites.write_sheets(thumbs, tmp_path)
    assert lay2.sheets == len(list(tmp_path.glob("*.webp"))) and not list(tmp_path.glob("*.png"))
    assert Image.open(tmp_path / "thumbs-000.webp").size == (lay.cols * 8, lay.rows * 8)
    sprites.write_sheets(thumbs, tmp_path / "with-png", png_fallback=True)
    assert len(list((tmp_path / "with-png").glob("*.png"))) == lay2.sheets
    assert Image.open(tmp_path / "with-png" / "thumbs-000.png").size == (lay.cols * 8, lay.rows * 8)  # palette PNG


def test_png_fallback_is_an_option(data, tmp_path):
    """report.png_fallback adds PNG sheets and the CSS that falls back to them; without it no page names a PNG."""
    plain = render_site(data, tmp_path / "plain")
    with_png = render_site(data, tmp_path / "png", ReportConfig(png_fallback=True))
    assert not [p for p in plain if p.suffix == ".png"] and "thumbs-000.png" in {p.name for p in with_png}
    index_plain = (tmp_path / "plain" / "index.html").read_text()
    index_png = (tmp_path / "png" / "index.html").read_text()
    assert ".png" not in index_plain and 'image-set(url("assets/thumbs-000.webp")' in index_png
    size = lambda files: sum(p.stat().st_size for p in files)
    assert size(plain) < size(with_png)


def test_many_thumbnails_span_several_sheets():
    lay = sprites.layout_for(100_000, 32)
    assert lay.cols * 32 <= sprites.MAX_SHEET_PX and lay.rows * 32 <= sprites.MAX_SHEET_PX
    assert lay.sheets * lay.per_sheet >= 100_000 and lay.locate(99_999)[0] == lay.sheets - 1


def test_rerender_replaces_site_and_failure_keeps_old_one(data, tmp_path, monkeypatch):
    root = tmp_path / "site"
    render_site(data, root)
    (root / "stale.html").write_text("old")
    render_site(data, root)
    assert not (root / "stale.html").exists() and (root / SITE_MARKER).exists()
    before = (root / "index.html").read_text()
    from dmd2report.report import render as render_mod
    monkeypatch.setattr(render_mod.sprites, "write_sheets", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(UserError, match=f"^{root}: cannot write \\(disk full\\)$"):  # one line, not a traceback
        render_site(data, root)
    assert (root / "index.html").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["site"]     # no temp folder left behind


def test_refuses_to_replace_a_folder_that_is_not_a_site(data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a dmd2report site"):
        render_site(data, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_single_file_inlines_everything_and_respects_limit(data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="dmd2report"):
        files = render_site(data, tmp_path / "one", ReportConfig(single_file=True))
    assert [f.name for f in files] == ["report.html"]
    html = files[0].read_text()
    assert not re.search(r'<(script|img|link)\b[^>]*\b(src|href)="(?!data:)', html)   # nothing loaded from elsewhere
    assert "data:image/webp;base64," in html and HOSTILE not in html
    assert re.search(r"single-file report: [\d.]+ MB", caplog.text)
    with pytest.raises(UserError, match="folder form"):
        render_site(data, tmp_path / "two", ReportConfig(single_file=True, single_file_limit_mb=0.1))
    assert not (tmp_path / "two").exists()


def test_bad_inputs_are_user_errors(data, tmp_path):
    # The render settings are checked once, where the config loads (before any stage runs).
    with pytest.raises(UserError, match="report.color_by"):
        load_config(overrides={"report.color_by": "rainbow"})
    with pytest.raises(UserError, match="report.max_points"):
        load_config(overrides={"report.max_points": 0})
    import dataclasses
    bad = dataclasses.replace(data, thumbnails=data.thumbnails[:5])
    with pytest.raises(UserError, match="thumb"):
        render_site(bad, tmp_path / "s")


def test_many_classes_group_the_key(tmp_path):
    """Ten class colours, then the same ten ringed; past those 19 (+1) styles the rest share hashed colours
    under one "other classes" key entry. The map's key is drawn from the styles the page carries."""
    import json

    d = synthetic_report_data(300, 300, 40, seed=0, variants_per_class=1)
    from dmd2report.report import palette
    counts = d.points[d.points["variant"] == "class"]["class_id"].value_counts().to_dict()
    own, rest = palette.class_groups(counts)
    assert len(own) == palette.LEGEND_CLASSES and len(rest) == len(counts) - len(own)
    assert [ring for _, _, ring in own] == [False] * 10 + [True] * 9 and len({(c, r) for _, c, r in own}) == 19
    files = render_site(d, tmp_path / "s", ReportConfig(color_by="class"))
    text = (tmp_path / "s" / "assets" / "data.js").read_text()
    style = json.loads(text[text.index("=") + 1:text.rindex(";")])["style"]
    assert style["classes"] == {str(c): [col, ring] for c, col, ring in own} and len(style["rest"]) == len(rest)
    assert len([f for f in files if f.parent.name == "classes"]) == 40
    render_site(d, tmp_path / "v", ReportConfig(color_by="variant"))
    assert 'data-color-by="variant"' in (tmp_path / "v" / "map.html").read_text()


def test_skipped_images_are_listed_on_the_overview_escaped_and_capped(data, tmp_path):
    from dmd2report.report.pages import MAX_SKIPPED

    hostile = {"source": 'n01443537/<img src=x onerror=alert(1)>.jpg', "error": "OSError: cannot identify <b>image</b>"}
    many = [hostile] + [{"source": f"n01443537/bad_{i}.jpg", "error": "OSError: truncated"} for i in range(MAX_SKIPPED + 4)]
    render_site(replace(data, skipped=many), tmp_path / "s")
    html = (tmp_path / "s" / "index.html").read_text()
    assert "Skipped images" in html and f"{len(many):,} real images could not be read" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html and "<img src=x" not in html
    assert "cannot identify &lt;b&gt;image&lt;/b&gt;" in html
    assert html.count("<tr><td><code class=\"wrap\">n01443537/") == MAX_SKIPPED
    assert f"and {len(many) - MAX_SKIPPED:,} more" in html
    render_site(replace(data, skipped=[{"source": "a/b.png", "error": "OSError: x"}]), tmp_path / "one")
    html = (tmp_path / "one" / "index.html").read_text()
    assert "1 real image could not be read and was left out" in html and "more (every one" not in html
    # No section at all without skipped images.
    render_site(data, tmp_path / "none")
    assert "Skipped images" not in (tmp_path / "none" / "index.html").read_text()


def test_coverage_global_has_a_column_where_it_differs(tmp_path):
    """Where coverage by any sample differs from coverage in some class, it keeps its column, explained."""
    import pandas as pd

    from dmd2report.metric_defs import METRICS
    from dmd2report.report.pages import class_metric_columns

    pc = pd.DataFrame({"class_id": [0, 1], "n_real": [5, 5], "n_gen": [4, 4], "coverage": [0.5, 0.6],
                       "coverage_global": [0.5, 0.8]})
    assert class_metric_columns(pc) == (["coverage", "coverage_global"], "")
    cols, note = class_metric_columns(pc.assign(coverage_global=[0.5004, 0.6]))   # equal as shown
    assert cols == ["coverage"] and METRICS["coverage_global"].label in note


def test_per_class_chart_title_says_which_classes_it_shows(tmp_path):
    data = synthetic_report_data(300, 300, 40, seed=0, variants_per_class=1)
    render_site(replace(data, max_class_pages=1), tmp_path / "site")
    assert "The 30 classes with the lowest coverage, of 40" in (tmp_path / "site" / "metrics.html").read_text()


def test_a_delta_that_shows_as_zero_is_neutral():
    """A delta is coloured by the metric's direction only where it shows: "-0.000" is no regression."""
    from dmd2report.report.pages import _delta

    assert _delta("coverage", -0.0004) == ("-0.000", "") and _delta("coverage", 0.0004) == ("+0.000", "")
    assert _delta("fd", 0.0004)[1] == "" and _delta("coverage", 0.0) == ("+0.000", "")
    assert _delta("coverage", -0.0006) == ("-0.001", "worse") and _delta("fd", -0.0006) == ("-0.001", "better")
    assert _delta("coverage", float("nan")) == ("–", "")


def test_converted_images_are_counted_on_the_overview(data, tmp_path):
    from dmd2report.sources import CONVERSIONS

    render_site(replace(data, converted={"16-bit": 1200, "alpha": 3}), tmp_path / "s")
    html = (tmp_path / "s" / "index.html").read_text()
    assert "Converted images" in html and "1,200" in html
    assert html.count('<tr><td>') >= 2 and "value &gt;&gt; 8" in html and "alpha channel dropped" in html
    assert CONVERSIONS["16-bit"].replace(">", "&gt;") in html
    render_site(data, tmp_path / "none")
    assert "Converted images" not in (tmp_path / "none" / "index.html").read_text()
