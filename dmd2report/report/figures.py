"""The Bokeh figures of the report. Markup and interaction live in the templates and site JS.

Naming convention the site JS relies on: every point renderer is named "<fig>:pt:real" or
"<fig>:pt:gen:<i>" and its source has columns x, y, row (point row); "<fig>:hl" is the highlight
ring layer. Past the cap, the folder form's map also has "<fig>:detail:real" and "<fig>:detail:gen:<i>"
layers (no row column) that site.js fills with the zoom tiles' points (tiles.py), and every map has "<fig>:lod", the
sample of both drawn while a person pans or zooms a slow map. Mouse move, tap and
selection call window.DMD2Site with the figure name, so the hover card shows the one nearest point (a grid lookup in JS) instead of Bokeh's tooltip stack. The map's
point layers draw a selection (selection, nonselection and muted glyphs) and have a BooleanFilter view
that the page's filters set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh import events
from bokeh.core.properties import value
from bokeh.models import (BooleanFilter, BoxSelectTool, CDSView, ColumnDataSource, CustomJS, FactorRange,
                          LassoSelectTool, Legend, LegendItem, PanTool, Range1d, ResetTool, WheelZoomTool)
from bokeh.plotting import figure

from ..metric_defs import METRICS
from . import palette
from .data import ReportData
from .view import Extent, SiteView, colours_of, density_rgba

_JS_MOVE = "window.DMD2Site && DMD2Site.hover(fig, cb_obj)"
_JS_LEAVE = "window.DMD2Site && DMD2Site.unhover(fig)"
_JS_TAP = "window.DMD2Site && DMD2Site.tap(fig, cb_obj)"
_JS_SELECT = "window.DMD2Site && DMD2Site.selected(fig)"


def _figure(name: str, *, height: int | None = None, select: bool = True, **kw):
    tools = [PanTool(), WheelZoomTool(), ResetTool()]
    if select:
        tools += [BoxSelectTool(), LassoSelectTool()]
    fig = figure(name=name, tools=tools, active_scroll=tools[1], output_backend="webgl", toolbar_location="right",
                 background_fill_color=None, border_fill_color=None, outline_line_color=None,
                 sizing_mode="stretch_both" if height is None else "stretch_width", height=height or 600,
                 min_border_left=40, lod_interval=0, **kw)
    # lod_interval=0: BokehJS's level of detail decimates only canvas glyphs (none here: all WebGL) and would repaint
    # everything once more after each interaction; site.js draws a sample while the view moves and one full paint after.
    fig.toolbar.logo = None
    fig.grid.grid_line_alpha = 0.25
    fig.axis.axis_line_alpha = 0.4
    fig.axis.major_tick_line_alpha = 0.4
    fig.axis.minor_tick_line_color = None
    return fig


def _legend_right(fig, items, **style):
    """A transparent legend beside the plot whose entries hide their layer when clicked."""
    fig.add_layout(Legend(items=items, click_policy="hide", location="top_left", background_fill_alpha=0.0,
                          border_line_alpha=0.0, **style), "right")


def _interactive(fig, name: str) -> list[CustomJS]:
    cbs = [CustomJS(args={"fig": name}, code=code) for code in (_JS_MOVE, _JS_LEAVE, _JS_TAP)]
    for ev, cb in zip((events.MouseMove, events.MouseLeave, events.Tap), cbs):
        fig.js_on_event(ev, cb)
    return cbs


def _columns(points: pd.DataFrame, rows: np.ndarray, **extra) -> dict:
    rows = np.asarray(rows, np.int32)
    return {"x": points["x"].to_numpy(np.float32)[rows], "y": points["y"].to_numpy(np.float32)[rows], "row": rows, **extra}


def _source(points: pd.DataFrame, rows: np.ndarray, **extra) -> ColumnDataSource:
    return ColumnDataSource(_columns(points, rows, **extra))


def _points(fig, name: str, src: ColumnDataSource, *, selectable: bool, **glyph):
    r = fig.scatter("x", "y", source=src, name=name, **glyph)
    if selectable:
        src.selected.js_on_change("indices", CustomJS(args={"fig": name.split(":")[0]}, code=_JS_SELECT))
    r.nonselection_glyph = None  # keep unselected points as they are: selection shows in the side grid
    return r


def _highlight(fig, name: str):
    src = ColumnDataSource({"x": np.zeros(0, np.float32), "y": np.zeros(0, np.float32)})
    fig.scatter("x", "y", source=src, name=f"{name}:hl", size=11, fill_alpha=0, line_width=2,
                line_color="#e8175d", line_alpha=0.9)
    # The clicked point (large ring) and its activation-space neighbours (small rings).
    focus = ColumnDataSource({"x": np.zeros(0, np.float32), "y": np.zeros(0, np.float32), "size": np.zeros(0, np.float32)})
    fig.scatter("x", "y", source=focus, name=f"{name}:focus", size="size", fill_alpha=0, line_width=2.5,
                line_color="#0ea5e9", line_alpha=1.0)


def _class_label(data: ReportData, class_id: int) -> str:
    row = data.classes[data.classes["class_id"] == class_id]
    return f"{class_id} {row['name'].iat[0]}" if len(row) else str(class_id)


def _real_background(fig, name: str, data: ReportData, rows: np.ndarray, *, selectable: bool, size: float = 4,
                     alpha: float = 0.22) -> list[LegendItem]:
    r = _points(fig, f"{name}:pt:real", _source(data.points, rows), selectable=selectable,
                size=size, marker="circle", fill_color=palette.REAL_COLOUR, fill_alpha=alpha, line_color=None)
    return [LegendItem(label=f"real ({len(rows):,})", renderers=[r])]


def _density(fig, name: str, i: int | str, x: np.ndarray, y: np.ndarray, ext: Extent, colour: str | None = None,
             colours: np.ndarray | None = None, max_alpha: int = 200):
    """An image of the points' 2-D histogram beneath the drawn points (None when it would be empty).

    An image_rgba glyph, not image_url: BokehJS paints it with the canvas's smoothing off (sharp
    cells, where a stretched image_url is blurred) and has it at once, where every image_url that
    finishes loading repaints the whole plot (with WebGL each repaint copies the GL canvas: most of
    the map's first render under software GL, measured with 21 layers)."""
    made = density_rgba(np.asarray(x, np.float64), np.asarray(y, np.float64), ext, colour, colours, max_alpha=max_alpha)
    if made is None:
        return None
    rgba, box = made
    img = np.ascontiguousarray(rgba[::-1]).view(np.uint32)[..., 0]  # image_rgba's row 0 is the bottom
    return fig.image_rgba(image=[img], x=box.x0, y=box.y0, dw=box.x1 - box.x0, dh=box.y1 - box.y0,
                          name=f"{name}:density:{i}")


def _class_colour_rgb(classes: np.ndarray, colour_of: dict[int, str]) -> np.ndarray:
    """(n, 3) colour of each point's class, looked up once per class and spread by index."""
    keys = np.array(sorted(colour_of), np.int64)
    table = colours_of([colour_of[int(c)] for c in keys])
    return table[np.clip(np.searchsorted(keys, classes), 0, max(len(keys) - 1, 0))]


MAX_LABELS = palette.LEGEND_CLASSES + 1   # class labels on the map: the classes with a style of their own
LABEL_BINS = 24                           # cells per side in which a class label looks for its densest spot


def class_colours(points: pd.DataFrame) -> tuple[list[tuple[int, str, bool]], dict[int, str]]:
    """Each class's map style (palette.class_groups), ranked by class-conditioned samples (real points
    where there are none): the one assignment the map, its key and the class pages share."""
    cls = points["class_id"][points["variant"] == "class"]
    if not len(cls):
        cls = points["class_id"][points["set"] == "real"]
    return palette.class_groups(cls[cls >= 0].value_counts().to_dict())


def class_label_positions(points: pd.DataFrame, classes: list[int], ext: Extent) -> pd.DataFrame:
    """Where each class's label goes: the centre of the densest of LABEL_BINS x LABEL_BINS cells of the
    class's real points (its class-conditioned samples when it has no real point), so a label sits on
    the class's main cluster, not between two of its clusters. One bincount over (class, cell)."""
    real = points[(points["set"] == "real") & points["class_id"].isin(classes)]
    have = set(real["class_id"])
    rest = points[(points["variant"] == "class") & points["class_id"].isin([c for c in classes if c not in have])]
    sub = pd.concat([real, rest])
    if not len(sub):
        return pd.DataFrame({"class_id": [], "x": [], "y": []})
    cw, ch = (ext.x1 - ext.x0) / LABEL_BINS, (ext.y1 - ext.y0) / LABEL_BINS
    ix = np.clip(((sub["x"].to_numpy() - ext.x0) / cw).astype(np.int64), 0, LABEL_BINS - 1)
    iy = np.clip(((sub["y"].to_numpy() - ext.y0) / ch).astype(np.int64), 0, LABEL_BINS - 1)
    code, uniq = pd.factorize(sub["class_id"], sort=True)
    counts = np.bincount(code * LABEL_BINS ** 2 + iy * LABEL_BINS + ix, minlength=len(uniq) * LABEL_BINS ** 2)
    best = counts.reshape(len(uniq), -1).argmax(axis=1)
    return pd.DataFrame({"class_id": uniq.to_numpy(np.int64), "x": ext.x0 + (best % LABEL_BINS + 0.5) * cw,
                         "y": ext.y0 + (best // LABEL_BINS + 0.5) * ch})


# The map's layers as they open: real points large enough and opaque enough to read inside clusters, generated
# points as outlines with a light fill (site.js's opacity sliders start from these), so neither layer hides the other.
REAL_SIZE = 5
MAP_ALPHA = {"real": 0.6, "generated": 0.25}
# A selection: the selected points opaque, every other point of the map faded (also in layers with nothing
# selected, which site.js mutes: Bokeh draws a layer without selected points as if nothing were selected).
SELECTED_ALPHA, FADED_ALPHA = 0.95, 0.06


def _map_points(fig, name: str, src: ColumnDataSource, **glyph):
    """A selectable point layer of the map: selection drawn (selected opaque, the rest faded; the muted glyph is the
    faded one), and a BooleanFilter view that site.js sets from the page's filters (None: every point passes)."""
    r = fig.scatter("x", "y", source=src, name=name, view=CDSView(filter=BooleanFilter()),
                    selection_fill_alpha=SELECTED_ALPHA, selection_line_alpha=glyph.pop("selection_line_alpha", 1.0),
                    nonselection_fill_alpha=FADED_ALPHA, nonselection_line_alpha=FADED_ALPHA,
                    muted_fill_alpha=FADED_ALPHA, muted_line_alpha=FADED_ALPHA, **glyph)
    src.selected.js_on_change("indices", CustomJS(args={"fig": name.split(":")[0]}, code=_JS_SELECT))
    return r


def _gen_glyph(v: str, variant_order: list[str]) -> dict:
    return dict(size=7 if v == "class" else 8, marker=palette.variant_marker(v, variant_order), fill_color="color",
                fill_alpha="fa", line_color="line", line_width="lw", line_alpha=0.95)


def _detail_layers(fig, name: str, variant_order: list[str]) -> None:
    """Empty layers "<fig>:detail:real" and "<fig>:detail:gen:<i>" in the drawn layers' styles, which site.js fills
    with the tiles' points in view (tiles.py, only those passing the page's filters); muted (faded) while a selection
    is drawn."""
    fig.scatter("x", "y", source=ColumnDataSource({"x": [], "y": [], "color": []}), name=f"{name}:detail:real",
                size=REAL_SIZE, marker="circle", fill_color="color", fill_alpha=MAP_ALPHA["real"], line_color=None,
                muted_fill_alpha=FADED_ALPHA)
    for i, v in enumerate(variant_order):
        fig.scatter("x", "y", source=ColumnDataSource({k: [] for k in ("x", "y", "color", "line", "fa", "lw")}),
                    name=f"{name}:detail:gen:{i}", muted_fill_alpha=FADED_ALPHA, muted_line_alpha=FADED_ALPHA,
                    **_gen_glyph(v, variant_order))


# The columns of the layer drawn while a person pans or zooms: each point with its layer's style (marker, size,
# fill and line colour, alpha and width as its layer draws it now, selection included); row is the drawn point's
# row (-1 for a tile's point).
LOD_COLUMNS = ("x", "y", "row", "marker", "size", "color", "fa", "line", "la", "lw")


def _lod_layer(fig, name: str) -> None:
    """"<fig>:lod", empty until a person pans or zooms a map whose full paint is slow: site.js then fills it with a
    sample of the visible point and detail layers and paints it in their place (BokehJS's WebGL markers run every
    point of a layer through the GPU, filtered out or not, so one small layer is what makes a frame cheap)."""
    fig.scatter("x", "y", source=ColumnDataSource({k: [] for k in LOD_COLUMNS}), name=f"{name}:lod", marker="marker",
                size="size", fill_color="color", fill_alpha="fa", line_color="line", line_alpha="la",
                line_width="lw")


def map_figure(view: SiteView, name: str = "map"):
    """The map: a shaded density image of every real point beneath the drawn sample's points (real
    grey, generated as outlines, one layer per conditioning variant, shaped by variant; site.js shows the
    class-conditioned sets at first, draws the real layer on top where it carries the colour, and filters),
    class labels on their clusters, and the few-step paths (off at first).

    Points carry per-point style columns (color, line, fa = fill alpha, lw = line width) that site.js
    fills for the colour-by choice (class, variant, map trust, covered, distance to the nearest real
    sample); the key, the layer switches and the opacity controls are the page's, not a Bokeh legend.
    Past report.max_points, each variant's undrawn points are in a density image of their own, in
    its variant colour ("map:density:gen:<i>") and for the class-conditioned set in class colours
    ("map:density:cls:<i>"), shown with the matching colour-by."""
    P, p = view.full.points, view.site.points
    fig = _figure(name, x_axis_label="map x", y_axis_label="map y")
    ext = Extent.of(P["x"].to_numpy(np.float64), P["y"].to_numpy(np.float64))
    full_gen = (P["set"] == "generated").to_numpy()
    site_gen = (p["set"] == "generated").to_numpy()
    variant_order = list(dict.fromkeys(P["variant"][full_gen]))
    var_colour = palette.variant_colours(variant_order)
    own, rest = class_colours(P)
    # Renderers paint in the order they are added: density images first, beneath every point.
    real_full = P[~full_gen]
    _density(fig, name, 0, real_full["x"], real_full["y"], ext, palette.REAL_COLOUR, max_alpha=150)
    if view.capped:
        colour_of = {**{c: col for c, col, _ in own}, **rest}
        for i, v in enumerate(variant_order):
            g = P[full_gen & (P["variant"] == v).to_numpy()]
            _density(fig, name, f"gen:{i}", g["x"], g["y"], ext, var_colour[v])
            if v == "class" and colour_of:
                known = g[g["class_id"].isin(list(colour_of))]
                _density(fig, name, f"cls:{i}", known["x"], known["y"], ext,
                         colours=_class_colour_rgb(known["class_id"].to_numpy(np.int64), colour_of))
    if view.tiled:   # the points tiles bring on zoom (site.js fills them): the same styles, beneath the drawn sample
        _detail_layers(fig, name, variant_order)
    real_rows = np.flatnonzero(~site_gen & view.drawn)
    pts = [_map_points(fig, f"{name}:pt:real", _source(p, real_rows, color=np.full(len(real_rows), palette.REAL_COLOUR)),
                size=REAL_SIZE, marker="circle", fill_color="color", fill_alpha=MAP_ALPHA["real"], line_color=None,
                selection_line_color="#1d2129", selection_line_alpha=0.9, selection_line_width=0.8)]
    for i, v in enumerate(variant_order):
        rows = np.flatnonzero(site_gen & view.drawn & (p["variant"] == v).to_numpy())
        n = len(rows)
        src = _source(p, rows, color=np.full(n, var_colour[v]), line=np.full(n, var_colour[v]),
                      fa=np.full(n, MAP_ALPHA["generated"], np.float32), lw=np.full(n, 1.2, np.float32))
        pts.append(_map_points(fig, f"{name}:pt:gen:{i}", src, **_gen_glyph(v, variant_order)))
    _lod_layer(fig, name)
    for tool in fig.tools:   # only the drawn points are selectable (the selection is of site rows)
        if isinstance(tool, (BoxSelectTool, LassoSelectTool)):
            tool.renderers = pts
    labels = class_label_positions(P, [c for c, _, _ in own][:MAX_LABELS], ext)
    style = {c: col for c, col, _ in own}
    fig.text("x", "y", text="text", name=f"{name}:labels", text_font_size="11px", text_align="center",
             text_baseline="middle", text_color="#1d2129", background_fill_color="#ffffff", background_fill_alpha=0.8,
             border_line_color="border", border_line_width=1.5, padding=2, border_radius=3,
             source=ColumnDataSource({"x": labels["x"].to_numpy(np.float32), "y": labels["y"].to_numpy(np.float32),
                                      "text": [_class_label(view.full, int(c))[:28] for c in labels["class_id"]],
                                      "border": [style[int(c)] for c in labels["class_id"]]}))
    if view.site.trajectories is not None:
        _trajectory_layers(fig, name, view.site.trajectories)
    _highlight(fig, name)
    _interactive(fig, name)
    # The view goes into the address: every pan, zoom and reset (site.js writes #view=, a reset clears it).
    fig.js_on_event(events.RangesUpdate, CustomJS(args={"fig": name}, code="window.DMD2Site && DMD2Site.rangesChanged(fig)"))
    fig.js_on_event(events.Reset, CustomJS(args={"fig": name}, code="window.DMD2Site && DMD2Site.viewReset(fig)"))
    return fig


def _subsample(rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _drawn_real(view: SiteView) -> np.ndarray:
    """Site rows of the real points drawn on the map: the backgrounds of the other figures."""
    return np.flatnonzero(view.drawn & (view.site.points["set"] == "real").to_numpy())


class ClassFigure:
    """The class's region on the map: its carried real and generated points (the drawn sample and the
    page's grids) over a faint subsample of the drawn real points. Legend counts: shown of all.

    One figure serves every class page (`fill` swaps its data, names and labels; serialise it before
    the next `fill`): building a Bokeh figure costs about as much as serialising it, and a report has up
    to `report.max_classes_pages` of them. Model ids repeat across pages, so the single-file form
    (every page in one document) builds one per class (`reuse=False`)."""

    def __init__(self, view: SiteView):
        self.view = view
        fig = self.fig = _figure("cls", height=420, select=False, x_axis_label="map x", y_axis_label="map y")
        self.bg = _points(fig, "cls:pt:real", _source(view.site.points, np.zeros(0, np.int64)), selectable=False, size=4,
                          marker="circle", fill_color=palette.REAL_COLOUR, fill_alpha=0.15, line_color=None)
        self.r1 = _points(fig, "cls:pt:gen:0", _source(view.site.points, np.zeros(0, np.int64)), selectable=False, size=6,
                          marker="circle", fill_color=palette.REAL_COLOUR, fill_alpha=0.8, line_color=None)
        self.r2 = _points(fig, "cls:pt:gen:1", _source(view.site.points, np.zeros(0, np.int64), marker=np.zeros(0, "<U8")),
                          selectable=False, size=8, marker="marker", fill_color=palette.PALETTE[0], fill_alpha=0.9,
                          line_color="#ffffff", line_alpha=0.4)
        self.items = [LegendItem(label="real", renderers=[self.bg]), LegendItem(label="real, this class", renderers=[self.r1]),
                      LegendItem(label="class-conditioned", renderers=[self.r2])]
        _legend_right(fig, self.items)
        self.callbacks = _interactive(fig, "cls")
        hl = [r for r in fig.renderers if r.name in ("cls:hl", "cls:focus")]
        self.others = hl
        p = view.site.points
        self.real_rows = _drawn_real(view)
        self.site_cls = p["class_id"].to_numpy(np.int64)
        self.site_real = (p["set"] == "real").to_numpy()
        self.site_cond = (p["variant"] == "class").to_numpy()   # class-conditioned: the class's own samples
        P = view.full.points
        full_real = (P["set"] == "real").to_numpy()
        cls_all = P["class_id"].to_numpy(np.int64)
        self.n_real = pd.Series(cls_all[full_real]).value_counts()
        self.n_gen = pd.Series(cls_all[(P["variant"] == "class").to_numpy()]).value_counts()
        self.embedded: EmbeddedFigure | None = None   # made on the first `components` call

    def fill(self, class_id: int, colour: str, name: str):
        p = self.view.site.points
        in_class = self.site_cls == class_id
        bg = _subsample(self.real_rows[~in_class[self.real_rows]], 3000)
        rr = np.flatnonzero(in_class & self.site_real)
        gr = np.flatnonzero(in_class & self.site_cond)
        order = list(dict.fromkeys(p["variant"].to_numpy()[gr]))
        marker_of = np.array([palette.variant_marker(v, order) for v in order] or ["circle"])
        codes = pd.Series(np.arange(len(order)), index=order).reindex(p["variant"].to_numpy()[gr]).to_numpy(np.int64) \
            if len(gr) else np.zeros(0, np.int64)
        for r, rows, extra in ((self.bg, bg, {}), (self.r1, rr, {}), (self.r2, gr, {"marker": marker_of[codes]})):
            r.data_source.data = _columns(p, rows, **extra)
        self.r2.glyph.fill_color = colour
        self.fig.name = name
        for r, suffix in ((self.bg, "pt:real"), (self.r1, "pt:gen:0"), (self.r2, "pt:gen:1")):
            r.name = f"{name}:{suffix}"
        for r in self.others:
            r.name = name + r.name[r.name.index(":"):]
        for cb in self.callbacks:
            cb.args = {"fig": name}

        def label(what, shown, total):
            return f"{what} ({total:,})" if shown == total else f"{what} ({shown:,} shown of {total:,})"
        # value(): a plain string assigned to a legend label is read as a column name (only the
        # constructor wraps it), which BokehJS rejects as a bad column
        self.items[0].label = value(f"real ({len(bg):,})")
        self.items[1].label = value(label("real, this class", len(rr), int(self.n_real.get(class_id, 0))))
        self.items[2].label = value(label("class-conditioned", len(gr), int(self.n_gen.get(class_id, 0))))
        return self.fig

    def components(self, class_id: int, colour: str, name: str) -> tuple[str, dict]:
        """`components({"plot": ...})` of the figure filled for `class_id`; after the first class only the
        models `fill` changes are serialised again (EmbeddedFigure)."""
        if self.embedded is None:
            renderers = [self.bg, self.r1, self.r2, *self.others]
            self.embedded = EmbeddedFigure(self.fig, [(self.fig, ["name"]), *((r, ["name"]) for r in renderers),
                                                      *((r.data_source, ["data"]) for r in renderers[:3]),
                                                      (self.r2.glyph, ["fill_color"]), *((i, ["label"]) for i in self.items),
                                                      *((cb, ["args"]) for cb in self.callbacks)])
        self.fill(class_id, colour, name)
        return self.embedded.components()


class EmbeddedFigure:
    """`bokeh.embed.components` of one figure whose model graph stays fixed while a few properties with
    plain values (data, names, labels, colours, callback args) change between pages: the document JSON
    is built once, and for every later page only the `changed` properties are serialised again and
    written over the stored JSON. Serialising a whole figure walks every property of its ~60 models
    (0.1-0.2 s); the dozen properties a class page changes take a small fraction of that. The output is
    what `components` gives for the same figure (tests/test_report_scale.py compares them)."""

    def __init__(self, fig, changed: list[tuple[object, list[str]]]):
        """`changed`: (model, property names) pairs; each property explicitly set, holding no model."""
        self.fig, self.changed = fig, changed
        self.docs_json = self.render_item = None
        self.objects: dict[str, dict] = {}

    def components(self) -> tuple[str, dict]:
        from bokeh.core.serialization import Serializer
        from bokeh.core.templates import MACROS, ROOT_DIV
        from bokeh.embed.bundle import Script, bundle_for_objs_and_resources
        from bokeh.embed.elements import script_for_render_items
        from bokeh.embed.util import OutputDocumentFor, standalone_docs_json_and_render_items
        if self.docs_json is None:  # the first page: the whole document, as components() builds it
            with OutputDocumentFor([self.fig]):
                self.docs_json, [self.render_item] = standalone_docs_json_and_render_items([self.fig])
            _index_objects(self.docs_json, self.objects)
        else:
            ser = Serializer(deferred=False)  # arrays inline (base64), as components() has them
            for model, names in self.changed:
                attributes = self.objects[model.id].setdefault("attributes", {})
                for a in names:
                    attributes[a] = ser.encode(model.lookup(a).get_value(model))
        bundle = bundle_for_objs_and_resources(None, None)  # as components() wraps its script
        bundle.add(Script(script_for_render_items(self.docs_json, [self.render_item])))
        return bundle.scripts(tag=True), {"plot": ROOT_DIV.render(root=self.render_item.roots[0], macros=MACROS)}


def _index_objects(node, out: dict) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "id" in node and "name" in node:  # a full definition, not a reference
            out.setdefault(node["id"], node)
        for v in node.values():
            _index_objects(v, out)
    elif isinstance(node, (list, tuple)):  # map entries are (key, value) tuples
        for v in node:
            _index_objects(v, out)


def class_figure(view: SiteView, class_id: int, colour: str, name: str):
    """A class-region figure of its own (see ClassFigure)."""
    return ClassFigure(view).fill(class_id, colour, name)


def variants_figure(view: SiteView, rows: pd.DataFrame, name: str = "variants"):
    """Variant samples in the real map, a line from each class-conditioned sample to its variants."""
    data = view.site
    p = data.points
    fig = _figure(name, height=560, select=False, x_axis_label="map x", y_axis_label="map y")
    items = _real_background(fig, name, data, _subsample(_drawn_real(view), 5000), selectable=False, alpha=0.15)
    base = rows[rows["variant"] == "class"].drop_duplicates(["class_id", "seed_index"])
    pairs = rows[rows["variant"] != "class"].merge(base[["class_id", "seed_index", "point"]], on=["class_id", "seed_index"],
                                                   suffixes=("", "_base"))
    b, q = pairs["point_base"].to_numpy(np.int64), pairs["point"].to_numpy(np.int64)
    x, y = p["x"].to_numpy(), p["y"].to_numpy()
    seg = fig.segment(x[b], y[b], x[q], y[q], line_color=palette.REAL_COLOUR, line_alpha=0.6, line_width=1)
    items.append(LegendItem(label="class sample → its variants", renderers=[seg]))
    order = list(dict.fromkeys(rows["variant"]))
    for i, (v, c) in enumerate(palette.variant_colours(order).items()):
        pts = rows[rows["variant"] == v]["point"].to_numpy()
        r = _points(fig, f"{name}:pt:gen:{i}", _source(p, pts), selectable=False, size=9,
                    marker=palette.variant_marker(v, order), fill_color=c, fill_alpha=0.9, line_color="#ffffff", line_alpha=0.4)
        items.append(LegendItem(label=f"{v} ({len(pts)})", renderers=[r]))
    _legend_right(fig, items)
    _interactive(fig, name)
    return fig


def coverage_figure(view: SiteView, name: str = "coverage"):
    """Real points coloured by covered or not (and shaped: circle covered, x not): every real point as
    a density layer per kind, the drawn sample as points. Legend counts are of all real points."""
    P, p = view.full.points, view.site.points
    fig = _figure(name, height=480, select=False, x_axis_label="map x", y_axis_label="map y")
    ext = Extent.of(P["x"].to_numpy(np.float64), P["y"].to_numpy(np.float64))
    real_f = (P["set"] == "real").to_numpy()
    cov_f = P["covered"].fillna(False).astype(bool).to_numpy()
    real = (p["set"] == "real").to_numpy() & view.drawn
    cov = p["covered"].fillna(False).astype(bool).to_numpy()
    kinds = (("covered", real_f & cov_f, real & cov, palette.COVERED_COLOUR, "circle"),
             ("not covered", real_f & ~cov_f, real & ~cov, palette.UNCOVERED_COLOUR, "x"))
    dens = [_density(fig, name, i, P["x"][mf], P["y"][mf], ext, colour) for i, (_, mf, _, colour, _) in enumerate(kinds)]
    items = []
    for i, (label, mf, mask, colour, marker) in enumerate(kinds):
        rows = np.flatnonzero(mask)
        r = _points(fig, f"{name}:pt:gen:{i}", _source(p, rows), selectable=False, size=5 if marker == "circle" else 7,
                    marker=marker, fill_color=colour, line_color=colour, fill_alpha=0.5, line_alpha=0.9,
                    line_width=1 if marker == "circle" else 1.8)
        items.append(LegendItem(label=f"{label} ({int(mf.sum()):,})", renderers=[r] + [d for d in dens[i:i + 1] if d is not None]))
    _legend_right(fig, items)
    _interactive(fig, name)
    return fig


def nn_histogram(data: ReportData, name: str = "nnhist"):
    """Distance to the k-th nearest real sample: real (leave-one-out) against generated."""
    a, b = np.asarray(data.nn_real_real, float), np.asarray(data.nn_gen_real, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    both = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
    edges = np.histogram_bin_edges(both, bins=40)
    fig = figure(name=name, height=320, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset", toolbar_location="right",
                 background_fill_color=None, border_fill_color=None, outline_line_color=None,
                 x_axis_label="distance to k-th nearest real sample (activation space)", y_axis_label="share of samples")
    fig.toolbar.logo = None
    for arr, label, colour, hatch in ((a, f"real → real ({len(a):,})", palette.REAL_COLOUR, " "),
                                      (b, f"generated → real ({len(b):,})", palette.PALETTE[0], "/")):
        h = np.histogram(arr, bins=edges)[0] / max(len(arr), 1)
        fig.quad(top=h, bottom=0, left=edges[:-1], right=edges[1:], fill_color=colour, fill_alpha=0.45,
                 line_color=colour, hatch_pattern=hatch, hatch_color=colour, hatch_alpha=0.5, legend_label=label)
    _legend_outside(fig, "right")
    fig.grid.grid_line_alpha = 0.25
    return fig


def _legend_outside(fig, where: str, **style):
    """Move the figure's legend (made by legend_label / legend_group) beside or below the plot, off the data."""
    legend = fig.legend[0]
    fig.center = [r for r in fig.center if r is not legend]
    legend.update(click_policy="hide", background_fill_alpha=0.0, border_line_alpha=0.0, location="top_left", **style)
    fig.add_layout(legend, where)


def bar_chart(table: pd.DataFrame, label_col: str, metrics: list[str], name: str, title: str):
    """Grouped bars: one group per row of `table` (named on the axis), one bar per metric in its own colour
    (metric_defs.METRICS), named once by the legend beside the plot; the y axis reaches the largest value
    (density may pass 1)."""
    groups = [str(r) for r in table[label_col]]
    fig = figure(name=name, x_range=FactorRange(*[(g, m) for g in groups for m in metrics]), height=320,
                 sizing_mode="stretch_width", tools="pan,xwheel_zoom,reset", toolbar_location="right", title=title,
                 background_fill_color=None, border_fill_color=None, outline_line_color=None)
    fig.toolbar.logo = None
    top = 1.0
    for m in metrics:   # a renderer per metric: the legend lists them in this order
        values = [float(v) if pd.notna(v) else 0.0 for v in table[m]]
        top = max([top, *values])
        spec = METRICS.get(m)
        fig.vbar(x=[(g, m) for g in groups], top=values, width=0.85, line_color=None,
                 fill_color=spec.colour if spec else palette.REAL_COLOUR, legend_label=spec.label if spec else m)
    fig.y_range.start, fig.y_range.end = 0, top * 1.05
    fig.xaxis.major_label_text_font_size = "0px"   # not the metric under every bar: the legend names them once
    fig.xaxis.major_tick_line_color = None
    fig.xaxis.group_label_orientation = 0.6 if len(groups) > 6 else "horizontal"
    fig.xgrid.grid_line_color = None
    fig.ygrid.grid_line_alpha = 0.25
    _legend_outside(fig, "right")
    return fig


def atlas_shape(grid: pd.DataFrame) -> tuple[int, int, float, float]:
    """(columns, rows, cell width, cell height) of the atlas grid's lattice in map units (cells between its first
    and last point included, stored or not)."""
    xs, ys = np.unique(grid["x"].round(9)), np.unique(grid["y"].round(9))
    step_x = float(np.min(np.diff(xs))) if len(xs) > 1 else 1.0
    step_y = float(np.min(np.diff(ys))) if len(ys) > 1 else 1.0
    cols = int(round((xs[-1] - xs[0]) / step_x)) + 1 if len(xs) else 1
    rows = int(round((ys[-1] - ys[0]) / step_y)) + 1 if len(ys) else 1
    return cols, rows, step_x, step_y


def atlas_figure(view: SiteView, name: str = "atlas"):
    """The grid generations laid out where they were inverse-projected from, over the drawn real points. The
    plot spans the grid's cells exactly and fills its box, which the page gives the grid's shape (`atlas_shape`):
    the mosaic fills the plane with square tiles (the map's two axes then have their own scales, as labelled)."""
    data = view.site
    grid = data.atlas.grid
    cols, rows, step_x, step_y = atlas_shape(grid)
    fig = _figure(name, select=False, x_axis_label="map x", y_axis_label="map y")
    if len(grid):
        x0, y0 = float(grid["x"].min()), float(grid["y"].min())
        fig.x_range = Range1d(x0 - step_x / 2, x0 + (cols - 0.5) * step_x, bounds="auto")
        fig.y_range = Range1d(y0 - step_y / 2, y0 + (rows - 0.5) * step_y, bounds="auto")
    _real_background(fig, name, data, _subsample(_drawn_real(view), 5000), selectable=False, alpha=0.12)
    dw, dh = step_x * 0.96, step_y * 0.96
    imgs, x0, y0 = [], [], []
    for x, y, t in grid[["x", "y", "thumb"]].itertuples(index=False):
        if t < 0:
            continue
        rgb = data.thumbnails[int(t)][::-1]  # image_rgba's origin is bottom-left
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]).copy().view(np.uint32)[..., 0]
        imgs.append(rgba); x0.append(x - dw / 2); y0.append(y - dh / 2)
    if imgs:
        fig.image_rgba(image=imgs, x=x0, y=y0, dw=dw, dh=dh)
    _interactive(fig, name)
    return fig


def step_colours(n_steps: int) -> list[str]:
    """One colour per sampling step, dark (noisy) to light (clean): the middle of Viridis, without its
    near-black start (lost on a dark page) or its pale yellow end (lost on a white one)."""
    from bokeh.palettes import Viridis256

    return [Viridis256[int(i)] for i in np.linspace(60, 200, n_steps).round()] if n_steps > 1 else [Viridis256[60]]


def trajectory_columns(steps: pd.DataFrame, sigmas: list[float]) -> tuple[dict, dict]:
    """Segment and point columns of the drawn paths (`steps` rows with shown=True). Row = position in
    `steps`, the key of the hover data; site.js rebuilds the same columns for other path choices."""
    colours = step_colours(len(sigmas))
    s = steps.reset_index(drop=True)
    s = s[s["shown"].astype(bool)].sort_values(["path", "step"])
    nxt = s.groupby("path").shift(-1)
    seg = s.assign(x1=nxt["x"], y1=nxt["y"]).dropna(subset=["x1"])
    segs = {"x0": seg["x"].to_numpy(np.float32), "y0": seg["y"].to_numpy(np.float32),
            "x1": seg["x1"].to_numpy(np.float32), "y1": seg["y1"].to_numpy(np.float32),
            "cls": seg["class_id"].to_numpy(np.int32)}
    pts = {"x": s["x"].to_numpy(np.float32), "y": s["y"].to_numpy(np.float32), "row": s.index.to_numpy(np.int32),
           "step": s["step"].to_numpy(np.int32), "cls": s["class_id"].to_numpy(np.int32),
           "color": [colours[int(i)] for i in s["step"]], "label": [sigma_label(sigmas[int(i)]) for i in s["step"]]}
    return segs, pts


def sigma_label(sigma: float) -> str:
    return f"σ {sigma:g}"


def _trajectory_layers(fig, name: str, traj) -> None:
    """Paths of the shown samples (segments between consecutive steps, points labelled with sigma) and
    the noised-real references, all hidden until switched on in the page's toolbar (long lines and
    labels over the clusters otherwise). Named "<fig>:traj:seg|pt|label|real". site.js swaps the seg
    and pt sources' data to draw every stored path of a searched class."""
    colours = step_colours(len(traj.sigmas))
    segs, pts = trajectory_columns(traj.steps, traj.sigmas)
    fig.segment("x0", "y0", "x1", "y1", name=f"{name}:traj:seg", line_color="#5b6472", line_alpha=0.75,
                line_width=1.6, source=ColumnDataSource(segs), visible=False)
    src = ColumnDataSource(pts)
    fig.scatter("x", "y", source=src, name=f"{name}:traj:pt", size=8, marker="circle", fill_color="color",
                line_color="#ffffff", line_width=0.8, fill_alpha=0.95, visible=False)
    fig.text("x", "y", text="label", source=src, name=f"{name}:traj:label", x_offset=6, y_offset=-2,
             text_font_size="9px", text_color="color", text_alpha=0.95, text_baseline="middle", visible=False)
    r = traj.real.reset_index(drop=True)
    rsrc = ColumnDataSource({"x": r["x"].to_numpy(np.float32), "y": r["y"].to_numpy(np.float32),
                             "row": r.index.to_numpy(np.int32), "color": [colours[int(i)] for i in r["step"]]})
    fig.scatter("x", "y", source=rsrc, name=f"{name}:traj:real", size=7, marker="diamond", fill_color="color",
                fill_alpha=0.6, line_color="color", line_alpha=0.9, visible=False)


def step_metrics_figure(traj, name: str = "trajsteps"):
    """Precision, recall and coverage of each sampling step: against the real set (solid) and
    against real images noised to the step's sigma (dashed)."""
    m = traj.metrics
    fig = figure(name=name, height=300, sizing_mode="stretch_width", tools="pan,reset", toolbar_location=None,
                 y_range=(0, 1.05), background_fill_color=None, border_fill_color=None, outline_line_color=None,
                 x_axis_label="step (noise level)", y_axis_label="share")
    fig.xaxis.ticker = list(range(len(traj.sigmas)))
    fig.xaxis.major_label_overrides = {i: f"σ {v:g}" for i, v in enumerate(traj.sigmas)}
    fig.grid.grid_line_alpha = 0.25
    markers = {"precision": "circle", "recall": "square", "coverage": "triangle"}
    for metric, marker in markers.items():
        colour = METRICS[metric].colour
        for ref, dash in (("real", "solid"), ("noised real", "dashed")):
            part = m[m["reference"] == ref].sort_values("step")
            if not len(part):
                continue
            src = ColumnDataSource({"x": part["step"].to_numpy(float), "y": part[metric].to_numpy(float)})
            label = f"{METRICS[metric].label} against {ref}"
            fig.line("x", "y", source=src, line_color=colour, line_dash=dash, line_width=1.8, legend_label=label)
            fig.scatter("x", "y", source=src, marker=marker, size=7, fill_color=colour, line_color=colour,
                        legend_label=label)
    legend = fig.legend[0]
    fig.legend.label_text_font_size = "10px"
    fig.legend.spacing = 0
    fig.legend.padding = 2
    fig.legend.ncols = 2
    fig.legend.click_policy = "hide"
    fig.legend.background_fill_alpha = 0.0
    fig.legend.border_line_alpha = 0.0
    fig.add_layout(legend, "below")  # beside the lines, not over them
    return fig
