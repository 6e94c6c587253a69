"""The reading pages in headless Chromium: metrics in plain words with one colour each, FD on the real set's own
scale, the few-step panel's comparison, the atlas mosaic filling its plot, the variants page's class selector."""

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from dmd2report.metric_defs import METRICS
from dmd2report.report.render import render_site
from synthetic import replace, synthetic_report_data
from test_browser_report import ARTIFACTS, _open

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A synthetic report with the measure stage's per-class columns: coverage_global equal to coverage (so it
    is left out), density, class fidelity and FD; few-step paths; every atlas anchor with the same note."""
    data = synthetic_report_data(400, 200, 6, seed=5, trajectories=True)
    pc = data.metrics.per_class
    rng = np.random.default_rng(0)
    pc = pc.assign(density=rng.uniform(0.5, 1.2, len(pc)), coverage_global=pc["coverage"],
                   class_fidelity=rng.uniform(0.8, 1, len(pc)), fd=rng.uniform(1, 9, len(pc)))
    pv = data.metrics.per_variant.assign(density=rng.uniform(0.5, 1.2, 4), fd=[data.metrics.fd.value, 7.0, 9.0, 3.0])
    for a in data.atlas.anchors:
        a.note = "mask = mean full activations of its neighbours"
    data = replace(data, metrics=dataclasses.replace(data.metrics, per_class=pc, per_variant=pv))
    root = tmp_path_factory.mktemp("pages") / "site"
    render_site(data, root)
    return root, data


def _shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"), full_page=True)


@pytest.mark.parametrize("page_file", ["metrics.html", "classes.html", "classes/class-1.html"])
def test_every_metric_has_its_label_and_explanation(site, browser, page_file):  # noqa: F811
    root, data = site
    page, problems, _ = _open(browser, (root / page_file).as_uri())
    heads = page.evaluate("""() => Array.from(document.querySelectorAll('[data-metric]'))
        .filter(e => e.tagName !== 'TR').map(e => [e.dataset.metric, e.getAttribute('title'), e.textContent])""")
    keys = [k for k, _, _ in heads]
    assert {"precision", "recall", "density", "coverage", "class_fidelity", "fd"} <= set(keys)
    for key, title, text in heads:
        assert title == METRICS[key].explanation and METRICS[key].label in text
    # No raw key is shown, and coverage by any sample (equal to coverage in every class here) has no column.
    body = page.text_content("main")
    assert not re.search(r"coverage_global|class_fidelity|\bfd\b", body)
    assert "coverage_global" not in keys and "equals coverage in every class here" in body
    # Each metric's one line is on the page (a glossary below a table, the card on a class page).
    for key in set(keys):
        assert METRICS[key].explanation in body
    assert problems == []
    _shot(page, page_file.replace("/", "_").removesuffix(".html"))
    page.context.close()


def _legend_colours(page, fig):
    """{legend label: fill colour} of a figure's legend items, and whether the legend sits beside/below the plot."""
    return page.evaluate("""name => {
        const doc = Bokeh.documents.find(d => d.get_model_by_name(name)), f = doc.get_model_by_name(name);
        const outside = [...f.right, ...f.below].find(m => m.items !== undefined);
        const inside = f.center.some(m => m.items !== undefined);
        const out = {};
        for (const it of outside ? outside.items : []) {
          const g = it.renderers[0].glyph, c = g.fill_color !== undefined ? g.fill_color : g.line_color;
          out[it.label.value] = typeof c === 'string' ? c : (c.value || c);
        }
        return [out, Boolean(outside) && !inside];
    }""", fig)


