"""The report at any N: the point cap and its note, the class-balanced sample, density layers, full-N
neighbour lists and counts, and a site whose size stops growing with N past the cap."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from dmd2report.config import ReportConfig
from dmd2report.report.data import Ragged, StackedThumbnails
from dmd2report.report.render import render_site
from dmd2report.report.view import _water_fill, balanced_sample, site_view
from synthetic import synthetic_report_data


def _payload(root):
    text = (root / "assets" / "data.js").read_text()
    return json.loads(text[text.index("=") + 1:text.rindex(";")])


def _site_bytes(root):
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_water_fill_is_equal_and_exact():
    q = _water_fill(np.array([5, 100, 100, 1, 40]), 100)
    assert q.sum() == 100 and q[0] == 5 and q[3] == 1 and (q <= [5, 100, 100, 1, 40]).all()
    assert max(q[[1, 2, 4]]) - min(q[[1, 2, 4]]) <= 1          # the large groups share the rest evenly
    assert (_water_fill(np.array([3, 4]), 10) == [3, 4]).all()   # budget above the total: everything
    assert _water_fill(np.array([10, 10, 10]), 7).tolist() == [3, 2, 2]


def test_balanced_sample_is_class_balanced_and_deterministic():
    rng = np.random.default_rng(0)
    n = 5000
    cls = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 5, n))   # class 0 dominates
    pts = pd.DataFrame({"variant": np.where(np.arange(n) < 4000, "real", "class"), "class_id": cls,
                        "sample_id": [f"s{i}" for i in range(n)]})
    a = balanced_sample(pts, 400)
    assert len(a) == 400 and (np.diff(a) > 0).all()
    assert (a == balanced_sample(pts, 400)).all()
    per = pts.iloc[a].groupby(["variant", "class_id"]).size()
    assert per["real"].sum() == 200 and per["class"].sum() == 200  # sets share the budget equally
    assert per["real"].max() - per["real"].min() <= 1               # and classes within a set
    # A drawn point stays drawn when points are shuffled: the order is a hash of the sample id.
    shuffled = pts.sample(frac=1, random_state=1)
    b = shuffled.iloc[balanced_sample(shuffled.reset_index(drop=True), 400)]["sample_id"]
    assert set(b) == set(pts.iloc[a]["sample_id"])
    assert (balanced_sample(pts, 10_000) == np.arange(n)).all()    # under the cap: every point


@pytest.fixture(scope="module")
def data():
    return synthetic_report_data(900, 500, 6, seed=2, variants_per_class=3)


@pytest.fixture(scope="module")
def capped(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cap") / "site"
    render_site(data, root, ReportConfig(max_points=300))
    return root


def test_map_shows_the_cap_and_says_so(data, capped):
    n = len(data.points)
    html = (capped / "map.html").read_text()
    note = re.sub(r"\s+", " ", re.search(r'class="muted small point-note"[^>]*>(.*?)</p>', html, re.S).group(1))
    assert "The map shows 300 of " + f"{n:,}" + " points: a class-balanced sample" in note
    p = _payload(capped)
    assert p["site"] == {"drawn": 300, "total": n, "capped": True, "real": 900, "gen": n - 900}
    assert sum(p["points"]["drawn"]) == 300
    # Every point of every set is in the map's density layers: one image per legend group, beneath the points.
    assert html.count("map:density:") >= 2 and '"name":"ImageRGBA"' in html


def test_uncapped_site_draws_everything_and_says_all(data, tmp_path):
    render_site(data, tmp_path / "s")
    html = (tmp_path / "s" / "map.html").read_text()
    n = len(data.points)
    assert f"The map shows {n:,} of {n:,} points (all of them)" in re.sub(r"\s+", " ", html)
    p = _payload(tmp_path / "s")
    assert p["site"]["capped"] is False and len(p["points"]["id"]) == n and sum(p["points"]["drawn"]) == n
    assert "map:density:0" in html


def test_neighbour_lists_and_counts_stay_full_n(data, capped):
    view = site_view(data, 300)
    p = _payload(capped)
    k = p["nb"]["k"]
    ids = np.array(p["points"]["id"])
    full_ids = data.points["sample_id"].to_numpy()
    ri, rd, rc = np.array(p["nb"]["ri"]).reshape(-1, k), np.array(p["nb"]["rd"], float).reshape(-1, k), np.array(p["nb"]["rc"]).reshape(-1, k)
    exact_i = data.neighbours.real_index[view.rows]
    # Carried neighbours point at the same sample; the others keep their distance and class.
    inside = ri >= 0
    assert (ids[ri[inside]] == full_ids[exact_i[inside]]).all()
    assert np.allclose(rd, data.neighbours.real_dist[view.rows], atol=1e-4)
    assert (rc == data.points["class_id"].to_numpy()[exact_i]).all()
    assert (~inside).any()          # the cap leaves some neighbours out of the site
    # Covered-by counts are the true counts of all generated samples (past the stored list's cap: here one
    # point has more than the synthetic cap of 20), the listed rows those carried, at most MAX_COVERED_BY.
    assert p["coveredBy"]["n"] == data.cover_count[view.rows].tolist()
    assert (data.cover_count > data.covered_by.counts()).any()
    listed = np.diff(p["coveredBy"]["off"])
    assert (listed <= np.minimum(p["coveredBy"]["n"], p["coveredBy"]["shown"])).all() and listed.sum() > 0
    # The classes page counts every point.
    html = (capped / "classes.html").read_text()
    c0 = int(((data.points["class_id"] == 0) & (data.points["set"] == "real")).sum())
    assert f">{c0:,}<" in html


def test_site_size_stops_growing_past_the_cap(tmp_path):
    sizes = {}
    for n_real in (1500, 6000):
        d = synthetic_report_data(n_real, n_real // 2, 6, seed=4, variants_per_class=3)
        render_site(d, tmp_path / str(n_real), ReportConfig(max_points=400))
        sizes[n_real] = _site_bytes(tmp_path / str(n_real))
    # 4x the points; the site grows only by the density images' detail (well under 15%).
    assert sizes[6000] < 1.15 * sizes[1500], sizes


def test_stacked_thumbnails_read_only_the_rows_asked(tmp_path):
    parts = [np.full((3, 2, 2, 3), i, np.uint8) for i in range(3)]
    s = StackedThumbnails(parts)
    assert s.shape == (9, 2, 2, 3) and len(s) == 9
    assert s[np.array([8, 0, 4])][:, 0, 0, 0].tolist() == [2, 0, 1]
    assert (np.asarray(s) == np.concatenate(parts)).all()


def test_ragged_round_trip():
    r = Ragged.from_dict({1: [5, 6], 3: [7]}, 5)
    assert r.counts().tolist() == [0, 2, 0, 1, 0] and r.row(1).tolist() == [5, 6] and r.nonempty().tolist() == [1, 3]


def test_class_pages_patched_embedding_equals_components():
    """Class pages serialise one figure once and then only the models a class changes: the document
    JSON must be what bokeh's components() gives for the same figure filled for that class."""
    from bokeh.embed import components

    from dmd2report.report import figures

    def doc(script):  # the JSON with model ids renumbered by first appearance (two figures, two id ranges)
        m = re.search(r"const docs_json = '(.*?)';", script, re.S)
        (body,) = json.loads(m.group(1).replace("\\'", "'")).values()
        txt = json.dumps(body, sort_keys=True)
        for i, x in enumerate(dict.fromkeys(re.findall(r'"id": "(p\d+)"', txt))):
            txt = txt.replace(f'"{x}"', f'"ID{i}"')
        return txt

    data = synthetic_report_data(600, 300, 12, seed=0, thumb_size=16)
    view = site_view(data, 500)
    patched, fresh = figures.ClassFigure(view), figures.ClassFigure(view)
    seen = []
    for c, colour in ((3, "#123456"), (0, "#abcdef"), (7, "#123456"), (3, "#00ff00")):
        script, divs = patched.components(c, colour, f"cls{c}")
        ref, ref_divs = components({"plot": fresh.fill(c, colour, f"cls{c}")})
        assert doc(script) == doc(ref) and set(divs) == set(ref_divs)
        labels = re.findall(r'"name": "LegendItem", "type": "object"\}|"label": (\{[^}]*\})', doc(script))
        assert [json.loads(x)["type"] for x in labels if x] == ["value"] * 3     # text, not a column name
        seen.append(doc(script))
    assert len(set(seen)) == 4       # every class page differs (data, names, colours)


