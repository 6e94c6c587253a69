"""The rendered site in headless Chromium: loads offline, and the map's interactions work."""

import os
from pathlib import Path

import pytest

from conftest import ARTIFACTS, CHROMIUM   # and the `browser` fixture
from dmd2report.config import ReportConfig
from dmd2report.report.render import render_site
from synthetic import synthetic_report_data

pytestmark = pytest.mark.browser

HOSTILE = '<script>alert(1)</script>'

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser tests need Debian's Chromium",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = synthetic_report_data(400, 200, 6, seed=1, class_names={2: HOSTILE})
    data.points.loc[0, "source"] = 'data/"quoted" it\'s/</script>.JPEG'
    root = tmp_path_factory.mktemp("site") / "site"
    render_site(data, root)
    return root, data


def _open(browser, url, scheme="light"):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme=scheme, accept_downloads=True)
    page = ctx.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    return page, problems, requests


def _client_point(page, fig, row):
    """Viewport coordinates of point `row` of figure `fig` (from its ranges and frame)."""
    return page.evaluate("""([fig, row]) => {
        const f = DMD2Site.resolve(fig), P = DMD2_DATA.points, F = f.fig;
        const view = Bokeh.index[F.id];
        const frame = view.frame.bbox, box = view.el.getBoundingClientRect();
        const sx = frame.x + (P.x[row] - F.x_range.start) / (F.x_range.end - F.x_range.start) * frame.width;
        const sy = frame.y + (F.y_range.end - P.y[row]) / (F.y_range.end - F.y_range.start) * frame.height;
        return [box.left + sx, box.top + sy];
    }""", [fig, row])


@pytest.mark.parametrize("page_file", ["index.html", "map.html", "variants.html", "classes.html", "classes/class-2.html",
                                       "metrics.html", "atlas.html"])
def test_page_loads_offline_without_errors(site, browser, page_file):
    root, _ = site
    page, problems, requests = _open(browser, (root / page_file).as_uri(), scheme="dark" if "class-" in page_file else "light")
    assert problems == []
    assert [u for u in requests if not u.startswith("file://")] == []
    # The hostile class name never became a script element (and no alert dialog fired: see _open).
    assert page.evaluate("Array.from(document.scripts).filter(s => s.textContent.trim() === 'alert(1)').length") == 0
    page.screenshot(path=str(ARTIFACTS / f"{page_file.replace('/', '_')}.png"), full_page=True)
    page.context.close()