def test_one_colour_per_metric_in_every_chart_and_legends_beside_them(site, browser):  # noqa: F811
    root, data = site
    colour = {m.label: m.colour for m in METRICS.values()}
    seen = {}
    for page_file, figs in (("metrics.html", ["variantbars", "classbars"]), ("map.html", ["trajsteps"])):
        page, problems, _ = _open(browser, (root / page_file).as_uri())
        for fig in figs:
            legend, outside = _legend_colours(page, fig)
            assert outside, f"{fig}: legend over the data"
            for label, c in legend.items():
                name = label.split(" against ")[0]
                assert c == colour[name], (fig, label)
                seen.setdefault(name, set()).add(c)
        if page_file == "metrics.html":
            # The per-class chart's title says what it shows: all 6 classes here, lowest coverage first.
            assert page.evaluate("Bokeh.documents.map(d => d.get_model_by_name('classbars')).find(Boolean).title.text") \
                == "All 6 classes, lowest coverage first"
            swatches = page.evaluate("""() => Array.from(document.querySelectorAll('.glossary dt'))
                .map(d => [d.innerText.trim(), getComputedStyle(d.querySelector('.metric-swatch')).backgroundColor])""")
            for label, rgb in swatches:
                hexc = colour[label].lstrip("#")
                assert rgb == "rgb({}, {}, {})".format(*(int(hexc[i:i + 2], 16) for i in (0, 2, 4)))
        assert problems == []
        page.context.close()
    assert {"Precision", "Recall", "Coverage"} <= set(seen) and all(len(v) == 1 for v in seen.values())