def test_density_image_is_cropped_and_holds_every_point():
    from dmd2report.report.view import Extent, density_rgba
    rng = np.random.default_rng(1)
    x, y = rng.normal(2, 0.3, 500), rng.normal(-1, 0.2, 500)      # a small patch of a larger map
    ext = Extent(-10.0, -10.0, 10.0, 10.0)
    img, box = density_rgba(x, y, ext, "#ff0000", bins=64)
    assert img.dtype == np.uint8 and img.shape[2] == 4 and img.shape[0] < 32 and img.shape[1] < 32   # cropped
    assert ext.x0 <= box.x0 <= x.min() and x.max() <= box.x1 <= ext.x1 and box.y0 <= y.min() and y.max() <= box.y1
    assert np.isclose((box.x1 - box.x0) / img.shape[1], 20 / 64) and np.isclose((box.y1 - box.y0) / img.shape[0], 20 / 64)
    col = ((x - box.x0) / (box.x1 - box.x0) * img.shape[1]).astype(int).clip(0, img.shape[1] - 1)
    row = ((box.y1 - y) / (box.y1 - box.y0) * img.shape[0]).astype(int).clip(0, img.shape[0] - 1)   # row 0 = top
    assert (img[row, col, 3] > 0).all() and (img[..., :3][img[..., 3] > 0] == [255, 0, 0]).all()
    assert (img[..., 3] > 0).sum() == np.unique(np.stack([col, row]), axis=1).shape[1]   # only cells with points
    counts = np.zeros(img.shape[:2], int)
    np.add.at(counts, (row, col), 1)
    assert img[..., 3].max() == 200 and img[..., 3][counts == counts.max()].min() == 200  # densest cell darkest
    assert density_rgba(np.array([np.nan]), np.array([0.0]), ext) is None
