"""The report's pages, each declared once (`PAGES`): its name, title, file and template, when it is shown, and the
function that builds its content (template context and Bokeh figures). The navigation is the list's top-level pages,
in order, then the user's own pages (`report.template_dir`). A page's content is built only when the page is
rendered (render.py), so its figures live no longer than its page and the class pages share one figure.

Every builder reads the `Site`: the data gathered once for all pages. Counts and tables come from the full data
(`view.full`); rows and thumbnails from the site's points (`view.site`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from bokeh.embed import components

from ..errors import UserError
from ..metric_defs import METRICS
from ..resources import templates_dir
from . import figures, palette
from .data import ReportData
from .view import COMPARE_CLASSES, SiteView, class_grid_rows, cover_diff_kinds, coverage_k, shown_per_class, variant_selection

MAX_SKIPPED = 100                    # unreadable images listed on the overview (the manifest has them all)
# The map's colour-by choices (config.MAP_COLOURS) in the words of its control.
COLOUR_BY_WORDS = {"class": "class", "variant": "conditioning variant", "trust": "map trust",
                   "covered": "covered / not covered (real)", "distance": "distance to nearest real (generated)"}
# The choices a comparison ([[generators]]) adds to the control.
COMPARE_COLOUR_WORDS = {"generator": "generator", "coverdiff": "coverage difference (real)"}
MAX_CLASS_DELTAS = 20               # rows of each per-class delta table on the comparison page
MAX_CLASS_BARS = 30                  # classes in the metrics page's per-class chart (those with the lowest coverage)


@dataclass
class Content:
    """What a page's template gets besides what every page gets: its context, and its Bokeh figures as models, or
    already serialised (`embedded`: the (script, divs) of `components`, for a figure refilled by the next page)."""

    ctx: dict
    models: dict = field(default_factory=dict)
    embedded: tuple[str, dict] | None = None

    def components(self) -> tuple[str, dict]:
        if self.embedded is not None:
            return self.embedded
        return components(self.models) if self.models else ("", {})


@dataclass
class Page:
    """One page. `name`: its key (the `data-page` of its body, its anchor `#page=name` in the single file);
    `nav`: the navigation entry it belongs to, its own name for an entry of its own (a class page's is "classes");
    `file` and `template` default to `<name>.html`. `content(site)` builds what its template shows; `shown(data)`
    says whether the report has it; `children(site)`: the pages that follow it (the classes page's class pages)."""

    name: str
    title: str
    content: Callable[[Site], Content]
    shown: Callable[[ReportData], bool] = lambda data: True
    children: Callable[[Site], list[Page]] | None = None
    nav: str = ""
    file: str = ""
    template: str = ""

    def __post_init__(self):
        self.nav = self.nav or self.name
        self.file = self.file or f"{self.name}.html"
        self.template = self.template or f"{self.name}.html"


class Site:
    """The data every page is built from, gathered once: the view, the class names, the metrics rows several pages
    show. `reuse_figures`: the class pages share one figure, serialised page by page (the folder form; the single
    file holds every page in one document, where model ids may not repeat)."""

    def __init__(self, view: SiteView, color_by: str, reuse_figures: bool):
        self.view, self.color_by, self.reuse_figures = view, color_by, reuse_figures
        self.data, self.full = view.site, view.full
        cls = self.data.classes.set_index("class_id")
        self.names = {int(c): str(n) for c, n in cls["name"].items()}
        self.synsets = {int(c): str(s) for c, s in cls["synset"].items()}
        self.variant_names = [v for v in dict.fromkeys(self.full.points["variant"]) if v != "real"]
        m = self.data.metrics
        self.fd_scale = _fd_scale(m)
        self.overall = m.overall.to_dict("records")
        for r in self.overall:   # FD reads against the real set's own (its card and table row say so)
            r["reference"] = (f"real against real: {self.fd_scale['reference']:.2f}"
                              if r["key"] == "fd" and self.fd_scale else "")
        self.class_metric_cols, self.class_note = class_metric_columns(m.per_class)
        self.class_heads = _metric_heads(self.class_metric_cols)

    @functools.cached_property
    def class_rows(self) -> list[dict]:
        """One row per class present: names, counts (full data) and per-class metrics; the classes and metrics pages'
        tables and each class page's header."""
        P, m = self.full.points, self.data.metrics
        per_class = m.per_class.set_index("class_id") if len(m.per_class) else pd.DataFrame()
        counts_real = P[P["set"] == "real"]["class_id"].value_counts()
        # A class's generated samples are those conditioned on it; the other conditionings' samples carry
        # their seed's class id but are counted apart (n_other), as what shares the class's seeds.
        counts_gen = P[P["variant"] == "class"]["class_id"].value_counts()
        counts_other = P[(P["set"] == "generated") & (P["variant"] != "class")]["class_id"].value_counts()
        present = sorted(int(c) for c in set(counts_real.index) | set(counts_gen.index) if c >= 0)
        return [dict(class_id=c, name=self.names.get(c, str(c)), synset=self.synsets.get(c, ""),
                     n_real=int(counts_real.get(c, 0)), n_gen=int(counts_gen.get(c, 0)),
                     n_other=int(counts_other.get(c, 0)), has_page=c in self.data.chosen_classes,
                     metrics=[per_class.at[c, k] if c in per_class.index else None for k in self.class_metric_cols],
                     cells=self.class_cells(c, per_class))
                for c in present]

    def class_cells(self, c: int, per_class: pd.DataFrame) -> list[dict]:
        """A class's metric cells: value, interval and its mark against the overall interval (`_cell`), and beside
        its FD the class's real-against-real scale."""
        m, overall = self.data.metrics, {r["key"]: (r["ci_low"], r["ci_high"]) for r in self.overall}
        cells = []
        for k in self.class_metric_cols:
            v = per_class.at[c, k] if c in per_class.index else None
            cell = _cell(v, m.intervals.get(("class", c, k)), overall.get(k), "the overall interval")
            if k == "fd" and c in m.class_fd_real:
                cell["real"] = m.class_fd_real[c]
            cells.append(cell)
        return cells

    @functools.cached_property
    def class_grid(self) -> pd.DataFrame:
        """The class pages' thumbnail grids: class_id, set, site row and thumbnail of each point shown."""
        view = self.view
        grid = class_grid_rows(self.full.points, self.data.chosen_classes)
        grid = pd.DataFrame({"class_id": grid["class_id"].to_numpy(), "set": grid["set"].to_numpy(),
                             "row": view.local[grid.index.to_numpy()]})
        grid["thumb"] = self.data.points["thumb"].to_numpy()[grid["row"].to_numpy()]
        return grid

    @functools.cached_property
    def class_colours(self) -> dict[int, str]:
        own, rest = figures.class_colours(self.full.points)
        return {**{c: col for c, col, _ in own}, **rest}

    @functools.cached_property
    def class_figure(self) -> figures.ClassFigure | None:
        """The figure every class page refills (reuse_figures), else None: one figure per class page."""
        return figures.ClassFigure(self.view) if self.reuse_figures else None


# ---------------------------------------------------------------------------------------------
# What each page shows.

def _index(site: Site) -> Content:
    data, P = site.data, site.full.points
    return Content(dict(cards=[r for r in site.overall if r.get("headline")],
                        compared=data.comparison.generators if data.comparison is not None else [],
                        variant_names=site.variant_names, n_classes=int(P["class_id"][P["class_id"] >= 0].nunique()),
                        has_atlas=data.atlas is not None, config_json=json.dumps(data.run.config, indent=2, default=str),
                        **_data_files(data)))


def _data_files(data: ReportData) -> dict:
    """The overview's Data section (templates/_data_files.html): the real images the source skipped, with why, and
    the counts of those decoding converted to 8-bit RGB, by kind."""
    from ..sources import CONVERSIONS

    return dict(skipped=[dict(source=str(s.get("source", "")), error=str(s.get("error", "")))
                         for s in data.skipped[:MAX_SKIPPED]], n_skipped=len(data.skipped),
                converted=[dict(words=CONVERSIONS.get(kind, kind), count=int(n))
                           for kind, n in data.converted.items() if n])


def _map(site: Site) -> Content:
    view, data, names = site.view, site.data, site.names
    traj = data.trajectories
    models = {"plot": figures.map_figure(view)}
    traj_ctx = None
    if traj is not None:
        models["trajsteps"] = figures.step_metrics_figure(traj)
        shown = traj.steps[traj.steps["shown"].astype(bool)]
        traj_ctx = dict(sigmas=traj.sigmas, n_paths=int(traj.steps["path"].nunique()), n_shown=int(shown["path"].nunique()),
                        per_class=shown_per_class(traj.steps), has_classes=bool((traj.steps["class_id"] >= 0).any()),
                        n_refs=int(traj.real["ref"].nunique()) if len(traj.real) else 0, conditioning=traj.conditioning,
                        note=" ".join(t for t in (traj.note, _one_step_note(data.metrics)) if t),
                        heads=_metric_heads(("precision", "recall", "coverage")),
                        colours=list(zip(traj.sigmas, figures.step_colours(len(traj.sigmas)))),
                        metrics=traj.metrics.sort_values(["step", "reference"]).to_dict("records"), floor=traj.floor)
    return Content(dict(color_by=site.color_by, n_drawn=view.n_drawn,
                        colour_choices=list(COLOUR_BY_WORDS.items()) + (list(COMPARE_COLOUR_WORDS.items())
                                                                        if data.comparison is not None else []),
                        n_total=view.n_total, has_variants=len(site.variant_names) > 1, alpha=figures.MAP_ALPHA,
                        capped=view.capped, max_points=view.max_points,
                        class_options=[(c, names[c], site.synsets[c]) for c in sorted(names)], traj=traj_ctx),
                   models)


def _variants(site: Site) -> Content:
    """The same seeds under each conditioning; the page opens on a few classes, its selector offers all."""
    data, full, names, p = site.data, site.full, site.names, site.data.points
    v = data.variants
    var_classes, carried = variant_selection(v, data.chosen_classes) if len(v) else ([], v)
    shown = carried[carried["class_id"].isin(var_classes)] if len(carried) else carried
    tables = []
    for c, vc in carried.groupby("class_id", sort=True) if len(carried) else ():  # a few seeds each
        c = int(c)
        seeds = list(dict.fromkeys(vc["seed_index"]))
        cols = [x for x in dict.fromkeys(vc["variant"])]
        rows = []
        for s in seeds:
            cells = {r.variant: int(r.point) for r in vc[vc["seed_index"] == s].itertuples()}
            rows.append((int(s), [(cells.get(col), int(p["thumb"].iat[cells[col]]) if col in cells else -1) for col in cols]))
        tables.append(dict(class_id=c, name=names.get(c, str(c)), variants=cols, rows=rows, open=c in var_classes))
    n_seeds = full.variants.drop_duplicates(["class_id", "seed_index"]).groupby("class_id").size() \
        if len(full.variants) else pd.Series(dtype=int)
    for t in tables:
        t["n_seeds"] = int(n_seeds.get(t["class_id"], 0))
    return Content(dict(tables=tables, n_variant_rows=len(full.variants),
                        open_names=", ".join(f"{c} {names.get(c, c)}" for c in var_classes)),
                   {"plot": figures.variants_figure(site.view, shown)} if len(shown) else {})


def _classes(site: Site) -> Content:
    return Content(dict(rows=site.class_rows, heads=site.class_heads, class_note=site.class_note,
                        n_pages=len(site.data.chosen_classes)))


def _class_pages(site: Site) -> list[Page]:
    """One page per chosen class."""
    return [Page(f"class-{c}", f"Class {c}: {site.names.get(c, c)}", functools.partial(_class, class_id=c),
                 nav="classes", file=f"classes/class-{c}.html", template="class.html") for c in site.data.chosen_classes]


def _class(site: Site, class_id: int) -> Content:
    c, grid = class_id, site.class_grid
    sub = grid[grid["class_id"] == c]
    real_thumbs = [(int(i), int(t)) for i, t in sub[sub["set"] == "real"][["row", "thumb"]].itertuples(index=False)]
    gen_thumbs = [(int(i), int(t)) for i, t in sub[sub["set"] == "generated"][["row", "thumb"]].itertuples(index=False)]
    ctx = dict(cls=next(r for r in site.class_rows if r["class_id"] == c), heads=site.class_heads,
               class_note=site.class_note, real_thumbs=real_thumbs, gen_thumbs=gen_thumbs)
    colour, fig = site.class_colours.get(c, palette.PALETTE[0]), site.class_figure
    if fig is not None:  # the shared figure is serialised now, before the next class refills it
        return Content(ctx, embedded=fig.components(c, colour, f"cls{c}"))
    return Content(ctx, {"plot": figures.class_figure(site.view, c, colour, f"cls{c}")})


def _metrics(site: Site) -> Content:
    view, data, names = site.view, site.data, site.names
    m = data.metrics
    models = {"coverage": figures.coverage_figure(view), "nnhist": figures.nn_histogram(data)}
    var_metric_cols = [c for c in m.per_variant.columns if c not in ("variant", "n_gen")]
    bar_cols = [c for c in ("precision", "recall", "density", "coverage") if c in var_metric_cols] or var_metric_cols[:4]
    if len(m.per_variant) and bar_cols:
        models["variantbars"] = figures.bar_chart(m.per_variant, "variant", bar_cols, "variantbars",
                                                  f"Each conditioning variant's generated set against the real set "
                                                  f"({len(m.per_variant)} variants)")
    cbar_cols = [c for c in ("precision", "recall", "coverage") if c in site.class_metric_cols]
    if len(m.per_class) and cbar_cols:
        worst = m.per_class.sort_values(cbar_cols[-1], na_position="last").head(MAX_CLASS_BARS)
        worst = worst.assign(label=[f"{int(c)} {names.get(int(c), '')}"[:28] for c in worst["class_id"]])
        lowest = METRICS[cbar_cols[-1]].label.lower()
        title = (f"All {len(worst)} classes, lowest {lowest} first" if len(worst) == len(m.per_class) else
                 f"The {len(worst)} classes with the lowest {lowest}, of {len(m.per_class):,}")
        models["classbars"] = figures.bar_chart(worst, "label", cbar_cols, "classbars", title)
    trust = METRICS["trust"]
    return Content(dict(spaces=_spaces_side_by_side(m), overall=site.overall, fd=m.fd, fd_head=_metric_heads(["fd"])[0],
                        fd_scale=site.fd_scale, variant_table=_variant_table(m, var_metric_cols),
                        definitions=_definitions([r["key"] for r in site.overall] + var_metric_cols
                                                 + site.class_metric_cols),
                        layer=m.layer, per_variant=m.per_variant.to_dict("records"),
                        var_heads=_metric_heads(var_metric_cols), class_rows=site.class_rows, class_heads=site.class_heads,
                        class_note=site.class_note,
                        trust=dict(label=trust.label, reading=trust.reading, shown=(m.overall["key"] == "trust").any())),
                   models)


def _spaces_side_by_side(m) -> dict | None:
    """The class-conditioned set's metrics in every feature space, one column a space (the headline's first), each
    cell with its interval and the real set's own value; None with one space only."""
    if m.spaces is None or m.spaces["space"].nunique() < 2:
        return None
    names = list(dict.fromkeys(m.spaces["space"]))
    rows = []
    for key, group in m.spaces.groupby("key", sort=False):
        by_space = {r.space: r for r in group.itertuples()}
        cells = [None if s not in by_space else dict(value=by_space[s].value, ci_low=by_space[s].ci_low,
                                                     ci_high=by_space[s].ci_high, real=by_space[s].real)
                 for s in names]
        rows.append(dict(key=key, label=METRICS[key].label, cells=cells))
    order = list(METRICS)
    rows.sort(key=lambda r: order.index(r["key"]))
    return dict(heads=[dict(name=s, short=s.split(":")[0], protocol=m.protocols.get(s, "")) for s in names], rows=rows,
                n_gen=int(m.spaces["n_gen"].max()))


def _compare(site: Site) -> Content:
    """Metrics side by side, the coverage difference's counts, the largest per-class changes and the same-seed grids
    (Comparison in data.py)."""
    view, names = site.view, site.names
    cmp, p, P = view.site.comparison, view.site.points, view.full.points
    spaces = []   # one table a feature space, the headline's first
    for space, in_space in cmp.overall.groupby("space", sort=False):
        overall = []
        for key, rows in in_space.groupby("key", sort=False):
            spec = METRICS[key]
            cells = []
            for r in rows.itertuples():
                text, direction = _delta(key, r.delta)
                cells.append(dict(generator=r.generator, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high,
                                  ci=bool(np.isfinite(r.ci_low) and np.isfinite(r.ci_high)), separated=bool(r.separated),
                                  delta_text=text, direction=direction,
                                  words=f"{r.generator} minus {cmp.generators[0]} ({_better(key)})"))
            overall.append(dict(key=key, label=spec.label, explanation=spec.explanation, colour=spec.colour, cells=cells))
        spaces.append(dict(name=space, headline=space == cmp.feature_space, protocol=cmp.protocols.get(space, ""),
                           fd_real=cmp.fd_real.get(space, float("nan")), rows=overall))
    n_real = max(1, int((P["set"] == "real").sum()))
    coverage = [(w, c, n, n / n_real) for w, c, n in cover_diff_kinds(view.full)]
    class_tables = []
    for (g, key), rows in cmp.per_class.groupby(["generator", "key"], sort=False):
        rows = rows[np.isfinite(rows["delta"].to_numpy(np.float64))].head(MAX_CLASS_DELTAS)
        class_tables.append(dict(generator=g, key=key, label=METRICS[key].label, rows=[
            dict(class_id=int(r.class_id), name=names.get(int(r.class_id), str(r.class_id)), reference=r.reference,
                 value=r.value, **dict(zip(("delta_text", "direction"), _delta(key, r.delta))), **_class_delta_cells(r))
            for r in rows.itertuples()]))
    seed_tables = []
    seeds = cmp.seeds[cmp.seeds["point"] >= 0]
    for c, sc in seeds.groupby("class_id", sort=True):
        rows = []
        for seed, ss in sc.groupby("seed_index", sort=False):
            at = dict(zip(ss["generator"], ss["point"].astype(int)))
            rows.append((int(seed), [(g, at.get(g), int(p["thumb"].iat[at[g]]) if g in at else -1) for g in cmp.generators]))
        seed_tables.append(dict(class_id=int(c), name=names.get(int(c), str(c)), rows=rows, open=len(seed_tables) < COMPARE_CLASSES))
    return Content(dict(cmp=dict(
        generators=cmp.generators, encoder=cmp.generators[0], space=cmp.feature_space, a=cmp.a, b=cmp.b,
        k_dc=coverage_k(view.full), spaces=spaces, coverage=coverage, class_tables=class_tables,
        max_rows=MAX_CLASS_DELTAS, seed_tables=seed_tables,
        direction_note=" ".join(f"{METRICS[k].label}: {_better(k)}." for k in dict.fromkeys(cmp.overall["key"])))))


def _galleries(site: Site) -> Content:
    """The ranked galleries (view.Galleries): each sample a card linking to its point on the map, selected."""
    view, g, p = site.view, site.view.galleries, site.data.points

    def card(full_row: int, value: float | None = None) -> dict:
        row = int(view.local[full_row])
        c = int(p["class_id"].iat[row])
        return dict(row=row, id=str(p["sample_id"].iat[row]), thumb=int(p["thumb"].iat[row]), value=value,
                    cls=f"{c} · {site.names.get(c, c)}" if c >= 0 else "no class",
                    point=f"point={quote(str(p['sample_id'].iat[row]), safe='')}&sel={np.base_repr(row, 36).lower()}")
    far = [card(r, float(v)) for r, v in zip(g.far, g.far_dist)]
    pairs = [dict(gen=card(r), real=card(q) if q >= 0 else None, dist=float(v))
             for r, q, v in zip(g.near, g.near_real, g.near_dist)]
    classes = [dict(class_id=int(c), name=site.names.get(int(c), str(c)), n_uncovered=int(t["n_uncovered"].iat[0]),
                    n_real=int(t["n_real"].iat[0]), cards=[card(int(r), float(v) if np.isfinite(v) else None)
                                                           for r, v in zip(t["row"], t["dist"])])
               for c, t in g.uncovered.groupby("class_id", sort=False)]
    P = site.full.points
    n_unc_classes = int(P["class_id"][(P["set"] == "real") & ~P["covered"].fillna(False).astype(bool)].nunique())
    return Content(dict(far=far, pairs=pairs, classes=classes, n_unc_classes=n_unc_classes, layer=site.data.neighbours.layer,
                        k_dc=coverage_k(site.full), n_cond=int((P["variant"] == "class").sum())))


def _class_delta_cells(r) -> dict:
    """A per-class delta row's two cells (`_cell`): the reference's value with its interval, and this generator's,
    marked where its interval lies wholly above or below the reference's (data.CLASS_DELTA_INTERVALS; NaN without)."""
    nan = float("nan")
    ref_ci = (getattr(r, "reference_low", nan), getattr(r, "reference_high", nan))
    ci = (getattr(r, "low", nan), getattr(r, "high", nan))
    return dict(reference_cell=_cell(r.reference, ref_ci, None, ""),
                value_cell=_cell(r.value, ci, ref_ci, "the reference's"))


def _atlas(site: Site) -> Content:
    atlas, p = site.data.atlas, site.data.points
    notes = list(dict.fromkeys(a.note for a in atlas.anchors if a.note))
    shared = notes[0] if len(notes) == 1 and all(a.note for a in atlas.anchors) else ""  # said once, above
    anchors = [dict(anchor=a.anchor, anchor_thumb=int(p["thumb"].iat[a.anchor]), anchor_id=str(p["sample_id"].iat[a.anchor]),
                    anchor_class=int(p["class_id"].iat[a.anchor]),
                    neighbours=[(int(j), int(p["thumb"].iat[j])) for j in a.neighbours if 0 <= j < len(p)],
                    thumb=a.thumb, conditioning=a.conditioning, note="" if shared else a.note) for a in atlas.anchors]
    n_nbrs = sorted({len(a["neighbours"]) for a in anchors})
    return Content(dict(atlas=atlas, anchors=anchors, names=site.names, n_grid=len(atlas.grid),
                        shared_note=shared, n_neighbours=n_nbrs[-1] if n_nbrs else 0,
                        shape=figures.atlas_shape(atlas.grid)[:2] if len(atlas.grid) else (1, 1)),
                   {"plot": figures.atlas_figure(site.view)} if len(atlas.grid) else {})


# The report's pages, in navigation order.
PAGES = [
    Page("index", "Overview", _index),
    Page("map", "Map", _map),
    Page("variants", "Variants", _variants),
    Page("classes", "Classes", _classes, children=_class_pages),
    Page("metrics", "Metrics", _metrics),
    Page("galleries", "Galleries", _galleries, shown=lambda data: bool((data.points["variant"] == "class").any())),
    Page("compare", "Compare", _compare, shown=lambda data: data.comparison is not None),
    Page("atlas", "Atlas", _atlas, shown=lambda data: data.atlas is not None),
]


def site_pages(site: Site, user_dir: Path | None) -> list[Page]:
    """The pages of this report: each declared page it shows, followed by its children, then the user's own."""
    pages = []
    for page in PAGES:
        if page.shown(site.data):
            pages += [page, *(page.children(site) if page.children else [])]
    return pages + user_pages(user_dir, {p.name for p in pages})


def navigation(pages: list[Page]) -> list[tuple[str, str, str]]:
    """(name, file, title) of each navigation entry: every page that is an entry of its own, in order."""
    return [(p.name, p.file, p.title) for p in pages if p.nav == p.name]


USER_PAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def user_pages(user_dir: Path | None, taken: set[str]) -> list[Page]:
    """The user folder's own pages: each top-level `*.html` that is neither one of our template names
    (those replace ours) nor a partial (a name starting with `_`, for includes and macros). Title: the
    file stem, dashes and underscores as spaces, first letter capitalised ("about-us.html": "About us").
    They get the context every page gets and no page-specific one."""
    if user_dir is None:
        return []
    ours = {p.name for p in templates_dir().glob("*.html")}
    pages = []
    for f in sorted(user_dir.glob("*.html")):
        if f.name in ours or f.name.startswith("_") or not f.is_file():
            continue
        stem = f.stem
        # The stem becomes a file name, a link and, in the single-file report, an anchor (#page=stem).
        if not USER_PAGE_NAME.fullmatch(stem):
            raise UserError(f"{f}: report.template_dir: page names may hold letters, digits, - and _ only "
                            f"(and start with a letter or digit); rename it or start it with _ to make it a partial")
        if stem in taken:
            raise UserError(f"{f}: report.template_dir: {stem!r} is already a page of the report; rename it")
        title = stem.replace("-", " ").replace("_", " ")
        pages.append(Page(stem, title[:1].upper() + title[1:], lambda site: Content({})))
    return pages


# ---------------------------------------------------------------------------------------------
# Pieces of the pages' tables.

def _metric_heads(keys) -> list[dict]:
    """Each metric column's words and colour, from the one declaration (metric_defs.METRICS); a column the
    declaration does not know (a user's own ReportData) keeps its key as its label."""
    out = []
    for k in keys:
        m = METRICS.get(k)
        out.append(dict(key=k, label=m.label if m else k, explanation=m.explanation if m else "",
                        colour=m.colour if m else palette.REAL_COLOUR))
    return out


def class_metric_columns(per_class: pd.DataFrame) -> tuple[list[str], str]:
    """The per-class metric columns worth a column, and a note on one left out: coverage by any sample is
    shown only where it differs from coverage in some class (as displayed, 3 decimals)."""
    cols = [c for c in per_class.columns if c not in ("class_id", "n_real", "n_gen")]
    if {"coverage", "coverage_global"} <= set(cols):
        a, b = (per_class[c].to_numpy(np.float64).round(3) for c in ("coverage", "coverage_global"))
        if np.array_equal(a, b, equal_nan=True):
            cols.remove("coverage_global")
            g, c = METRICS["coverage_global"], METRICS["coverage"]
            return cols, (f"{g.label} (any generated sample, whatever its class, with the whole real set's radii) "
                          f"equals {c.label.lower()} in every class here, so it has no column.")
    return cols, ""


def _fd_scale(m) -> dict | None:
    """FD on the scale of the real set's own: the real set's two halves against each other, then each variant's
    generated set against the real set, as bars of one length scale (widths in % of the longest)."""
    fd = m.fd
    if fd is None or fd.real_halves is None or not np.isfinite(fd.value):
        return None
    rows = [dict(label="real against real (two halves)", value=fd.real_halves, reference=True,
                 counts=f"{fd.n_halves[0]:,} and {fd.n_halves[1]:,} real")]
    pv = m.per_variant
    if "fd" in pv.columns and len(pv):
        rows += [dict(label=f"{r.variant} against real", value=float(r.fd), reference=False, counts=f"{int(r.n_gen):,} generated")
                 for r in sorted(pv.itertuples(), key=lambda r: r.variant != "class") if pd.notna(r.fd)]
    else:
        rows.append(dict(label="generated against real", value=fd.value, reference=False, counts=f"{fd.n_gen:,} generated"))
    top = max(r["value"] for r in rows) or 1.0
    for r in rows:
        r["width"] = round(100 * r["value"] / top, 1)
        r["times"] = r["value"] / fd.real_halves if fd.real_halves > 0 and not r["reference"] else None
    return dict(rows=rows, colour=METRICS["fd"].colour, reference=fd.real_halves,
                times=fd.value / fd.real_halves if fd.real_halves > 0 else None)


def _definitions(keys) -> list[dict]:
    """The metrics page's one "Definitions" section: each declared metric its tables show, once, with its words, its
    formula, its per-class and real-set variants (metric_defs.METRICS); every table's header links to it."""
    out = []
    for k in dict.fromkeys(k for k in keys if k in METRICS):
        m = METRICS[k]
        out.append(dict(key=k, label=m.label, colour=m.colour, explanation=m.explanation,
                        **{f: _readable(getattr(m, f)) for f in ("definition", "in_class", "reference",
                                                                  "reference_in_class")}))
    return out


def _readable(text: str) -> str:
    """A metrics.json definition in the page's words: metric keys (`fd`, `class_fidelity`, `fd_real`) as labels."""
    words = {"fd_real": "the real set's two-halves Fréchet distance"} | {k: m.label for k, m in METRICS.items()}
    return re.sub(r"\b(" + "|".join(sorted(words, key=len, reverse=True)) + r")\b", lambda g: words[g.group(1)], text)


def _cell(value, interval, against, against_words: str) -> dict:
    """A table's metric cell: its value, its 95% interval where bootstrapped, and `mark` "above" or "below" where
    that interval lies wholly above or below the interval `against` (the two do not overlap), with words saying so."""
    lo, hi = interval if interval is not None else (np.nan, np.nan)
    cell = dict(value=value, lo=lo, hi=hi, mark="", words="")
    if interval is not None and against is not None and all(np.isfinite([lo, hi, *against])):
        cell["mark"] = "above" if lo > against[1] else "below" if hi < against[0] else ""
        if cell["mark"]:
            cell["words"] = f"interval wholly {cell['mark']} {against_words} [{against[0]:.3f}, {against[1]:.3f}]"
    return cell


def _variant_table(m, keys) -> dict:
    """The per-variant table: each variant's cells with intervals, marked against the class-conditioned set's first
    seeds (`Metrics.matched`: the same seeds and classes, so the same count) or else the whole class set; and the
    caution where the variants' sample counts differ."""
    pv = m.per_variant
    if not len(pv):
        return dict(rows=[], caution="", base="")
    base = m.matched or "class"
    base_n = dict(zip(pv["variant"], pv["n_gen"]))
    rows = []
    for r in pv.to_dict("records"):
        v, own = r["variant"], r["variant"] in (base, "class")
        cells = [_cell(r.get(k), m.intervals.get(("variant", v, k)),
                       None if own else m.intervals.get(("variant", base, k)), f"{base}'s") for k in keys]
        for k, cell in zip(keys, cells):   # every FD beside the real set's own (its two halves)
            if k == "fd" and m.fd is not None and m.fd.real_halves is not None:
                cell["real"] = m.fd.real_halves
        rows.append(dict(variant=v, n_gen=r["n_gen"], cells=cells, matched=v == m.matched))
    counts = sorted(set(int(n) for n in pv["n_gen"]))
    caution = ""
    if len(counts) > 1:
        caution = (f"The sets differ in size ({', '.join(f'{n:,}' for n in counts)} samples), and coverage grows with "
                   f"the number of samples: compare a variant with a set of its own size"
                   + (f", the row \"{m.matched}\" (the class-conditioned samples of the same seeds and classes as "
                      f"every other variant, {int(base_n[m.matched]):,} samples); marks ▲▼ compare with it."
                      if m.matched else "."))
    return dict(rows=rows, caution=caution, base=base)


def _one_step_note(m) -> str:
    """The class-conditioned one-step set's scores against the real set, for the few-step panel to be read by."""
    o = m.overall.set_index("key")
    keys = [k for k in ("precision", "recall", "coverage") if k in o.index and pd.notna(o.at[k, "value"])]
    if not keys:
        return ""
    n = int(o.at[keys[0], "n_gen"])
    return (f"For comparison, the one-step class-conditioned set ({n:,} samples) against the same real set: "
            + ", ".join(f"{METRICS[k].label.lower()} {o.at[k, 'value']:.2f}" for k in keys) + ".")


def _delta(key: str, delta: float) -> tuple[str, str]:
    """(text, direction) of a delta: `better` or `worse` by the metric's direction (metric_defs), "" when none and
    when it shows as zero (a delta that rounds to ±0.000 is neutral, whatever its sign)."""
    if not math.isfinite(delta):
        return "–", ""
    text = f"{delta:+.3f}"
    if float(text) == 0:
        return text, ""
    better = delta > 0 if METRICS[key].higher_is_better else delta < 0
    return text, "better" if better else "worse"


def _better(key: str) -> str:
    return f"{'higher' if METRICS[key].higher_is_better else 'lower'} is better"
