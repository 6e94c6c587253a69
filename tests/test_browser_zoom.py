"""Detail on zoom: a capped site's tiles hold every point once, in a quadtree of bounded tiles; zoomed in, the map
(from file://, in Chromium) loads the tiles of the view as scripts, draws more points, filters them as the drawn
ones, names them on hover and redraws the density images over the view; the filters go into the address and come
back from it; the single-file report has no tiles and says so."""

import base64
import json
import re
import zlib

import numpy as np
import pytest

from dmd2report.config import ReportConfig
from dmd2report.report import tiles
from dmd2report.report.figures import FADED_ALPHA, SELECTED_ALPHA
from dmd2report.report.render import render_site
from dmd2report.report.view import site_view
from synthetic import synthetic_report_data
from test_browser_report import _open

CAP = 400


@pytest.fixture(scope="module")
def data():
    return synthetic_report_data(2500, 1200, 8, seed=4, variants_per_class=2)


@pytest.fixture(scope="module")
def site(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoom") / "site"
    render_site(data, root, ReportConfig(max_points=CAP))
    return root


def _read_tile(path):
    text = path.read_text()
    meta = json.loads(text[text.index("(") + 1:text.rindex(")")])
    raw = zlib.decompress(base64.b64decode(meta["data"]))
    cols = {name: np.frombuffer(raw, np.dtype(t), n, at) for name, t, at, n in meta["cols"]}
    ids = [meta["prefix"] + s for s in raw[meta["idAt"]:].decode().split("\n")]
    return meta, cols, ids


def test_tiles_hold_every_point_once_in_bounded_tiles(data, site):
    index = json.loads(re.search(r"window.DMD2_DATA=(.*);", (site / "assets" / "data.js").read_text()).group(1))["tiles"]
    P = data.points
    seen, drawn_ids = [], set(P["sample_id"].iloc[site_view(data, CAP).rows[site_view(data, CAP).drawn]])
    x0, y0, x1, y1 = index["extent"]
    levels = {}
    for key, (n, sub) in index["tiles"].items():
        z, rest = key.split("/")
        meta, cols, ids = _read_tile(site / "tiles" / z / f"{rest}.js")
        assert meta["n"] == n == len(ids) and meta["sub"] == sub >= n
        if int(z) < index["levels"] - 1:
            assert n <= index["cap"]
        bx0, by0, bx1, by1 = meta["box"]
        side = 2 ** int(z)
        assert np.isclose(bx1 - bx0, (x1 - x0) / side) and np.isclose(by1 - by0, (y1 - y0) / side)
        rows = P.set_index("sample_id").loc[ids]
        # coordinates within a tile's box to 1/65534 of it; codes and fields as the data holds them
        assert np.allclose(bx0 + cols["x"] / 65534 * (bx1 - bx0), rows["x"], atol=(bx1 - bx0) / 60000)
        assert (cols["cls"] == rows["class_id"].to_numpy()).all()
        assert [bool(d) for d in cols["drawn"]] == [i in drawn_ids for i in ids]
        lo, hi = index["fields"]["trust"]
        assert np.allclose(lo + cols["trust"] / 65534 * (hi - lo), rows["trust"], atol=(hi - lo) / 60000)
        levels[int(z)] = levels.get(int(z), 0) + n
        seen += ids
    assert sorted(seen) == sorted(P["sample_id"])            # every point, once
    assert len(levels) >= 2 and levels[0] == index["cap"]     # a quadtree: the root full, the rest deeper
    # The deepest tiles of each region count its points at that level and below.
    assert sum(sub for k, (n, sub) in index["tiles"].items() if k.startswith("1/")) == len(P) - levels[0]


def test_tile_levels_fill_shallow_levels_first():
    rng = np.random.default_rng(0)
    u, v = rng.random(10_000), rng.random(10_000)
    u[:6000], v[:6000] = u[:6000] * 0.1, v[:6000] * 0.1      # a dense corner
    level = tiles.tile_levels(u, v, rng.random(10_000), cap=500)
    assert (level == 0).sum() == 500 and (level == 1).sum() == 2000
    assert level[:6000].mean() > level[6000:].mean()          # the dense corner goes deeper
    for z in range(int(level.max())):                         # every tile of a level but the deepest holds at most cap
        side = 2 ** z
        t = (v[level == z] * side).astype(int) * side + (u[level == z] * side).astype(int)
        assert np.bincount(t).max() <= 500


def _zoom(page, frac, centre=None):
    """Zoom the map to `frac` of its whole extent around `centre` (map units) and wait for the tiles of that view."""
    page.evaluate("""([frac, centre]) => {
        const I = DMD2_DATA.tiles, [x0, y0, x1, y1] = I.extent;
        const cx = centre ? centre[0] : (x0 + x1) / 2, cy = centre ? centre[1] : (y0 + y1) / 2;
        const wx = (x1 - x0) * frac / 2, wy = (y1 - y0) * frac / 2;
        window.v0 = DMD2Site.tiles.version;
        DMD2Site.zoomTo('map', cx - wx, cx + wx, cy - wy, cy + wy);
        DMD2Site.rangesChanged('map');   // what a wheel zoom or a pan fires
    }""", [frac, centre])
    page.wait_for_function("DMD2Site.tiles.version > window.v0 && !DMD2Site.tiles.pending", timeout=15000)


@pytest.mark.browser
def test_zoom_loads_tiles_and_draws_their_points_filtered(data, site, browser):
    page, problems, requests = _open(browser, (site / "map.html").as_uri())
    drawn = page.evaluate("DMD2Site.pointCount('map')")
    assert drawn == CAP and page.evaluate("DMD2Site.detailCount('map')") == 0
    assert page.evaluate("document.querySelectorAll('script[data-tile]').length") == 0
    P = data.points
    real = P[P["set"] == "real"]
    centre = [float(real["x"].median()), float(real["y"].median())]
    _zoom(page, 0.25, centre)
    scripts = page.evaluate("Array.from(document.querySelectorAll('script[data-tile]'), s => s.getAttribute('src'))")
    assert scripts and all(re.fullmatch(r"tiles/\d+/\d+_\d+\.js", s) for s in scripts)
    assert all(r.startswith("file://") for r in requests)
    shown = page.evaluate("DMD2Site.detailPoints('map')")
    assert len(shown) > 0 and page.evaluate("DMD2Site.detailCount('map')") == len(shown)
    ids = set(P["sample_id"])
    assert {s["id"] for s in shown} <= ids and not {s["id"] for s in shown} & set(page.evaluate("DMD2_DATA.points.id.filter((s, j) => DMD2_DATA.points.drawn[j])"))
    status = page.locator('[data-detail-status="map"]')
    assert status.get_attribute("data-count") == str(len(shown)) and "more points of this view" in status.inner_text()
    # The density image of the real points now spans the view at the view's resolution.
    dens = page.evaluate("""(() => { const m = DMD2Site.resolve('map').fig.renderers.find(r => r.name === 'map:density:0'),
        X = DMD2Site.resolve('map').fig.x_range, Y = DMD2Site.resolve('map').fig.y_range;
        return [m.glyph.x.value, m.glyph.dw.value, m.glyph.y.value, m.glyph.dh.value, m.data_source.data.image[0].shape,
                X.start, X.end, Y.start, Y.end]; })()""")
    gx, gw, gy, gh, shape, xs, xe, ys, ye = dens
    assert gx == pytest.approx(xs) and gx + gw == pytest.approx(xe) and gy == pytest.approx(ys) and gy + gh == pytest.approx(ye)
    assert shape == [256, 256]

    # Filters apply to the tile points: only real points within a distance to the nearest real.
    page.click('[data-filter-for="map"] summary')
    for box in page.locator('[data-cat="variant"] input').all():
        label = box.evaluate("b => b.parentNode.textContent.trim()")
        if label != "real":
            box.uncheck()
    page.fill('input[data-range="trust"][data-end="0"]', "0.8")
    page.wait_for_function("!DMD2Site.tiles.pending && DMD2Site.detailPoints('map').length > 0")
    page.wait_for_timeout(300)
    filtered = page.evaluate("DMD2Site.detailPoints('map').filter(p => p.visible)")
    by_id = P.set_index("sample_id")
    assert filtered and all(p["variant"] == "real" and p["trust"] >= 0.8 - 1e-3 for p in filtered)
    truth = by_id.loc[[p["id"] for p in filtered]]
    assert (truth["set"] == "real").all() and (truth["trust"] >= 0.8 - 1e-3).all()
    # Every undrawn real point of the view with trust >= 0.8 that a loaded tile holds is drawn.
    assert len(filtered) == page.evaluate("""(() => { const F = DMD2Site.resolve('map').fig;
        const [x0, y0, x1, y1] = [F.x_range.start, F.y_range.start, F.x_range.end, F.y_range.end];
        const mx = (x1 - x0) / 4, my = (y1 - y0) / 4; let n = 0;
        for (const k of DMD2Site.tiles.want) { const T = DMD2Site.tiles.cache.get(k);
          for (let j = 0; j < T.n; j++) if (!T.drawn[j] && !T.gen[j] && T.trust[j] >= 0.8 && T.x[j] >= x0 - mx && T.x[j] <= x1 + mx &&
            T.y[j] >= y0 - my && T.y[j] <= y1 + my) n++; }
        return n; })()""")
    # The filter is in the address, and a fresh page opened on it filters the same way.
    h = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('filter')")
    assert "trust:0.8:" in h and "variant=0" in h
    url = page.url
    page.context.close()
    page, problems2, _ = _open(browser, url)
    assert page.locator('input[data-range="trust"][data-end="0"]').input_value() == "0.8"
    assert page.evaluate("Array.from(document.querySelectorAll('[data-cat=\"variant\"] input'), b => b.checked).filter(Boolean).length") == 1
    page.wait_for_function("DMD2Site.tiles.version > 0 && !DMD2Site.tiles.pending && DMD2Site.detailCount('map') > 0", timeout=15000)
    again = page.evaluate("DMD2Site.detailPoints('map').filter(p => p.visible)")
    assert sorted(p["id"] for p in again) == sorted(p["id"] for p in filtered)
    assert page.evaluate("DMD2Site.resolve('map').pts.filter(r => r.visible).length") >= 1
    # Zoomed out again: no detail, the rendered density images back.
    page.evaluate("window.v0 = DMD2Site.tiles.version; DMD2Site.reset('map')")
    page.evaluate("DMD2Site.rangesChanged('map')")
    page.wait_for_function("DMD2Site.tiles.version > window.v0 && !DMD2Site.tiles.pending", timeout=15000)
    assert page.evaluate("DMD2Site.detailCount('map')") == 0
    assert problems == [] and problems2 == []
    page.context.close()


@pytest.mark.browser
def test_hover_names_a_tile_point(data, site, browser):
    page, problems, _ = _open(browser, (site / "map.html").as_uri())
    page.select_option('[data-colour="map"]', "variant")
    P = data.points
    real = P[P["set"] == "real"]
    _zoom(page, 0.1, [float(real["x"].median()), float(real["y"].median())])
    # A tile point with no drawn point near it: hover shows its id, set and class, and no image.
    hit = page.evaluate("""(() => { const f = DMD2Site.resolve('map'), r = f.fig.renderers.find(r => r.name === 'map:detail:real'),
        d = r.data_source.data, F = f.fig, view = Bokeh.index[F.id], frame = view.frame.bbox, box = view.el.getBoundingClientRect();
        for (let j = 0; j < d.x.length; j++) {
          if (DMD2Site.resolve('map').pts.some(p => { const q = p.data_source.data;
                return q.x.some((x, i) => Math.hypot((x - d.x[j]) / (F.x_range.end - F.x_range.start) * frame.width,
                                                     (q.y[i] - d.y[j]) / (F.y_range.end - F.y_range.start) * frame.height) < 20); })) continue;
          const sx = frame.x + (d.x[j] - F.x_range.start) / (F.x_range.end - F.x_range.start) * frame.width;
          const sy = frame.y + (F.y_range.end - d.y[j]) / (F.y_range.end - F.y_range.start) * frame.height;
          if (sx < frame.x + 20 || sx > frame.x + frame.width - 20 || sy < frame.y + 20 || sy > frame.y + frame.height - 20) continue;
          const [T, i] = r._refs[j];
          return [box.left + sx, box.top + sy, T.ids[i]];
        }
        return null; })()""")
    assert hit is not None
    page.mouse.move(hit[0], hit[1])
    page.wait_for_function("document.getElementById('dmd2-hover') && !document.getElementById('dmd2-hover').hidden")
    card = page.locator("#dmd2-hover")
    assert card.get_attribute("data-tile") == hit[2] and hit[2] in card.inner_text() and "real" in card.inner_text()
    assert "no image" in card.inner_text()
    assert problems == []
    page.context.close()


@pytest.mark.browser
def test_single_file_has_no_tiles_and_says_so(data, tmp_path, browser):
    root = tmp_path / "one"
    render_site(data, root, ReportConfig(max_points=CAP, single_file=True))
    assert not (root / "tiles").exists() and sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["report.html"]
    page, problems, _ = _open(browser, (root / "report.html").as_uri() + "#page=map")
    assert page.evaluate("DMD2_DATA.tiles") is None
    assert "carries only this sample" in page.locator('[data-page-section="map"] .point-note').inner_text()
    assert problems == []
    page.context.close()


# A full paint of the map (BokehJS's own, or with site.js's one copy per run of WebGL layers): the number of
# WebGL-canvas copies it made, and its pixels kept in the page (as seen: colour times alpha, since getImageData
# un-premultiplies and a nearly clear pixel's colour is noise) for _DIFF.
_PAINT = """(mode) => {
    const v = Bokeh.index[DMD2Site.resolve('map').fig.id], cv = v.canvas_view;
    if (mode === 'bokeh') delete v._paint_levels;                 // the prototype's: a copy after every WebGL renderer
    let copies = 0;
    const blit = cv.blit_webgl;
    cv.blit_webgl = function (ctx) { copies++; return blit.call(this, ctx); };
    v._invalidate_all = true;
    v._actual_paint();
    cv.blit_webgl = blit;
    const c = cv.primary.canvas, px = cv.primary.ctx.getImageData(0, 0, c.width, c.height).data, seen = new Float32Array(px.length);
    for (let i = 0; i < px.length; i += 4) {
      for (let k = 0; k < 3; k++) seen[i + k] = px[i + k] * px[i + 3] / 255;
      seen[i + 3] = px[i + 3];
    }
    (window.__painted = window.__painted || {})[mode] = seen;
    return { copies: copies, webgl: v.computed_renderer_views.filter(r => r.has_webgl).length };
}"""
_DIFF = """() => { const a = window.__painted.batched, b = window.__painted.bokeh;
    let max = 0, over1 = 0, drawn = 0;
    for (let i = 0; i < a.length; i++) { const d = Math.abs(a[i] - b[i]); if (d > max) max = d; if (d > 1) over1++; }
    for (let i = 3; i < b.length; i += 4) if (b[i] > 0) drawn++;
    return { max: max, over1: over1 / a.length, drawn: drawn / (b.length / 4) }; }"""


@pytest.mark.browser
def test_webgl_layers_are_copied_once_per_run_and_look_the_same(data, site, browser):
    page, problems, _ = _open(browser, (site / "map.html").as_uri())
    P = data.points
    real = P[P["set"] == "real"]
    _zoom(page, 0.4, [float(real["x"].median()), float(real["y"].median())])   # detail layers and density filled
    page.select_option('[data-colour="map"]', "variant")
    page.evaluate("DMD2Site.setLayers('map', 'both')")
    page.wait_for_function("!DMD2Site.lod.moving.map && !DMD2Site.tiles.pending")   # every point drawn, no tile to come
    batched, bokeh = page.evaluate(_PAINT, "batched"), page.evaluate(_PAINT, "bokeh")
    # BokehJS copies its WebGL canvas onto the page after each of the map's WebGL layers (density images, drawn
    # points, detail layers, highlight); site.js copies once per run of them (the class labels, on the 2-D canvas,
    # split the glyph level in two; an empty highlight layer needs none).
    assert bokeh["webgl"] >= 10 and bokeh["copies"] >= bokeh["webgl"]
    assert batched["copies"] <= 2
    diff = page.evaluate(_DIFF)
    assert diff["drawn"] > 0.05                                          # something is drawn
    # The same picture: compositing the layers in WebGL first rounds differently by a few levels at most (a layer
    # missing or out of order differs by tens to hundreds).
    assert diff["max"] <= 4 and diff["over1"] < 0.01
    assert problems == []
    page.context.close()


def _drawn_rows(page):
    """Rows of the drawn points the map paints now: while it moves slowly, those of its "lod" layer, painted in place
    of the point layers; else each visible point layer's passing its BooleanFilter (None: every point)."""
    return page.evaluate("""(() => { const f = DMD2Site.resolve('map');
        if (Bokeh.index[f.fig.id].dmd2Skip) return Array.from(f.lod.data_source.data.row).filter(j => j >= 0);
        return f.pts.filter(r => r.visible).flatMap(r => {
            const rows = r.data_source.data.row, b = r.view.filter.booleans;
            return Array.from(rows).filter((j, k) => b === null || b[k]); }); })()""")


def _painted(page):
    """After the next frame: the markers the map's last paint sent to WebGL, and the "lod" layer's columns."""
    return page.evaluate("""new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => {
        const lod = DMD2Site.resolve('map').lod.data_source.data;
        done([DMD2Site.lod.painted.map, Object.fromEntries(Object.entries(lod).map(([k, v]) => [k, Array.from(v)]))]); })))""")


def _move(page, frac):
    """The page sets the view (as a search, a link or a reset does): `frac` of the map's extent around its centre."""
    page.evaluate("""(frac) => { const I = DMD2_DATA.tiles, [x0, y0, x1, y1] = I.extent, cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
        DMD2Site.zoomTo('map', cx - (x1 - x0) * frac / 2, cx + (x1 - x0) * frac / 2, cy - (y1 - y0) * frac / 2, cy + (y1 - y0) * frac / 2); }""", frac)


def _wheel(page, steps):
    """A person's mouse-wheel zoom at the map's centre (BokehJS's wheel-zoom tool): `steps` notches, in if negative."""
    x, y = page.evaluate("""(() => { const v = Bokeh.index[DMD2Site.resolve('map').fig.id], fr = v.frame.bbox, b = v.el.getBoundingClientRect();
        return [b.left + fr.x + fr.width / 2, b.top + fr.y + fr.height / 2]; })()""")
    page.mouse.move(x, y)
    for _ in range(abs(steps)):
        page.mouse.wheel(0, 120 if steps > 0 else -120)


@pytest.mark.browser
def test_map_draws_a_sample_while_moving_and_every_point_when_still(site, browser):
    page, problems, _ = _open(browser, (site / "map.html").as_uri())
    every = sorted(_drawn_rows(page))
    full_ms = page.evaluate("DMD2Site.lod.fullMs.map")
    assert full_ms > 0                                                    # the full paint was timed
    slow = "DMD2Site.lod.budgetMs = DMD2Site.lod.fullMs.map / 4"
    # A fast full paint (hardware WebGL): a person's zoom leaves nothing out.
    page.evaluate("DMD2Site.lod.budgetMs = DMD2Site.lod.fullMs.map * 4")
    _wheel(page, -1)
    assert page.evaluate("DMD2Site.lod.moving.map") and sorted(_drawn_rows(page)) == every
    page.wait_for_function("!DMD2Site.lod.moving.map")
    # A slow one (software WebGL): while a person zooms, a sample of at most budget / paint time of the points; once
    # the view is still for the figure's lod_timeout, every point again.
    page.evaluate(slow)
    frac = page.evaluate("DMD2Site.lod.budgetMs / DMD2Site.lod.fullMs.map")
    _wheel(page, 1)
    moving = sorted(_drawn_rows(page))
    # (At most the first estimate: a sampled paint slower than the budget shrinks the sample further.)
    assert set(moving) < set(every) and 0 < len(moving) <= (frac + 0.1) * len(every)
    # The sample is all the paint sends to WebGL (the point layers, skipped, cost nothing), each point in its layer's
    # marker and colours.
    painted, lod = _painted(page)
    assert page.evaluate("DMD2Site.lod.moving.map") and painted == len(lod["x"]) < len(every) / 2
    styles = page.evaluate("""DMD2Site.resolve('map').pts.filter(r => r.visible).map(r => [r.name, r.glyph.marker.value,
        Array.from(r.data_source.data.row), Array.from(r.data_source.data.color)])""")
    style_of = {j: (layer, m, c) for layer, m, rows, colours in styles for j, c in zip(rows, colours)}
    assert all(style_of[j][1:] == (m, c) for j, m, c in zip(lod["row"], lod["marker"], lod["color"]) if j >= 0)
    assert len({style_of[j][0] for j in lod["row"] if j >= 0}) == len(styles) >= 2    # from every layer shown
    page.wait_for_function("!DMD2Site.lod.moving.map", timeout=5000)
    assert sorted(_drawn_rows(page)) == every
    painted, lod = _painted(page)
    assert painted >= len(every) and lod["x"] == []                       # still: every point, no sample layer
    page.evaluate(slow)
    _wheel(page, -1)
    again = sorted(_drawn_rows(page))
    # The same points each time, by row: of two samples, the smaller is within the larger (no flicker between moves).
    small, large = sorted([set(again), set(moving)], key=len)
    assert small and small <= large
    page.wait_for_function("!DMD2Site.lod.moving.map", timeout=5000)
    # A view the page sets (a search, a link, a reset) is drawn whole, however slow.
    page.evaluate(slow)
    _move(page, 1.2)
    assert page.evaluate("DMD2Site.lod.moving.map") and sorted(_drawn_rows(page)) == every
    page.wait_for_function("!DMD2Site.lod.moving.map", timeout=5000)
    # Filters hold while moving and after: the sample is of the points passing them, and they pass again once still.
    page.click('[data-filter-for="map"] summary')
    page.fill('input[data-range="trust"][data-end="0"]', "0.8")
    page.wait_for_function("DMD2Site.resolve('map').pts.some(r => r.view.filter.booleans !== null)")
    passing = sorted(_drawn_rows(page))
    assert 0 < len(passing) < len(every)
    page.evaluate(slow)
    _wheel(page, 1)
    assert set(_drawn_rows(page)) < set(passing)
    page.wait_for_function("!DMD2Site.lod.moving.map", timeout=5000)
    assert sorted(_drawn_rows(page)) == passing
    # A selection drawn stays drawn while moving: the selected points opaque, the rest faded.
    page.evaluate("DMD2Site.resolve('map').pts[0].data_source.selected.indices = Array.from({length: 40}, (_, k) => k)")
    selected = set(page.evaluate("Array.from(DMD2Site.resolve('map').pts[0].data_source.data.row.slice(0, 40))"))
    page.evaluate(slow)
    _wheel(page, -1)
    _, lod = _painted(page)
    alpha = {j: a for j, a in zip(lod["row"], lod["fa"]) if j >= 0}
    assert any(j in selected for j in alpha) and any(j not in selected for j in alpha)
    assert all(a == (SELECTED_ALPHA if j in selected else FADED_ALPHA) for j, a in alpha.items())
    page.wait_for_function("!DMD2Site.lod.moving.map", timeout=5000)
    assert problems == []
    page.context.close()
