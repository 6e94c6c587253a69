"""Exploring the map in headless Chromium: which layer a person sees above which, the selection drawn and kept in the
address, filters whose counts match the data (map, list and CSV alike), the ranked galleries, the comparison page's
class selector and a phone-width page. Screenshots go to test-artifacts/."""

from pathlib import Path

import numpy as np
import pytest

from dmd2report.report import figures
from dmd2report.report.render import render_site
from conftest import ARTIFACTS
from synthetic import synthetic_report_data, with_comparison
from test_browser_report import _open

pytestmark = pytest.mark.browser
SELECTED = "DMD2Site.resolve('map').pts.flatMap(r => Array.from(r.data_source.selected.indices, i => r.data_source.data.row[i]))"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = with_comparison(synthetic_report_data(500, 300, 12, seed=5, variants_per_class=2))
    root = tmp_path_factory.mktemp("explore") / "site"
    render_site(data, root)
    return root, data


def _hash(page) -> dict:
    return page.evaluate("Object.fromEntries(new URLSearchParams(location.hash.slice(1)))")


def test_layers_read_and_the_selection_is_drawn_and_kept(site, browser):
    root, data = site
    P = data.points
    variant = P["variant"].to_numpy()
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    order = page.evaluate("DMD2Site.layerOrder('map')")
    gens = [n for n in order if n.startswith("map:pt:gen:")]
    # Real points beneath the generated outlines by class; only the class-conditioned sets (both generators') on.
    assert order.index("map:pt:real") < min(order.index(n) for n in gens)
    shown = page.evaluate("DMD2Site.resolve('map').gens.map(r => [r.visible, DMD2_DATA.variants[DMD2_DATA.points.variant[r.data_source.data.row[0]]]])")
    assert {v for on, v in shown if on} == {"class", "step-9: class"} and {v for on, v in shown if not on} == {"uniform", "zero", "blend"}
    glyphs = page.evaluate("""DMD2Site.resolve('map').gens.map(r => [Math.max(...r.data_source.data.fa), r.glyph.line_alpha.value,
        Math.min(...r.data_source.data.lw)])""")
    assert all(fa <= figures.MAP_ALPHA["generated"] + 1e-6 and line >= 0.9 and lw >= 1 for fa, line, lw in glyphs)   # outlines
    real = page.evaluate("[DMD2Site.resolve('map').real[0].glyph.fill_alpha.value, DMD2Site.resolve('map').real[0].glyph.size.value]")
    assert real == [pytest.approx(figures.MAP_ALPHA["real"]), figures.REAL_SIZE]
    # Where the real points carry the colour, their layer is drawn above every generated one.
    for mode in ("covered", "trust", "coverdiff"):
        page.select_option('[data-colour="map"]', mode)
        order = page.evaluate("DMD2Site.layerOrder('map')")
        assert order.index("map:pt:real") > max(order.index(n) for n in gens), mode
    page.screenshot(path=str(ARTIFACTS / "explore-coverdiff.png"))
    page.select_option('[data-colour="map"]', "class")
    # The other conditionings come when asked for, and the address keeps it.
    page.check('[data-key="map"] label[data-variant="uniform"] input')
    assert page.evaluate("DMD2Site.resolve('map').gens.filter(r => r.visible).length") == 3 and "on" in _hash(page)

    # A selection: real points of class 3 and a few class-conditioned samples; selected opaque, the rest faded,
    # the layers with nothing selected muted (drawn faded).
    rows = [int(r) for r in np.flatnonzero((variant == "real") & (P["class_id"].to_numpy() == 3))[:15]]
    rows += [int(r) for r in np.flatnonzero(variant == "class")[:5]]
    page.evaluate("rows => DMD2Site.select('map', rows)", rows)
    page.wait_for_function("document.querySelector('[data-sel-for=\"map\"]').dataset.count === '20'")
    styles = page.evaluate("""DMD2Site.resolve('map').pts.map(r => [r.name, r.data_source.selected.indices.length, r.muted,
        r.selection_glyph.fill_alpha.value, r.nonselection_glyph.fill_alpha.value, r.muted_glyph.fill_alpha.value])""")
    for name, n_sel, muted, sel_a, non_a, muted_a in styles:
        assert sel_a == pytest.approx(figures.SELECTED_ALPHA) and non_a == muted_a == pytest.approx(figures.FADED_ALPHA)
        assert muted == (n_sel == 0), name
    assert sorted(page.evaluate(SELECTED)) == sorted(rows)
    page.screenshot(path=str(ARTIFACTS / "explore-selection.png"))
    # It survives a colour change and the layer switch, and it is in the address.
    page.select_option('[data-colour="map"]', "trust")
    page.click('.switch label:has(input[value="real"])')
    page.click('.switch label:has(input[value="both"])')
    assert sorted(page.evaluate(SELECTED)) == sorted(rows)
    h = _hash(page)
    assert sorted(int(v, 36) for v in h["sel"].split(".")) == sorted(rows)
    url = page.url
    page.context.close()
    again, problems2, _ = _open(browser, url)
    assert sorted(again.evaluate(SELECTED)) == sorted(rows)
    assert again.input_value('[data-colour="map"]') == "trust"
    assert again.evaluate("DMD2Site.resolve('map').gens.filter(r => r.visible).length") == 3
    assert problems == [] and problems2 == []
    again.context.close()