def test_map_interactions(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    assert page.evaluate("DMD2Site.pointCount('map')") == len(data.points)
    assert page.evaluate("DMD2Site.resolve('map').fig.output_backend") == "webgl"

    # Hover: the one nearest point's thumbnail, id and source appear in the card.
    gen_row = int(data.points.index[data.points["set"] == "generated"][5])
    x, y = _client_point(page, "map", gen_row)
    page.mouse.move(x, y)
    page.wait_for_selector("#dmd2-hover:not([hidden]) .thumb", timeout=5000)
    assert page.evaluate("Number(document.getElementById('dmd2-hover').dataset.row)") == gen_row
    assert data.points["sample_id"][gen_row] in page.inner_text("#dmd2-hover")
    assert f"map trust\n{data.points['trust'][gen_row]:.2f}" in page.inner_text("#dmd2-hover")
    page.screenshot(path=str(ARTIFACTS / "map-hover.png"))

    # Click: the neighbour panel lists k real and k generated neighbours with distances.
    page.mouse.click(x, y)
    panel = page.locator('[data-nbr-for="map"]')
    panel.locator(".nbr").first.wait_for(timeout=5000)
    k = data.neighbours.real_index.shape[1]
    assert panel.locator(".nbr").count() == 2 * k
    assert f"{data.neighbours.real_dist[gen_row, 0]:.3f}" in panel.inner_text()
    page.screenshot(path=str(ARTIFACTS / "map-neighbours.png"))

    # A real point says whether it is covered, and by which generated samples.
    real_row = int(data.covered_by.nonempty()[0])
    page.evaluate("r => DMD2Site.showNeighbours('map', r)", real_row)
    assert "covered by" in panel.inner_text()
    assert panel.locator(".nbr").count() == 2 * k + min(12, len(data.covered_by.row(real_row)))

    # The switch hides the real layer (and hover then skips real points).
    page.click('.switch label:has(input[value="generated"])')
    assert page.evaluate("DMD2Site.resolve('map').real.every(r => !r.visible)")
    assert page.evaluate("DMD2Site.resolve('map').gens.every(r => r.visible)")
    page.screenshot(path=str(ARTIFACTS / "map-generated-only.png"))
    page.click('.switch label:has(input[value="both"])')
    assert page.evaluate("DMD2Site.resolve('map').real.every(r => r.visible)")

    # Search by name highlights the class's real points and the samples conditioned on it.
    page.fill('[data-search="map"]', "class 3")
    n3 = int(((data.points["class_id"] == 3) & data.points["variant"].isin(["real", "class"])).sum())
    assert page.evaluate("DMD2Site.resolve('map').hl.data_source.data.x.length") == n3

    # Selection: select every generated point of one renderer, get a grid and a CSV of their ids.
    page.evaluate("""() => { const r = DMD2Site.resolve('map').gens[0];
        r.data_source.selected.indices = [...Array(r.data_source.data.x.length).keys()]; }""")
    sel = page.locator('[data-sel-for="map"]')
    sel.locator("button[data-csv]").wait_for(timeout=5000)
    n_sel = page.evaluate("DMD2Site.resolve('map').gens[0].data_source.data.x.length")
    assert sel.locator(".thumb").count() == min(n_sel, 120)
    with page.expect_download() as dl:
        sel.locator("button[data-csv]").click()
    lines = Path(dl.value.path()).read_text().splitlines()
    assert lines[0].startswith("sample_id,") and len(lines) == n_sel + 1
    assert all(line.split(",")[0] in set(data.points["sample_id"]) for line in lines[1:])
    assert problems == []
    page.context.close()


def test_class_hash_opens_map_on_class(site, browser):
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri() + "#class=2")
    in_class = (data.points["class_id"] == 2) & data.points["variant"].isin(["real", "class"])
    assert page.evaluate("DMD2Site.resolve('map').hl.data_source.data.x.length") == int(in_class.sum())
    assert page.input_value('[data-search="map"]') == "2"
    # The view zooms onto the class (its extent plus a quarter each side), and stays there after the first paint.
    xs = data.points["x"][in_class]
    page.wait_for_timeout(300)
    x0, x1 = page.evaluate("[DMD2Site.resolve('map').fig.x_range.start, DMD2Site.resolve('map').fig.x_range.end]")
    assert x0 == pytest.approx(xs.min() - 0.25 * (xs.max() - xs.min()), abs=1e-3)
    assert x1 == pytest.approx(xs.max() + 0.25 * (xs.max() - xs.min()), abs=1e-3)
    assert HOSTILE in page.inner_text('[data-search-status="map"]')   # shown as text, not run
    assert problems == []
    page.screenshot(path=str(ARTIFACTS / "map-class-hash.png"))
    page.context.close()


def test_single_file_works_offline(site, browser, tmp_path):
    _, data = site
    render_site(data, tmp_path / "one", ReportConfig(single_file=True))
    page, problems, requests = _open(browser, (tmp_path / "one" / "report.html").as_uri() + "#class=2")
    assert page.is_visible('[data-page-section="map"]') and not page.is_visible('[data-page-section="index"]')
    assert page.evaluate("DMD2Site.pointCount('map')") == len(data.points)
    assert [u for u in requests if not u.startswith(("file://", "data:", "blob:"))] == []
    page.click('a[data-nav="metrics"]')
    page.wait_for_function("document.querySelector('[data-page-section=\"metrics\"]').hidden === false")
    assert problems == []
    page.screenshot(path=str(ARTIFACTS / "single-file-metrics.png"))
    page.context.close()


def _client_traj_step(page, row):
    """Viewport coordinates of trajectory step `row` (a row of DMD2_DATA.traj.steps) on the map."""
    return page.evaluate("""row => {
        const F = DMD2Site.resolve('map').fig, T = DMD2_DATA.traj.steps, view = Bokeh.index[F.id];
        const frame = view.frame.bbox, box = view.el.getBoundingClientRect();
        return [box.left + frame.x + (T.x[row] - F.x_range.start) / (F.x_range.end - F.x_range.start) * frame.width,
                box.top + frame.y + (F.y_range.end - T.y[row]) / (F.y_range.end - F.y_range.start) * frame.height];
    }""", row)