def test_fd_reads_against_the_real_sets_own_scale(site, browser):  # noqa: F811
    root, data = site
    fd = data.metrics.fd
    page, problems, _ = _open(browser, (root / "metrics.html").as_uri())
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('table.fd-scale tr')).map(r =>
        [r.querySelector('th').innerText, Number(r.querySelector('td.num').innerText),
         r.querySelector('.bar').getBoundingClientRect().width, r.classList.contains('reference')])""")
    assert rows[0][0].startswith("real against real") and rows[0][3] and rows[0][1] == round(fd.real_halves, 2)
    assert rows[1][0] == "class against real" and rows[1][1] == round(fd.value, 2)
    longest = max(r[2] for r in rows)
    top = max(r[1] for r in rows)
    for _, value, width, _ in rows:      # bars on one scale: widths in proportion to the values
        assert width == pytest.approx(longest * value / top, abs=2.5)
    assert f"{fd.n_halves[0]:,} and {fd.n_halves[1]:,} real" in page.inner_text("table.fd-scale")
    assert f"two halves): {fd.real_halves:.2f}" in page.inner_text('tr[data-metric="fd"]')
    # Map trust, explained where the metrics are.
    assert METRICS["trust"].reading in page.inner_text('[data-reading="trust"]')
    _shot(page, "metrics-fd-scale")
    page.context.close()
    page, problems2, _ = _open(browser, (root / "index.html").as_uri())
    assert page.inner_text('[data-reference="fd"]') == f"real against real: {fd.real_halves:.2f}"
    assert problems == problems2 == []
    page.context.close()


def test_few_step_panel_says_what_it_compares(site, browser):  # noqa: F811
    root, data = site
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    panel = page.locator('[data-traj-panel="map"]')
    panel.locator("summary").click()          # the few-step panel is folded until asked for (paths off by default)
    heads = panel.locator("table thead th").all_inner_texts()
    assert heads[2:] == [METRICS[k].label for k in ("precision", "recall", "coverage")]
    o = data.metrics.overall.set_index("key")
    n = int(o.at["precision", "n_gen"])
    assert (f"the one-step class-conditioned set ({n:,} samples) against the same real set: precision "
            f"{o.at['precision', 'value']:.2f}, recall {o.at['recall', 'value']:.2f}") in panel.inner_text()
    assert problems == []
    page.locator('[data-traj-panel="map"]').screenshot(path=str(ARTIFACTS / "pages-few-step-panel.png"))
    page.context.close()


def test_atlas_mosaic_fills_its_plot_and_says_its_note_once(site, browser):  # noqa: F811
    root, data = site
    page, problems, _ = _open(browser, (root / "atlas.html").as_uri())
    got = page.evaluate("""() => {
        const doc = Bokeh.documents.find(d => d.get_model_by_name('atlas')), f = doc.get_model_by_name('atlas');
        const r = f.renderers.find(r => r.glyph.image !== undefined), img = r.data_source.data;
        const frame = Bokeh.index[f.id].frame.bbox, val = v => (v !== null && typeof v === 'object') ? v.value : v;
        const xs = [...img.x], ys = [...img.y], dw = val(r.glyph.dw), dh = val(r.glyph.dh);
        return {x: [Math.min(...xs), Math.max(...xs) + dw], y: [Math.min(...ys), Math.max(...ys) + dh],
                xr: [f.x_range.start, f.x_range.end], yr: [f.y_range.start, f.y_range.end], dw, dh,
                frame: [frame.width, frame.height]};
    }""")
    span = lambda a: a[1] - a[0]
    # The tiles reach from one end of each axis to the other (96% of a cell each, the rest is the gaps).
    assert span(got["x"]) / span(got["xr"]) > 0.95 and span(got["y"]) / span(got["yr"]) > 0.95
    # ... and are about square on screen: the plot has the grid's shape.
    tile_w = got["dw"] / span(got["xr"]) * got["frame"][0]
    tile_h = got["dh"] / span(got["yr"]) * got["frame"][1]
    assert tile_w / tile_h == pytest.approx(1, rel=0.2)
    note = "mask = mean full activations of its neighbours"
    assert page.locator(".anchor .note").count() == 0 and note in page.inner_text('[data-note="anchors"]')
    assert page.inner_text("main").count(note) == 1
    assert problems == []
    _shot(page, "atlas")
    page.context.close()


def _visible_variant_tables(page):
    return page.evaluate("""() => Array.from(document.querySelectorAll('[data-variant-table]'))
        .filter(t => !t.hidden && t.offsetParent !== null).map(t => Number(t.dataset.variantTable))""")


def test_variants_page_offers_every_class(site, browser):  # noqa: F811
    root, data = site
    page, problems, _ = _open(browser, (root / "variants.html").as_uri())
    classes = sorted(data.variants["class_id"].unique().tolist())
    options = page.eval_on_selector_all("[data-variant-class] option", "os => os.map(o => o.value)")
    assert options == [""] + [str(c) for c in classes]
    opening = _visible_variant_tables(page)
    assert opening == classes[:len(opening)] and len(opening) >= 1
    last = classes[-1]
    page.select_option("[data-variant-class]", str(last))
    assert _visible_variant_tables(page) == [last]
    table = page.locator(f'[data-variant-table="{last}"]')
    n_seeds = data.variants[data.variants["class_id"] == last]["seed_index"].nunique()
    assert table.locator("tbody tr").count() == n_seeds
    # Its thumbnails are drawn from the sprite sheets (loaded once the table shows).
    assert page.evaluate(f"""() => Array.from(document.querySelectorAll('[data-variant-table="{last}"] .thumb'))
        .every(t => getComputedStyle(t).backgroundImage.includes('thumbs-'))""")
    _shot(page, "variants-selected")
    page.select_option("[data-variant-class]", "")
    assert _visible_variant_tables(page) == opening
    assert problems == []
    page.context.close()


def test_variants_page_scales_to_a_thousand_classes(browser, tmp_path):  # noqa: F811
    data = synthetic_report_data(2000, 500, 1000, seed=6, variants_per_class=3)
    data = replace(data, max_class_pages=2)
    render_site(data, tmp_path / "site")
    html = (tmp_path / "site" / "variants.html").read_text()
    assert len(html.encode()) < 3 * 2**20          # bounded: two seeds a class past the first few
    page, problems, _ = _open(browser, (tmp_path / "site" / "variants.html").as_uri())
    assert page.locator("[data-variant-class] option").count() == 1 + 1000
    page.select_option("[data-variant-class]", "999")
    assert _visible_variant_tables(page) == [999]
    rows = page.locator('[data-variant-table="999"] tbody tr').count()
    assert rows == 2 and "2 of this class's 3 seeds" in page.inner_text('[data-variant-table="999"]')
    assert problems == []
    _shot(page, "variants-1000-classes")
    page.context.close()


@pytest.fixture(scope="module")
def even(tmp_path_factory):
    """A synthetic report with what the measure stage gives the tables to compare by: per-variant and per-class
    intervals, the class-conditioned set's first seeds as a row of its own (fewer samples than the class set), and
    every class's real-against-real FD."""
    data = synthetic_report_data(300, 150, 5, seed=7, trajectories=True)
    n_paths = int(data.trajectories.steps["path"].nunique())
    floor = dict(n_real=300 - n_paths, n_generated=n_paths, precision=0.91, recall=0.42, density=0.97, coverage=0.137,
                 fd=8.3)
    data = replace(data, trajectories=dataclasses.replace(data.trajectories, floor=floor))
    m = data.metrics
    pv = m.per_variant
    matched = "class, first 40 seeds"
    first = pv[pv["variant"] == "class"].assign(variant=matched, n_gen=40, coverage=0.2, precision=0.9, recall=0.5)
    pv = pd.concat([pv.iloc[:1], first, pv.iloc[1:]], ignore_index=True).assign(fd=[4.0, 6.0, 7.0, 9.0, 3.0])
    intervals = {}
    for r in pv.itertuples():   # coverage of every variant well apart from the matched row's, precision overlapping
        for key in ("precision", "recall", "coverage"):
            v = getattr(r, key)
            intervals[("variant", r.variant, key)] = (v - (0.01 if key == "coverage" else 0.3), v + 0.01)
    pc = m.per_class.assign(fd=np.linspace(2, 6, len(m.per_class)))
    overall = {r.key: (r.ci_low, r.ci_high) for r in m.overall.itertuples()}
    for r in pc.itertuples():   # class c's coverage interval: below the overall one for class 0, overlapping else
        lo = overall["coverage"][0] - 0.2 if r.class_id == 0 else overall["coverage"][0]
        intervals[("class", r.class_id, "coverage")] = (lo, lo + 0.05)
    class_fd_real = {int(c): 1.0 + c / 10 for c in pc["class_id"]}
    data = replace(data, metrics=dataclasses.replace(m, per_variant=pv, per_class=pc, intervals=intervals,
                                                     class_fd_real=class_fd_real, matched=matched))
    root = tmp_path_factory.mktemp("even") / "site"
    render_site(data, root)
    return root, data