def test_filters_drive_the_map_the_list_and_the_csv(site, browser):
    root, data = site
    P = data.points
    variant = P["variant"].to_numpy()
    near = np.round(data.neighbours.real_dist[:, 0].astype(np.float64), 4)
    on = np.isin(variant, ["real", "class", "step-9: class"])           # the layers shown at first
    t = float(np.round(np.median(near[on]), 4)) + 5e-5
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    page.click('[data-filter-for="map"] summary')
    page.fill('input[data-range="dist"][data-end="0"]', str(t))
    want = np.flatnonzero(on & (near >= t))
    status = page.locator('[data-filter-status="map"]')
    assert int(status.get_attribute("data-count")) == len(want) and f"{len(want)} of {len(P)} drawn points shown" in status.inner_text()
    drawn = page.evaluate("DMD2Site.resolve('map').pts.filter(r => r.visible).reduce((n, r) => n + r.view.filter.booleans.filter(Boolean).length, 0)")
    assert drawn == len(want)
    sel = page.locator('[data-sel-for="map"]')
    assert int(sel.get_attribute("data-count")) == len(want) and sel.locator(".thumb").count() == min(len(want), 120)
    with page.expect_download() as dl:
        sel.locator("button[data-csv]").click()
    lines = Path(dl.value.path()).read_text().splitlines()
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(P["sample_id"].to_numpy()[want])
    # Sorted by the distance, largest first: the grid's order and the CSV's.
    page.select_option('[data-sort-for="map"]', "dist")
    page.click('[data-sort-dir="map"]')
    shown = [int(r) for r in sel.locator(".thumb").evaluate_all("els => els.map(e => e.dataset.row)")]
    assert [near[r] for r in shown] == sorted(near[want], reverse=True)[:len(shown)]
    # A category on top: not covered real points only; then a selection, which the filter narrows.
    page.uncheck('input[data-cat-of="covered"][value="1"]')
    covered = P["covered"].to_numpy(bool)
    want = np.flatnonzero(on & (near >= t) & (variant == "real") & ~covered)
    assert int(status.get_attribute("data-count")) == len(want) == int(sel.get_attribute("data-count"))
    rows = [int(r) for r in np.flatnonzero(variant == "real")[:60]]
    page.evaluate("rows => DMD2Site.select('map', rows)", rows)
    both = sorted(set(rows) & set(want.tolist()))
    page.wait_for_function(f"document.querySelector('[data-sel-for=\"map\"]').dataset.count === '{len(both)}'")
    with page.expect_download() as dl:
        sel.locator("button[data-csv]").click()
    lines = Path(dl.value.path()).read_text().splitlines()
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(P["sample_id"].to_numpy()[both])
    page.screenshot(path=str(ARTIFACTS / "explore-filters.png"))
    page.click('[data-filter-clear="map"]')
    assert page.evaluate("DMD2Site.resolve('map').pts.every(r => r.view.filter.booleans === null)")
    assert problems == []
    page.context.close()


