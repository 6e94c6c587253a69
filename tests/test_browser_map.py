"""The map page in headless Chromium: the neighbour panel against the stored lists, variants drawn as
variants and the colour-by control, the two layers, controls that stay put and the view in the address.
Screenshots go to test-artifacts/."""

import re

import numpy as np
import pytest

from dmd2report.config import ReportConfig
from dmd2report.report import palette
from dmd2report.report.figures import step_colours
from dmd2report.report.render import render_site
from conftest import ARTIFACTS
from synthetic import synthetic_report_data
from test_browser_report import _client_point, _open

pytestmark = pytest.mark.browser
# Every Bokeh toolbar of the page whose tools did not all fit (their last ones folded into the "⋮" menu).
FOLDED_TOOLBARS = """(() => { const out = []; const walk = root => root.querySelectorAll('*').forEach(e => {
  if (e.shadowRoot) { if (e.shadowRoot.querySelector('.bk-tool-overflow')) out.push(e.className); walk(e.shadowRoot); } });
  walk(document); return out; })()"""
STYLES = """() => { const out = {}; for (const r of DMD2Site.resolve('map').pts) { const d = r.data_source.data;
  for (let i = 0; i < d.row.length; i++) out[d.row[i]] = [d.color[i], d.fa ? d.fa[i] : null, d.line ? d.line[i] : null]; }
  return out; }"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # 12 classes (the demo's count: ten colours, then two ringed), paths, covering counts past every cap.
    data = synthetic_report_data(500, 300, 12, seed=5, trajectories=True, variants_per_class=2)
    root = tmp_path_factory.mktemp("mapview") / "site"
    render_site(data, root)
    return root, data


def _ramp(t: float) -> str:
    """The map's colour for t in [0, 1] along palette.RAMP, as site.js computes it."""
    stops = [[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in palette.RAMP]
    x = min(1.0, max(0.0, t)) * (len(stops) - 1)
    i = min(len(stops) - 2, int(np.floor(x)))
    return "#" + "".join(f"{int(np.floor(a + (b - a) * (x - i) + 0.5)):02x}" for a, b in zip(stops[i], stops[i + 1]))


def _text(locator) -> str:
    return re.sub(r"\s+", " ", locator.inner_text())


def _ranges(page) -> list[float]:
    return page.evaluate("(() => { const F = DMD2Site.resolve('map').fig; return [F.x_range.start, F.x_range.end, F.y_range.start, F.y_range.end]; })()")


def _rows(locator) -> list[int]:
    return [int(r) for r in locator.evaluate_all("els => els.map(e => e.dataset.row)")]


# ---- 1. the neighbour panel ----

def test_neighbour_panel_shows_true_counts_and_the_stored_lists(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    count, ids, gen_i, gen_d = data.cover_count, data.points["sample_id"].to_numpy(), data.neighbours.gen_index, data.neighbours.gen_dist
    real = np.flatnonzero(data.points["set"] == "real")
    past_list = int(real[np.argmax(count[real])])                       # more than the stored list (cap 20) holds
    past_shown = int(real[(count[real] > 12) & (count[real] <= 20)][0])  # more than the panel shows
    few = [int(r) for r in real[(count[real] > 0) & (count[real] <= 3)][:2]]
    uncovered = [int(r) for r in real[count[real] == 0][:2]]
    assert count[past_list] > len(data.covered_by.row(past_list)) == 20
    panel = page.locator('[data-nbr-for="map"]')
    for row in [past_list, past_shown, *few, *uncovered]:
        page.evaluate("r => DMD2Site.showNeighbours('map', r)", row)
        cover = panel.locator(".cover")
        text, n = _text(cover), int(count[row])
        assert int(cover.get_attribute("data-count")) == n and bool(data.points["covered"][row]) == (n > 0)
        assert f"r = {data.cover_radius[row]:.3f}" in text
        listed = _rows(cover.locator(".nbr"))
        if n:
            assert f"covered by {n} class-conditioned sample" in text
            assert ("the nearest 12 shown" in text) == (n > 12)
            # The stored list, nearest first, no padding, no repeats, class-conditioned samples only.
            assert list(ids[listed]) == list(ids[data.covered_by.row(row)[:12]]) and len(set(listed)) == len(listed)
            assert (data.points["variant"].to_numpy()[listed] == "class").all()
            assert _text(cover.locator(".nbr").first) == f"d {gen_d[row, 0]:.3f}" and listed[0] == gen_i[row, 0]
        else:
            assert text.startswith("not covered") and listed == []
            assert f"the nearest is at d {gen_d[row, 0]:.3f}" in text
            near = panel.locator('[data-list="generated"] .nbr')
            assert _rows(near) == list(gen_i[row]) and [_text(x) for x in near.all()] == [f"d {v:.3f}" for v in gen_d[row]]
        page.screenshot(path=str(ARTIFACTS / f"map-panel-{'covered' if n else 'uncovered'}.png"))
    assert problems == []
    page.context.close()


# ---- 2. variants as variants, colour-by ----

def test_variants_are_drawn_as_variants_and_colour_by_works(site, browser):
    root, data = site
    P = data.points
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    style = page.evaluate("DMD2_DATA.style")
    styles = {int(k): v for k, v in page.evaluate(STYLES).items()}
    variant, cls = P["variant"].to_numpy(), P["class_id"].to_numpy()
    for row, (colour, alpha, line) in styles.items():
        if variant[row] == "real":
            assert colour == palette.REAL_COLOUR
        elif variant[row] == "class":        # by class, filled
            assert colour == style["classes"][str(cls[row])][0] and alpha > 0
        else:                                # not asked for a class: hollow, in the variant's colour
            assert colour == line == palette.VARIANT_COLOURS[variant[row]] and alpha == 0
    # Hover on a uniform sample names its conditioning and its seed's class, not a class it was asked for.
    uni = int(np.flatnonzero(variant == "uniform")[3])
    page.mouse.move(*_client_point(page, "map", uni))
    page.wait_for_selector("#dmd2-hover:not([hidden])", timeout=5000)
    card = page.inner_text("#dmd2-hover")
    if int(page.evaluate("Number(document.getElementById('dmd2-hover').dataset.row)")) == uni:
        assert "uniform label" in card and "seed of" in card and "\nclass\n" not in card
    # A class search marks its real and class-conditioned points; the others only when asked.
    hl = "DMD2Site.resolve('map').hl.data_source.data.x.length"
    page.fill('[data-search="map"]', "class 3")
    own = int(((cls == 3) & np.isin(variant, ["real", "class"])).sum())
    assert page.evaluate(hl) == own and f"{int(((cls == 3) & (variant == 'class')).sum())} generated" in _text(page.locator('[data-search-status="map"]'))
    page.check('[data-search-variants="map"]')
    assert page.evaluate(hl) == int((cls == 3).sum()) > own
    page.uncheck('[data-search-variants="map"]')
    page.fill('[data-search="map"]', "")
    page.screenshot(path=str(ARTIFACTS / "map-colour-class.png"))

    def colour_by(mode):
        page.select_option('[data-colour="map"]', mode)
        page.screenshot(path=str(ARTIFACTS / f"map-colour-{mode}.png"))
        return {int(k): v for k, v in page.evaluate(STYLES).items()}
    got = colour_by("variant")
    assert all(got[r][0] == (palette.REAL_COLOUR if variant[r] == "real" else palette.VARIANT_COLOURS[variant[r]]) for r in got)
    got = colour_by("trust")
    trust = P["trust"].to_numpy()
    assert all(got[r][0] == _ramp(1 - round(trust[r], 3)) for r in got)
    got = colour_by("covered")
    covered = P["covered"].to_numpy()
    for r, (colour, alpha, _) in got.items():
        if variant[r] == "real":
            assert colour == (palette.COVERED_COLOUR if covered[r] else palette.UNCOVERED_COLOUR)
        else:
            assert alpha <= 0.2 + 1e-6   # faint (float32 column)
    key = _text(page.locator('[data-key="map"]'))
    n_real = int((variant == "real").sum())
    assert f"covered ({int(covered[:n_real].sum()):,} real)" in key and f"not covered ({int((~covered[:n_real]).sum()):,} real)" in key
    got = colour_by("distance")
    gen = variant != "real"
    near = data.neighbours.real_dist[:, 0]
    lo, hi = np.percentile(near[gen], 5), np.percentile(near[gen], 95)
    assert style["dist"] == pytest.approx([lo, hi], rel=1e-6)
    assert all(got[r][0] == _ramp((round(float(near[r]), 4) - lo) / (hi - lo)) for r in np.flatnonzero(gen))
    assert problems == []
    page.context.close()
    # Class pages count the class-conditioned samples, and the other conditionings' apart.
    html = re.sub(r"\s+", " ", (root / "classes" / "class-3.html").read_text())
    n_cond, n_other = int(((cls == 3) & (variant == "class")).sum()), int(((cls == 3) & gen & (variant != "class")).sum())
    assert f'class-conditioned</span><span class="card-value">{n_cond}<' in html
    assert f'other conditionings, same seeds</span><span class="card-value">{n_other}<' in html


# ---- 3. two readable layers ----

def test_two_layers_read_in_dark_mode(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri(), scheme="dark")
    names = page.evaluate("DMD2Site.resolve('map').fig.renderers.map(r => r.name)")
    # Real density first, then real points, then the generated layers, labels above them.
    assert names.index("map:density:0") < names.index("map:pt:real") < names.index("map:pt:gen:0") < names.index("map:labels")
    page.locator('[data-opacity="real"]').fill("0.2")
    page.locator('[data-opacity="generated"]').fill("0.3")
    assert page.evaluate("DMD2Site.resolve('map').real[0].glyph.fill_alpha.value") == pytest.approx(0.2)
    assert page.evaluate("Bokeh.documents[0].get_model_by_name('map:density:0').global_alpha") == pytest.approx(0.4)
    styles = {int(k): v for k, v in page.evaluate(STYLES).items()}
    variant = data.points["variant"].to_numpy()
    assert {round(a, 3) for r, (_, a, _) in styles.items() if variant[r] == "class"} == {0.3}
    # One label per class, on its class's real points; twelve classes, twelve distinct styles, rings in dark mode.
    labels = page.evaluate("(() => { const d = Bokeh.documents[0].get_model_by_name('map:labels').data_source.data; "
                           "return [Array.from(d.x), Array.from(d.y), d.text]; })()")
    assert len(labels[2]) == 12
    for x, y, text in zip(*labels):
        c = int(text.split()[0])
        pts = data.points[(data.points["class_id"] == c) & (variant == "real")]
        assert pts["x"].min() <= x <= pts["x"].max() and pts["y"].min() <= y <= pts["y"].max(), text
    cls_style = page.evaluate("DMD2_DATA.style.classes")
    assert len({tuple(v) for v in cls_style.values()}) == 12 and sum(ring for _, ring in cls_style.values()) == 2
    ringed = [int(c) for c, (_, ring) in cls_style.items() if ring]
    cls = data.points["class_id"].to_numpy()
    assert all(line == "#f0f0f0" for r, (_, _, line) in styles.items() if variant[r] == "class" and cls[r] in ringed)
    # Paths are off at first.
    assert page.evaluate("DMD2Site.resolve('map').traj.seg.visible") is False
    assert not page.is_checked('[data-traj="paths"]')
    page.screenshot(path=str(ARTIFACTS / "map-dark.png"))
    assert problems == []
    page.context.close()


def _contrast(a: str, b: str) -> float:
    def lum(c):
        v = np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)]) / 255
        v = np.where(v <= 0.03928, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_step_and_class_colours_show_on_both_backgrounds():
    """The σ chips (the first was near-black, gone in dark mode) and the class colours keep a 1.5:1 contrast
    against the light and the dark page."""
    for colour in step_colours(4) + palette.CLASS_COLOURS + palette.RAMP:
        assert _contrast(colour, "#fbfbfc") >= 1.5 and _contrast(colour, "#14171c") >= 1.5, colour


# ---- 4. controls that stay put, the view in the address ----

def test_toolbars_are_complete_on_every_page_and_path(site, browser, tmp_path):
    root, data = site
    for f in ["map.html", "classes/class-2.html", "metrics.html", "variants.html", "atlas.html"]:
        page, problems, _ = _open(browser, (root / f).as_uri())
        assert page.evaluate(FOLDED_TOOLBARS) == [] and problems == [], f
        page.context.close()
    render_site(data, tmp_path / "one", ReportConfig(single_file=True))
    page, problems, _ = _open(browser, (tmp_path / "one" / "report.html").as_uri())
    for nav in ["map", "metrics", "classes", "map"]:   # Overview first, then Map: the path that folded the map's tools
        page.click(f'a[data-nav="{nav}"]')
        page.wait_for_function(f"!document.querySelector('[data-page-section=\"{nav}\"]').hidden")
        assert page.evaluate(FOLDED_TOOLBARS) == [], nav
    assert page.is_visible('[data-page-section="map"] button[data-reset]')
    page.screenshot(path=str(ARTIFACTS / "single-file-map-toolbar.png"))
    assert problems == []
    page.context.close()


def test_side_panels_stay_in_view_and_selection_marks_each_set(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    real = np.flatnonzero(data.points["set"] == "real")
    page.evaluate("r => DMD2Site.showNeighbours('map', r)", int(real[np.argmax(data.cover_count[real])]))
    page.evaluate("""() => DMD2Site.resolve('map').pts.forEach(r =>
        { r.data_source.selected.indices = [...Array(Math.min(25, r.data_source.data.x.length)).keys()]; })""")
    sel = page.locator('[data-sel-for="map"]')
    sel.locator("button[data-csv]").wait_for(timeout=5000)
    for h in ('[data-nbr-for="map"] h2', '[data-sel-for="map"] h2', '[data-key="map"]', "button[data-reset]"):
        box = page.locator(h).bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 900, h
    thumbs = sel.locator(".thumb-grid .thumb")
    rows = _rows(thumbs)
    gen = data.points["set"].to_numpy()[rows] == "generated"
    assert sel.locator(".thumb.is-real").count() == int((~gen).sum()) and sel.locator(".thumb.is-gen").count() == int(gen.sum())
    assert "dashed = real, solid = generated" in sel.inner_text() and gen.any() and (~gen).any()
    page.screenshot(path=str(ARTIFACTS / "map-panels-in-view.png"))
    assert problems == []
    page.context.close()


def test_the_address_reproduces_the_view(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    assert page.evaluate("location.hash") == ""
    page.select_option('[data-colour="map"]', "trust")
    page.fill('[data-search="map"]', "class 3")
    page.press('[data-search="map"]', "Enter")
    box = page.locator('[data-fig="map"] .plot-box.tall').bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)                       # a zoom: the plot's RangesUpdate writes #view=
    page.wait_for_function("location.hash.includes('view=')", timeout=5000)
    row = int(np.flatnonzero((data.points["class_id"] == 3) & (data.points["set"] == "real"))[0])
    page.evaluate("r => DMD2Site.showNeighbours('map', r)", row)
    h = page.evaluate("Object.fromEntries(new URLSearchParams(location.hash.slice(1)))")
    assert h["colour"] == "trust" and h["class"] == "class 3" and h["point"] == data.points["sample_id"][row]
    ranges = _ranges(page)
    assert [float(v) for v in h["view"].split(",")] == pytest.approx(ranges, rel=1e-4)
    url = page.url
    page.context.close()

    again, problems2, _ = _open(browser, url)        # the link reopens the same view
    assert again.input_value('[data-colour="map"]') == "trust" and again.input_value('[data-search="map"]') == "class 3"
    assert _ranges(again) \
        == pytest.approx(ranges, rel=1e-4)
    assert again.get_attribute('[data-nbr-for="map"]', "data-row") == str(row)
    own = int(((data.points["class_id"] == 3) & data.points["variant"].isin(["real", "class"])).sum())
    assert again.evaluate("DMD2Site.resolve('map').hl.data_source.data.x.length") == own
    again.screenshot(path=str(ARTIFACTS / "map-from-link.png"))
    # Reset: the whole map, no search, no point; the address keeps only the colour.
    again.click("button[data-reset]")
    h = again.evaluate("Object.fromEntries(new URLSearchParams(location.hash.slice(1)))")
    assert h == {"colour": "trust"}
    x = data.points["x"]
    x0, x1 = _ranges(again)[:2]
    assert x0 <= x.min() and x1 >= x.max()
    assert problems == [] and problems2 == []
    again.context.close()


def test_search_takes_a_sample_id(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    row = int(np.flatnonzero(data.points["variant"] == "blend")[1])
    sid = data.points["sample_id"][row]
    page.fill('[data-search="map"]', sid)
    page.press('[data-search="map"]', "Enter")
    assert page.get_attribute('[data-nbr-for="map"]', "data-row") == str(row)
    assert f"sample {sid} (generated · blend)" in page.inner_text('[data-search-status="map"]')
    assert page.evaluate("DMD2Site.resolve('map').hl.data_source.data.x.length") == 1
    x0, x1, y0, y1 = _ranges(page)
    px, py = data.points["x"][row], data.points["y"][row]
    assert x0 < px < x1 and y0 < py < y1 and (x1 - x0) < 0.5 * (data.points["x"].max() - data.points["x"].min())
    page.fill('[data-search="map"]', "no-such-sample")
    assert "no class or sample id matches" in page.inner_text('[data-search-status="map"]')
    page.screenshot(path=str(ARTIFACTS / "map-sample-id.png"))
    assert problems == []
    page.context.close()