def test_tables_that_compare_show_intervals_and_non_overlap(even, browser):
    """Every compared value carries its interval; ▲/▼ (data-separated) exactly where the interval lies wholly above or
    below the one compared with: a variant's against the class-conditioned set's same seeds (a row of their own, with
    a caution naming the different counts), a class's against the overall one; a class's FD beside its real/real."""
    root, data = even
    m = data.metrics
    page, problems, _ = _open(browser, (root / "metrics.html").as_uri())
    table = page.locator('table[data-table="variants"]')
    assert table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.variant)") == list(m.per_variant["variant"])
    assert table.locator("tr[data-matched] th").inner_text() == m.matched
    caution = page.inner_text('[data-caution="variants"]')
    assert m.matched in caution and "40" in caution and "grows with the number of samples" in caution
    heads = table.locator("thead th[data-metric]").evaluate_all("hs => hs.map(h => h.dataset.metric)")
    for r in m.per_variant.itertuples():
        row = table.locator(f'tbody tr[data-variant="{r.variant}"]')
        for i, key in enumerate(heads):
            cell = row.locator("td").nth(1 + i)
            ci = m.intervals.get(("variant", r.variant, key))
            if ci is not None:
                assert f"{ci[0]:.3f} – {ci[1]:.3f}" in cell.inner_text(), (r.variant, key)
            base = m.intervals.get(("variant", m.matched, key))
            want = None
            if ci is not None and base is not None and r.variant not in ("class", m.matched):
                want = "above" if ci[0] > base[1] else "below" if ci[1] < base[0] else None
            assert cell.get_attribute("data-separated") == want, (r.variant, key)
    assert table.locator('td[data-separated]').count() == 3 and table.locator('td[data-metric]').count() == 0
    fd_col = heads.index("fd")   # every variant's FD beside the real set's two halves
    assert [row.locator("td").nth(1 + fd_col).locator("[data-real-scale]").inner_text()
            for row in table.locator("tbody tr").all()] == [f"real/real {m.fd.real_halves:.2f}"] * len(m.per_variant)
    # per class, against the overall interval: class 0's coverage lies below it, the others' overlap
    classes = page.locator("table.data.sortable").last
    cov = heads_of(classes).index("coverage")
    marks = [classes.locator(f'tbody tr[data-class="{c}"] td').nth(4 + cov).get_attribute("data-separated")
             for c in m.per_class["class_id"]]
    assert marks == ["below"] + [None] * (len(marks) - 1)
    fd_cells = classes.locator("tbody td [data-real-scale]").all_inner_texts()
    assert fd_cells == [f"real/real {m.class_fd_real[int(c)]:.2f}" for c in m.per_class["class_id"]]
    assert problems == []
    page.goto((root / "classes.html").as_uri())
    table = page.locator("table.data.sortable")
    assert table.locator('td[data-separated="below"]').count() == 1 and \
        table.locator('tr:first-child td[data-separated="below"]').count() == 1
    assert table.locator("[data-real-scale]").count() == len(m.per_class)
    page.context.close()