def test_galleries_rank_the_samples_and_open_them_on_the_map(site, browser):
    root, data = site
    P, nb = data.points, data.neighbours
    ids = P["sample_id"].to_numpy()
    cond = np.flatnonzero(P["variant"].to_numpy() == "class")
    d = nb.real_dist[cond, 0].astype(np.float64)
    page, problems, _ = _open(browser, (root / "galleries.html").as_uri())
    far = page.locator('[data-gallery="far"] .gallery-card')
    got = far.evaluate_all("els => els.map(e => [e.dataset.id, Number(e.dataset.value)])")
    # The off-manifold gallery: the class-conditioned samples farthest from any real image, largest first.
    assert [i for i, _ in got] == list(ids[cond[np.argsort(-d, kind="stable")][:48]])
    assert [v for _, v in got] == sorted((v for _, v in got), reverse=True)
    # The memorisation gallery: closest pairs first, each sample beside its nearest real image.
    pairs = page.locator('[data-gallery="pairs"] .pair')
    dists = [float(x) for x in pairs.evaluate_all("els => els.map(e => e.dataset.dist)")]
    assert dists == sorted(dists) and dists[0] == pytest.approx(d.min(), abs=1e-6)
    for pr in pairs.all()[:5]:
        gen_id, real_id = pr.locator(".gallery-card").evaluate_all("els => els.map(e => e.dataset.id)")
        row = int(np.flatnonzero(ids == gen_id)[0])
        assert real_id == ids[nb.real_index[row, 0]]
    # Mode dropping: per class, real images no class-conditioned sample covers, farthest from any sample first.
    covered, cls = P["covered"].to_numpy(bool), P["class_id"].to_numpy()
    for group in page.locator('[data-gallery="uncovered"] .gallery-class').all():
        c = int(group.get_attribute("data-class"))
        cards = group.locator(".gallery-card").evaluate_all("els => els.map(e => [e.dataset.id, Number(e.dataset.value)])")
        rows = [int(np.flatnonzero(ids == i)[0]) for i, _ in cards]
        assert all(P["set"][r] == "real" and not covered[r] and cls[r] == c for r in rows)
        assert [v for _, v in cards] == sorted((v for _, v in cards), reverse=True)
        n_unc = int(((P["set"] == "real") & ~P["covered"] & (P["class_id"] == c)).sum())
        assert f"{n_unc} of {int(((P['set'] == 'real') & (P['class_id'] == c)).sum())} real uncovered" in group.inner_text()
    page.screenshot(path=str(ARTIFACTS / "explore-galleries.png"), full_page=True)
    # A card opens the map on its point, selected.
    first = got[0][0]
    far.first.click()
    page.wait_for_selector("body[data-ready='1']")
    row = int(np.flatnonzero(ids == first)[0])
    assert page.get_attribute('[data-nbr-for="map"]', "data-row") == str(row)
    assert page.evaluate(SELECTED) == [row]
    assert problems == []
    page.context.close()