def test_trajectory_layer(browser, tmp_path):
    import numpy as np

    data = synthetic_report_data(300, 120, 5, seed=2, trajectories=True)
    render_site(data, tmp_path / "site")
    traj = data.trajectories
    shown = traj.steps[traj.steps["shown"]]
    page, problems, requests = _open(browser, (tmp_path / "site" / "map.html").as_uri())
    r = "DMD2Site.resolve('map').traj"
    # Off at first (long lines and labels over the clusters), drawn when switched on.
    assert page.evaluate(f"[{r}.seg.visible, {r}.pt.visible, {r}.label.visible]") == [False, False, False]
    page.click('label:has(input[data-traj="paths"])')
    assert page.evaluate(f"[{r}.seg.visible, {r}.pt.visible, {r}.label.visible]") == [True, True, True]
    # One segment between consecutive steps of every drawn path, a sigma label on every drawn point.
    n_paths, n_steps = shown["path"].nunique(), len(traj.sigmas)
    assert n_paths == 2 * 5 and n_paths < traj.steps["path"].nunique()
    assert page.evaluate("DMD2Site.trajSegments('map')") == n_paths * (n_steps - 1)
    assert page.evaluate("DMD2Site.resolve('map').traj.label.data_source.data.label.length") == len(shown)
    assert page.evaluate("DMD2Site.resolve('map').traj.label.data_source.data.label[0]") == "σ 80"
    # The per-step metrics chart and table sit beside the map.
    assert page.locator('[data-traj-panel="map"] table tbody tr').count() == len(traj.metrics)
    assert page.evaluate("Bokeh.documents.some(d => d.get_model_by_name('trajsteps'))")

    # Hover on the most isolated drawn step: its image, the path's final image and its sigma.
    xy = shown[["x", "y"]].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    row = int(shown.index[np.argmax(d.min(1))])
    x, y = _client_traj_step(page, row)
    page.mouse.move(x, y)
    page.wait_for_selector("#dmd2-hover[data-traj]:not([hidden])", timeout=5000)
    assert page.evaluate("document.getElementById('dmd2-hover').dataset.traj") == f"pt:{row}"
    card = page.inner_text("#dmd2-hover")
    step = int(traj.steps["step"][row])
    assert f"σ {traj.sigmas[step]:g}" in card and f"{step + 1} of {n_steps}" in card and "final" in card
    assert page.locator("#dmd2-hover .thumb").count() == 2
    page.screenshot(path=str(ARTIFACTS / "map-trajectory-hover.png"))

    # Toggles: paths off again, the noised-real references on (off at first).
    assert page.evaluate(f"{r}.real.visible") is False
    page.click('label:has(input[data-traj="paths"])')
    assert page.evaluate(f"[{r}.seg.visible, {r}.pt.visible, {r}.label.visible]") == [False, False, False]
    page.click('label:has(input[data-traj="real"])')
    assert page.evaluate(f"{r}.real.visible") is True
    assert page.evaluate(f"{r}.real.data_source.data.x.length") == len(traj.real)
    page.mouse.move(5, 5)
    page.mouse.move(x, y)  # the hidden path point is no longer hovered
    assert page.evaluate("""(() => { const c = document.getElementById('dmd2-hover');
        return !c.hidden && (c.dataset.traj || '').startsWith('pt:'); })()""") is False
    page.screenshot(path=str(ARTIFACTS / "map-trajectory-real.png"))
    assert problems == [] and [u for u in requests if not u.startswith("file://")] == []
    page.context.close()