def heads_of(table):
    return table.locator("thead th[data-metric]").evaluate_all("hs => hs.map(h => h.dataset.metric)")


def test_each_definition_once_and_every_table_links_to_it(even, browser):
    root, data = even
    page, problems, _ = _open(browser, (root / "metrics.html").as_uri())
    body = page.text_content("main")
    defs = page.locator("[data-definition]").evaluate_all("ds => ds.map(d => d.dataset.definition)")
    assert {"precision", "recall", "coverage", "fd", "trust"} <= set(defs) and len(defs) == len(set(defs))
    for key in defs:   # the one line and the formula once on the page, in the Definitions section
        assert body.count(METRICS[key].explanation) == 1, key
        assert page.locator(f"#def-{key}").inner_text().count(METRICS[key].explanation) == 1
    links = page.locator("a[data-def-link]")
    assert links.count() >= 8   # every metric column header of the per-variant and per-class tables
    for key, href in links.evaluate_all("as => as.map(a => [a.dataset.defLink, a.getAttribute('href')])"):
        assert href.endswith(f"metrics.html#def-{key}") and page.locator(f"#def-{key}").count() == 1
    page.locator('a[data-def-link="coverage"]').first.click()
    assert page.url.endswith("#def-coverage") and page.locator("#def-coverage").is_visible()
    page.goto((root / "classes.html").as_uri())   # the classes page links to the same definitions
    hrefs = page.locator("a[data-def-link]").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs and all("metrics.html#def-" in h for h in hrefs)
    assert problems == []
    page.context.close()


def test_the_few_step_metrics_sit_beside_their_sample_size_floor(even, browser):
    """The few-step panel's table ends with the floor: as many real images as paths, measured as a step is."""
    root, data = even
    floor = data.trajectories.floor
    page, problems, _ = _open(browser, (root / "map.html").as_uri())
    page.locator("[data-traj-panel] summary").click()
    row = page.locator("table.traj-metrics tr[data-floor]")
    assert row.is_visible()
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == f"floor: {floor['n_generated']} real"
    assert cells[2:] == [f"{floor[k]:.2f}" for k in ("precision", "recall", "coverage")]
    assert problems == []
    page.context.close()