def test_layout_compare_selector_atlas_neighbours_and_a_phone(site, browser):
    root, data = site
    cmp = data.comparison
    page, problems, _ = _open(browser, (root / "compare.html").as_uri())
    # Same-seed grids for every class behind a selector; the page opens on the first few.
    classes = sorted(cmp.seeds["class_id"].unique().tolist())
    assert page.eval_on_selector_all("[data-compare-class] option", "os => os.map(o => o.value)") == [""] + [str(c) for c in classes]
    visible = "Array.from(document.querySelectorAll('[data-seed-table]')).filter(t => t.offsetParent !== null).map(t => Number(t.dataset.seedTable))"
    opening = page.evaluate(visible)
    assert opening == classes[:8]
    page.select_option("[data-compare-class]", str(classes[-1]))
    assert page.evaluate(visible) == [classes[-1]]
    n_seeds = int(cmp.seeds[(cmp.seeds["class_id"] == classes[-1])]["seed_index"].nunique())
    assert page.locator(f'[data-seed-table="{classes[-1]}"] tbody tr').count() == n_seeds
    # The per-class table sorts by a click on a column's head.
    table = page.locator('[data-compare="classes"]').first
    table.locator("thead th").nth(2).click()
    vals = [float(t) for t in table.locator("tbody td:nth-child(3)").all_inner_texts()]
    assert vals == sorted(vals)
    # The coverage difference opens with the real layer alone, drawn above the generated ones.
    page.click("[data-coverdiff-link]")
    page.wait_for_selector("body[data-ready='1']")
    assert page.input_value('[data-colour="map"]') == "coverdiff"
    assert page.evaluate("DMD2Site.resolve('map').real.every(r => r.visible) && DMD2Site.resolve('map').gens.every(r => !r.visible)")
    order = page.evaluate("DMD2Site.layerOrder('map')")
    assert order.index("map:pt:real") > max(order.index(n) for n in order if n.startswith("map:pt:gen:"))
    # The neighbour panel shows each neighbour's id and is as tall as its content (no scroll box of its own).
    page.click('.switch label:has(input[value="both"])')
    row = int(np.flatnonzero(data.points["variant"] == "class")[0])
    page.evaluate("r => DMD2Site.showNeighbours('map', r)", row)
    panel = page.locator('[data-nbr-for="map"]')
    ids = panel.locator(".nbr-id").all_inner_texts()
    k = data.neighbours.real_index.shape[1]
    assert ids == list(data.points["sample_id"].to_numpy()[np.concatenate([data.neighbours.real_index[row], data.neighbours.gen_index[row]])])
    assert len(ids) == 2 * k and panel.evaluate("p => p.scrollHeight <= p.clientHeight + 1")
    page.screenshot(path=str(ARTIFACTS / "explore-neighbour-ids.png"))
    # The atlas: the mosaic as wide as the page, each card's parts on one line.
    page.goto((root / "atlas.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    widths = page.evaluate("[document.querySelector('.atlas-box').getBoundingClientRect().width, document.querySelector('main').clientWidth]")
    assert widths[0] >= widths[1] - 40
    lines = page.evaluate("""Array.from(document.querySelectorAll('.anchor')).map(a => {
        const tops = Array.from(a.children).filter(c => !c.classList.contains('note')).map(c => c.getBoundingClientRect());
        return [Math.max(...tops.map(b => b.top)) < Math.min(...tops.map(b => b.bottom)), a.scrollWidth <= a.clientWidth + 1]; })""")
    assert lines and all(one and fits for one, fits in lines)
    page.screenshot(path=str(ARTIFACTS / "explore-atlas.png"), full_page=True)
    # A class page's image grids sort by any per-point field.
    c = data.chosen_classes[0] if data.chosen_classes else int(data.points["class_id"].value_counts().index[0])
    page.goto((root / "classes" / f"class-{c}.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    page.locator("[data-grid-sort]").first.select_option("trust")
    page.locator("button.sort-dir").first.click()
    rows = [int(r) for r in page.locator(".thumb-grid[data-sortable]").first.locator(".thumb").evaluate_all("els => els.map(e => e.dataset.row)")]
    trust = np.round(data.points["trust"].to_numpy(), 3)[rows]
    assert len(rows) > 1 and list(trust) == sorted(trust, reverse=True)
    assert problems == []
    page.context.close()
    # At a phone's width every page's navigation wraps within the screen, and nothing overflows it.
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    p = phone.new_page()
    for f in ("index.html", "map.html", "compare.html", "galleries.html", "atlas.html"):
        p.goto((root / f).as_uri())
        p.wait_for_selector("body[data-ready='1']", timeout=20000)
        assert p.evaluate("document.documentElement.scrollWidth") <= 390, f
        nav = p.evaluate("Array.from(document.querySelectorAll('header nav a')).map(a => a.getBoundingClientRect().right)")
        assert nav and max(nav) <= 390, f
    p.screenshot(path=str(ARTIFACTS / "explore-phone-atlas.png"), full_page=True)
    phone.close()