def test_trajectory_paths_per_class_on_demand(browser, tmp_path):
    import numpy as np

    data = synthetic_report_data(300, 120, 5, seed=4, trajectories=True)
    render_site(data, tmp_path / "site")
    steps = data.trajectories.steps
    n_steps = len(data.trajectories.sigmas)
    stored = steps.groupby("class_id")["path"].nunique()
    default = steps[steps["shown"]].groupby("class_id")["path"].nunique().reindex(stored.index, fill_value=0)
    assert (stored > default).all()      # every class has stored paths that are not drawn by default

    def expected(classes):               # paths drawn: all of the given classes, the default few elsewhere
        return int(sum(stored[c] if c in classes else default[c] for c in stored.index))

    segments, status = "DMD2Site.trajSegments('map')", "document.querySelector('[data-traj-status=\"map\"]')"
    page, problems, _ = _open(browser, (tmp_path / "site" / "map.html").as_uri() + "#class=3")
    page.click('label:has(input[data-traj="paths"])')
    assert page.evaluate(segments) == expected({3}) * (n_steps - 1)
    assert page.evaluate("DMD2Site.resolve('map').traj.label.data_source.data.label.length") == expected({3}) * n_steps
    assert page.evaluate(f"Number({status}.dataset.paths)") == expected({3})
    assert f"all {stored[3]} of 3 · class 3" in page.text_content('[data-traj-status="map"]')   # in a closed <details>

    # Hover reaches a step of a path that is drawn only because its class was asked for.
    extra = steps[(steps["class_id"] == 3) & ~steps["shown"]]
    drawn = steps[steps["shown"] | (steps["class_id"] == 3)]
    xy, cand = drawn[["x", "y"]].to_numpy(), extra[["x", "y"]].to_numpy()
    d = np.sqrt(((cand[:, None] - xy[None]) ** 2).sum(-1))
    d[d == 0] = np.inf                   # not its own distance
    row = int(extra.index[np.argmax(d.min(1))])
    # The class's zoom frames its real and class-conditioned points; a path's noisy first steps lie outside it.
    page.evaluate("Bokeh.index[DMD2Site.resolve('map').fig.id].reset_range()")
    page.mouse.move(*_client_traj_step(page, row))
    page.wait_for_selector("#dmd2-hover[data-traj]:not([hidden])", timeout=5000)
    assert page.evaluate("document.getElementById('dmd2-hover').dataset.traj") == f"pt:{row}"
    assert steps["source"][row] in page.inner_text("#dmd2-hover")
    page.screenshot(path=str(ARTIFACTS / "map-trajectory-class.png"))

    # Clearing the search returns to the default; typing a class name draws all of that class's paths.
    page.fill('[data-search="map"]', "")
    assert page.evaluate(segments) == expected(set()) * (n_steps - 1) == int(default.sum()) * (n_steps - 1)
    page.fill('[data-search="map"]', "class 1")
    assert page.evaluate(segments) == expected({1}) * (n_steps - 1)
    page.fill('[data-search="map"]', "no such class")
    assert page.evaluate(segments) == expected(set()) * (n_steps - 1)
    page.evaluate("location.hash = 'class=0'")
    page.wait_for_function(f"{segments} === {expected({0}) * (n_steps - 1)}", timeout=5000)
    assert problems == []
    page.context.close()


def test_capped_map_selection_csv_says_it_covers_the_drawn_points(browser, tmp_path):
    """Past report.max_points the map draws a sample over density images; selection and its CSV cover
    the drawn points and the CSV's first line says so; neighbours outside the site keep their distance."""
    data = synthetic_report_data(700, 300, 5, seed=3)
    render_site(data, tmp_path / "site", ReportConfig(max_points=250))
    page, problems, _ = _open(browser, (tmp_path / "site" / "map.html").as_uri())
    assert page.evaluate("DMD2Site.pointCount('map')") == 250
    assert page.evaluate("Bokeh.documents[0].get_model_by_name('map:density:0') !== null")
    assert "shows 250 of" in page.locator(".point-note").inner_text()
    page.evaluate("""() => { const r = DMD2Site.resolve('map').real[0];
        r.data_source.selected.indices = [...Array(r.data_source.data.x.length).keys()]; }""")
    sel = page.locator('[data-sel-for="map"]')
    sel.locator("button[data-csv]").wait_for(timeout=5000)
    n_sel = page.evaluate("DMD2Site.resolve('map').real[0].data_source.data.x.length")
    with page.expect_download() as dl:
        sel.locator("button[data-csv]").click()
    lines = Path(dl.value.path()).read_text().splitlines()
    assert lines[0].startswith("# selection among the 250 points drawn on the map") and f"all {len(data.points)} points" in lines[0]
    assert lines[1].startswith("sample_id,") and len(lines) == n_sel + 2
    # A drawn point whose neighbour is not carried still lists it (distance, no image).
    row = page.evaluate("""() => { const d = DMD2_DATA, k = d.nb.k;
        for (let i = 0; i < d.points.id.length; i++) if (d.points.drawn[i])
          for (let j = 0; j < k; j++) if (d.nb.ri[i * k + j] < 0 && d.nb.rd[i * k + j] !== null) return i;
        return -1; }""")
    assert row >= 0
    page.evaluate("r => DMD2Site.showNeighbours('map', r)", row)
    panel = page.locator('[data-nbr-for="map"]')
    assert panel.locator(".nbr.outside").count() >= 1 and "not among the points this site carries" in panel.inner_text()
    assert problems == []
    page.context.close()
