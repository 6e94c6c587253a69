"""Render a ReportData into the static site (a folder, or one inlined HTML file).

The site is written into a temporary sibling folder and swapped in at the end (files.replacing),
so a failure (disk full: one line naming the file) never leaves a half-written site that looks
complete, and the previous site stays as it was. Temporary folders of killed renders are removed
first. BokehJS is copied from the installed
bokeh package into site/static/ (one copy shared by all pages); nothing is loaded from a CDN.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from bokeh.embed import components
from bokeh.util.paths import bokehjs_path

from .. import files
from ..errors import UserError
from ..metric_defs import METRICS
from ..resources import static_file, templates_dir, user_template_dir, user_template_files
from . import figures, palette, sprites
from .data import COVER_DIFF, ReportData, is_class_set
from .view import MAX_COVERED_BY, SiteView, class_grid_rows, site_view, variant_selection

BOKEH_FILES = ["bokeh.min.js", "bokeh-gl.min.js"]
SITE_MARKER = ".dmd2report-site"     # marks a folder as a rendered site, so re-rendering may replace it
THUMB_PX = 64                        # displayed thumbnail side in grids and panels
MAX_SKIPPED = 100                    # unreadable images listed on the overview (the manifest has them all)
# The map's colour-by choices (config.MAP_COLOURS) in the words of its control.
COLOUR_BY_WORDS = {"class": "class", "variant": "conditioning variant", "trust": "map trust",
                   "covered": "covered / not covered (real)", "distance": "distance to nearest real (generated)"}
# The choices a comparison ([[generators]]) adds to the control.
COMPARE_COLOUR_WORDS = {"generator": "generator", "coverdiff": "coverage difference (real)"}
MAX_CLASS_DELTAS = 20               # rows of each per-class delta table on the comparison page
MAX_CLASS_BARS = 30                  # classes in the metrics page's per-class chart (those with the lowest coverage)

log = logging.getLogger(__name__)


def json_for_script(obj) -> str:
    """JSON safe to place inside <script>: no '</script>', '<!--' or line separators can break out."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
             .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(a: np.ndarray, digits: int) -> list:
    a = np.round(np.asarray(a, float), digits)
    return [None if not math.isfinite(v) else v for v in a.tolist()]


def _ints(a) -> list:
    return np.asarray(a).astype(np.int64).tolist()


def _site_data(view: SiteView, layout: sprites.SpriteLayout) -> dict:
    """What the site JS needs per carried point (hover, neighbours, search, selection), columnar.
    Neighbour lists are the full-N lists: an entry whose point the site does not carry has row -1, its
    distance and its class (rc/gc); padding has row -1 and a null distance. coveredBy is CSR: real
    site row i is covered by `n[i]` generated samples (all N), of which rows[off[i]:off[i+1]] are carried."""
    data, full = view.site, view.full
    p, P = data.points, full.points
    variant_names = list(dict.fromkeys(P["variant"]))
    nb = data.neighbours
    cb = data.covered_by
    n_real_cls = P[P["set"] == "real"]["class_id"].value_counts()
    n_cond_cls = P[P["variant"] == "class"]["class_id"].value_counts()
    n_other_cls = P[(P["set"] == "generated") & (P["variant"] != "class")]["class_id"].value_counts()
    return {
        "classes": {str(int(c)): [str(s), str(n)] for c, s, n in data.classes[["class_id", "synset", "name"]].itertuples(index=False)},
        # per class: real, class-conditioned, and other conditionings' samples that share its seeds (all N)
        "classCounts": {str(int(c)): [int(n_real_cls.get(c, 0)), int(n_cond_cls.get(c, 0)), int(n_other_cls.get(c, 0))]
                        for c in sorted(set(n_real_cls.index) | set(n_cond_cls.index) | set(n_other_cls.index))},
        "variants": variant_names,
        "style": _map_style(view, variant_names),
        "site": {"drawn": view.n_drawn, "total": view.n_total, "capped": view.capped,
                 "real": int((P["set"] == "real").sum()), "gen": int((P["set"] == "generated").sum())},
        "points": {
            "gen": (p["set"] == "generated").astype(int).tolist(),
            "variant": p["variant"].map({v: i for i, v in enumerate(variant_names)}).astype(int).tolist(),
            "id": p["sample_id"].astype(str).tolist(),
            "cls": p["class_id"].astype(int).tolist(),
            "x": _finite(p["x"], 4), "y": _finite(p["y"], 4),
            "src": p["source"].astype(str).tolist(),
            "thumb": p["thumb"].astype(int).tolist(),
            "covered": p["covered"].fillna(False).astype(bool).astype(int).tolist(),
            "trust": _finite(p["trust"], 3),
            "drawn": view.drawn.astype(int).tolist(),
        } | ({"generator": p["generator"].map({g: i for i, g in enumerate(data.comparison.generators)}).fillna(-1)
                           .astype(int).tolist(),
              "coverDiff": p["cover_diff"].astype(int).tolist()} if data.comparison is not None else {}),
        "nb": {"k": int(nb.real_index.shape[1]), "layer": nb.layer,
               "ri": _ints(nb.real_index.ravel()), "rd": _finite(nb.real_dist.ravel(), 4), "rc": _ints(view.nb_real_class.ravel()),
               "gi": _ints(nb.gen_index.ravel()), "gd": _finite(nb.gen_dist.ravel(), 4), "gc": _ints(view.nb_gen_class.ravel())},
        "coveredBy": {"n": _ints(view.covered_count), "off": _ints(cb.offsets), "rows": _ints(cb.values),
                      "k": _k_dc(full), "shown": MAX_COVERED_BY,
                      "r": _finite(data.cover_radius if data.cover_radius is not None else np.full(len(p), np.nan), 4)},
        "sprites": layout.to_json(),
        "traj": _trajectory_data(data.trajectories),
    }


def _k_dc(data: ReportData) -> int:
    """The k of coverage's k-NN balls: the run's metrics.k_dc (the configured default when data has no config)."""
    from ..config import MetricsConfig
    k = (data.run.config.get("metrics") or {}).get("k_dc")
    return int(k if k is not None else MetricsConfig().k_dc)


def _map_style(view: SiteView, variant_names: list[str]) -> dict:
    """What site.js colours the map with, for every colour-by choice: class and variant colours (the
    same assignment as the figure's density images and labels), the ramp, the real and covered
    colours, each variant's marker and words, the full-N counts the key shows, and the range of the
    generated samples' distances to their nearest real sample (5th to 95th percentile, all N)."""
    full = view.full
    P = full.points
    own, rest = figures.class_colours(P)
    gen_names = [v for v in variant_names if v != "real"]
    gen = (P["set"] == "generated").to_numpy()
    d = np.asarray(full.neighbours.real_dist, np.float64)[gen, 0] if gen.any() else np.zeros(0)
    d = d[np.isfinite(d)]
    real = ~gen
    covered = P["covered"].fillna(False).astype(bool).to_numpy()
    return {
        "classes": {str(c): [col, ring] for c, col, ring in own}, "rest": {str(c): col for c, col in rest.items()},
        "variants": {v: {"colour": col, "marker": palette.VARIANT_SYMBOLS.get(palette.variant_marker(v, gen_names), "●"),
                         "words": palette.VARIANT_WORDS.get(v, (v, v))[0], "label": palette.VARIANT_WORDS.get(v, (v, v))[1],
                         "n": int((P["variant"] == v).sum()), "classSet": is_class_set(v)}
                     for v, col in palette.variant_colours(gen_names).items()},
        "ramp": palette.RAMP, "real": palette.REAL_COLOUR, "ring": palette.RING_COLOUR,
        "covered": [palette.COVERED_COLOUR, int((real & covered).sum())],
        "uncovered": [palette.UNCOVERED_COLOUR, int((real & ~covered).sum())],
        "dist": [float(np.percentile(d, 5)), float(np.percentile(d, 95))] if len(d) else [0.0, 1.0],
        "trust": METRICS["trust"].explanation,
    } | (_compare_style(full) if full.comparison is not None else {})


def _compare_style(full: ReportData) -> dict:
    """The comparison's map colours: one per generator (with its full-N count), and the coverage difference's
    four kinds (words, colour, full-N count of real points)."""
    n_of = full.points["generator"].value_counts()
    return {"generators": [[g, c, int(n_of.get(g, 0))] for g, c in palette.generator_colours(full.comparison.generators).items()],
            "coverDiff": [list(r) for r in _cover_diff_kinds(full)]}


def _trajectory_data(traj) -> dict | None:
    """Per path step and per noised-real reference: what the hover card shows (rows as in the figure)."""
    if traj is None:
        return None
    s, r = traj.steps.reset_index(drop=True), traj.real.reset_index(drop=True)
    last = s.groupby("path")["thumb"].transform("last") if len(s) else s["thumb"]
    return {
        "sigmas": [float(v) for v in traj.sigmas], "conditioning": traj.conditioning,
        # Every stored path is here; site.js draws the shown ones, plus all paths of a searched class.
        "labels": [figures.sigma_label(v) for v in traj.sigmas], "colours": figures.step_colours(len(traj.sigmas)),
        "perClass": _shown_per_class(s),
        "steps": {"path": s["path"].astype(int).tolist(), "step": s["step"].astype(int).tolist(),
                  "cls": s["class_id"].astype(int).tolist(), "thumb": s["thumb"].astype(int).tolist(),
                  "final": last.astype(int).tolist(), "src": s["source"].astype(str).tolist(),
                  "shown": s["shown"].astype(bool).astype(int).tolist(),
                  "x": _finite(s["x"], 4), "y": _finite(s["y"], 4)},
        "real": {"step": r["step"].astype(int).tolist(), "cls": r["class_id"].astype(int).tolist(),
                 "thumb": r["thumb"].astype(int).tolist(), "src": r["source"].astype(str).tolist(),
                 "x": _finite(r["x"], 4), "y": _finite(r["y"], 4)},
    }


def _shown_per_class(steps: pd.DataFrame) -> int:
    """Paths drawn by default for each class (the most any class has: classes with fewer stored show all)."""
    shown = steps[steps["shown"].astype(bool)]
    return int(shown.groupby("class_id")["path"].nunique().max()) if len(shown) else 0


class _Thumbs:
    """Template helper: the inline style that shows thumbnail i from its sprite sheet."""

    def __init__(self, layout: sprites.SpriteLayout):
        self.layout = layout

    def __call__(self, index: int, px: int = THUMB_PX) -> dict | None:
        if index is None or int(index) < 0:
            return None
        lay = self.layout
        sheet, col, row = lay.locate(index)
        return {"sheet": sheet, "style": f"width:{px}px;height:{px}px;background-position:-{col * px}px -{row * px}px;"
                                         f"background-size:{lay.cols * px}px {lay.rows * px}px"}


def _environment(user_dir: Path | None = None) -> jinja2.Environment:
    """The Jinja environment. A user folder (`report.template_dir`) is searched first, as mkdocs'
    custom_dir: its `base.html` replaces ours for every page, and `default:NAME` always reaches our
    own, so it can extend the template it replaces. Autoescape is on for every template, user ones
    too (`autoescape=True`, not by file extension): data strings stay escaped whoever writes the markup."""
    defaults = jinja2.FileSystemLoader(str(templates_dir()))
    loaders = [jinja2.PrefixLoader({"default": defaults}, delimiter=":"), defaults]
    if user_dir is not None:
        loaders.insert(0, jinja2.FileSystemLoader(str(user_dir)))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _fmt_num
    env.filters["int"] = lambda v: f"{int(v):,}" if v is not None and pd.notna(v) else "–"
    return env


def _fmt_num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
        return "–"
    return f"{float(v):.{digits}f}"


def _static_text(name: str) -> str:
    return static_file(name).read_text(encoding="utf-8")


def _class_colours(data: ReportData) -> dict[int, str]:
    own, rest = figures.class_colours(data.points)
    return {**{c: col for c, col, _ in own}, **rest}


def _metric_heads(keys) -> list[dict]:
    """Each metric column's words and colour, from the one declaration (metric_defs.METRICS); a column the
    declaration does not know (a user's own ReportData) keeps its key as its label."""
    out = []
    for k in keys:
        m = METRICS.get(k)
        out.append(dict(key=k, label=m.label if m else k, explanation=m.explanation if m else "",
                        colour=m.colour if m else palette.REAL_COLOUR))
    return out


def _class_metric_columns(per_class: pd.DataFrame) -> tuple[list[str], str]:
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


def _one_step_note(m) -> str:
    """The class-conditioned one-step set's scores against the real set, for the few-step panel to be read by."""
    o = m.overall.set_index("key")
    keys = [k for k in ("precision", "recall", "coverage") if k in o.index and pd.notna(o.at[k, "value"])]
    if not keys:
        return ""
    n = int(o.at[keys[0], "n_gen"])
    return (f"For comparison, the one-step class-conditioned set ({n:,} samples) against the same real set: "
            + ", ".join(f"{METRICS[k].label.lower()} {o.at[k, 'value']:.2f}" for k in keys) + ".")


def _pages(view: SiteView, color_by: str, reuse_figures: bool = True) -> list[dict]:
    """Every page: name, file, title, nav section, template, template context, Bokeh models.
    Counts and tables come from the full data (`view.full`); rows and thumbnails from the site's
    points (`view.site`)."""
    data, full = view.site, view.full
    p, P, m = data.points, full.points, data.metrics
    cls = data.classes.set_index("class_id")
    names = {int(c): str(n) for c, n in cls["name"].items()}
    synsets = {int(c): str(s) for c, s in cls["synset"].items()}
    chosen = data.chosen_classes
    colours = _class_colours(full)
    variant_names = [v for v in dict.fromkeys(P["variant"]) if v != "real"]
    pages = []
    overall = m.overall.to_dict("records")
    fd_scale = _fd_scale(m)
    for r in overall:   # FD reads against the real set's own (its card and table row say so)
        r["reference"] = (f"real against real: {fd_scale['reference']:.2f}" if r["key"] == "fd" and fd_scale else "")
    pages.append(dict(name="index", file="index.html", title="Overview", nav="index", template="index.html",
                      ctx=dict(cards=[r for r in overall if r.get("headline")],
                               compared=data.comparison.generators if data.comparison is not None else [],
                               variant_names=variant_names, n_classes=int(P["class_id"][P["class_id"] >= 0].nunique()),
                               has_atlas=data.atlas is not None, config_json=json.dumps(data.run.config, indent=2, default=str),
                               skipped=[dict(source=str(s.get("source", "")), error=str(s.get("error", "")))
                                        for s in data.skipped[:MAX_SKIPPED]], n_skipped=len(data.skipped)),
                      models={}))
    traj = data.trajectories
    map_models = {"plot": figures.map_figure(view)}
    traj_ctx = None
    if traj is not None:
        map_models["trajsteps"] = figures.step_metrics_figure(traj)
        shown = traj.steps[traj.steps["shown"].astype(bool)]
        traj_ctx = dict(sigmas=traj.sigmas, n_paths=int(traj.steps["path"].nunique()), n_shown=int(shown["path"].nunique()),
                        per_class=_shown_per_class(traj.steps), has_classes=bool((traj.steps["class_id"] >= 0).any()),
                        n_refs=int(traj.real["ref"].nunique()) if len(traj.real) else 0, conditioning=traj.conditioning,
                        note=" ".join(t for t in (traj.note, _one_step_note(m)) if t),
                        heads=_metric_heads(("precision", "recall", "coverage")),
                        colours=list(zip(traj.sigmas, figures.step_colours(len(traj.sigmas)))),
                        metrics=traj.metrics.sort_values(["step", "reference"]).to_dict("records"))
    pages.append(dict(name="map", file="map.html", title="Map", nav="map", template="map.html",
                      ctx=dict(color_by=color_by, n_drawn=view.n_drawn,
                               colour_choices=list(COLOUR_BY_WORDS.items()) + (list(COMPARE_COLOUR_WORDS.items())
                                                                               if data.comparison is not None else []),
                               n_total=view.n_total, has_variants=len(variant_names) > 1,
                               capped=view.capped, max_points=view.max_points,
                               class_options=[(c, names[c], synsets[c]) for c in sorted(names)], traj=traj_ctx),
                      models=map_models))
    # Variants: the same seeds under each conditioning; the page opens on a few classes, its selector offers all.
    v = data.variants
    var_classes, carried = variant_selection(v, chosen) if len(v) else ([], v)
    shown = carried[carried["class_id"].isin(var_classes)] if len(carried) else carried
    var_tables = []
    for c, vc in carried.groupby("class_id", sort=True) if len(carried) else ():  # a few seeds each
        c = int(c)
        seeds = list(dict.fromkeys(vc["seed_index"]))
        cols = [x for x in dict.fromkeys(vc["variant"])]
        rows = []
        for s in seeds:
            cells = {r.variant: int(r.point) for r in vc[vc["seed_index"] == s].itertuples()}
            rows.append((int(s), [(cells.get(col), int(p["thumb"].iat[cells[col]]) if col in cells else -1) for col in cols]))
        var_tables.append(dict(class_id=c, name=names.get(c, str(c)), variants=cols, rows=rows, open=c in var_classes))
    n_var_seeds = full.variants.drop_duplicates(["class_id", "seed_index"]).groupby("class_id").size() \
        if len(full.variants) else pd.Series(dtype=int)
    for t in var_tables:
        t["n_seeds"] = int(n_var_seeds.get(t["class_id"], 0))
    pages.append(dict(name="variants", file="variants.html", title="Variants", nav="variants", template="variants.html",
                      ctx=dict(tables=var_tables, n_variant_rows=len(full.variants),
                               open_names=", ".join(f"{c} {names.get(c, c)}" for c in var_classes)),
                      models={"plot": figures.variants_figure(view, shown)} if len(shown) else {}))
    # Classes: an index, then one page per chosen class.
    per_class = m.per_class.set_index("class_id") if len(m.per_class) else pd.DataFrame()
    class_metric_cols, class_note = _class_metric_columns(m.per_class)
    class_heads = _metric_heads(class_metric_cols)
    counts_real = P[P["set"] == "real"]["class_id"].value_counts()
    # A class's generated samples are those conditioned on it; the other conditionings' samples carry
    # their seed's class id but are counted apart (n_other), as what shares the class's seeds.
    counts_gen = P[P["variant"] == "class"]["class_id"].value_counts()
    counts_other = P[(P["set"] == "generated") & (P["variant"] != "class")]["class_id"].value_counts()
    present = sorted(int(c) for c in set(counts_real.index) | set(counts_gen.index) if c >= 0)
    class_rows = [dict(class_id=c, name=names.get(c, str(c)), synset=synsets.get(c, ""), n_real=int(counts_real.get(c, 0)),
                       n_gen=int(counts_gen.get(c, 0)), n_other=int(counts_other.get(c, 0)), has_page=c in chosen,
                       metrics=[per_class.at[c, k] if c in per_class.index else None for k in class_metric_cols])
                  for c in present]
    pages.append(dict(name="classes", file="classes.html", title="Classes", nav="classes", template="classes.html",
                      ctx=dict(rows=class_rows, heads=class_heads, class_note=class_note, n_pages=len(chosen)), models={}))
    class_fig = figures.ClassFigure(view) if reuse_figures else view

    def _class_plot(fig, c, colour):  # the shared figure is serialised now, before the next class refills it
        if isinstance(fig, figures.ClassFigure):
            return dict(models={}, embedded=fig.components(c, colour, f"cls{c}"))
        return dict(models={"plot": figures.class_figure(view, c, colour, f"cls{c}")})
    grid = class_grid_rows(P, chosen)
    grid = pd.DataFrame({"class_id": grid["class_id"].to_numpy(), "set": grid["set"].to_numpy(),
                         "row": view.local[grid.index.to_numpy()]})
    grid["thumb"] = p["thumb"].to_numpy()[grid["row"].to_numpy()]
    for c in chosen:  # one page per class
        sub = grid[grid["class_id"] == c]
        real_thumbs = [(int(i), int(t)) for i, t in sub[sub["set"] == "real"][["row", "thumb"]].itertuples(index=False)]
        gen_thumbs = [(int(i), int(t)) for i, t in sub[sub["set"] == "generated"][["row", "thumb"]].itertuples(index=False)]
        row = next(r for r in class_rows if r["class_id"] == c)
        pages.append(dict(name=f"class-{c}", file=f"classes/class-{c}.html", title=f"Class {c}: {names.get(c, c)}",
                          nav="classes", template="class.html",
                          ctx=dict(cls=row, heads=class_heads, class_note=class_note, real_thumbs=real_thumbs,
                                   gen_thumbs=gen_thumbs),
                          **_class_plot(class_fig, c, colours.get(c, palette.PALETTE[0]))))
    # Metrics.
    mmodels = {"coverage": figures.coverage_figure(view), "nnhist": figures.nn_histogram(data)}
    var_metric_cols = [c for c in m.per_variant.columns if c not in ("variant", "n_gen")]
    bar_cols = [c for c in ("precision", "recall", "density", "coverage") if c in var_metric_cols] or var_metric_cols[:4]
    if len(m.per_variant) and bar_cols:
        mmodels["variantbars"] = figures.bar_chart(m.per_variant, "variant", bar_cols, "variantbars",
                                                   f"Each conditioning variant's generated set against the real set "
                                                   f"({len(m.per_variant)} variants)")
    cbar_cols = [c for c in ("precision", "recall", "coverage") if c in class_metric_cols]
    if len(m.per_class) and cbar_cols:
        worst = m.per_class.sort_values(cbar_cols[-1], na_position="last").head(MAX_CLASS_BARS)
        worst = worst.assign(label=[f"{int(c)} {names.get(int(c), '')}"[:28] for c in worst["class_id"]])
        lowest = METRICS[cbar_cols[-1]].label.lower()
        title = (f"All {len(worst)} classes, lowest {lowest} first" if len(worst) == len(m.per_class) else
                 f"The {len(worst)} classes with the lowest {lowest}, of {len(m.per_class):,}")
        mmodels["classbars"] = figures.bar_chart(worst, "label", cbar_cols, "classbars", title)
    trust = METRICS["trust"]
    pages.append(dict(name="metrics", file="metrics.html", title="Metrics", nav="metrics", template="metrics.html",
                      ctx=dict(overall=overall, fd=m.fd, fd_head=_metric_heads(["fd"])[0], fd_scale=fd_scale, layer=m.layer,
                               per_variant=m.per_variant.to_dict("records"), var_heads=_metric_heads(var_metric_cols),
                               class_rows=class_rows, class_heads=class_heads, class_note=class_note,
                               trust=dict(label=trust.label, reading=trust.reading, shown=(m.overall["key"] == "trust").any())),
                      models=mmodels))
    if data.comparison is not None:
        pages.append(dict(name="compare", file="compare.html", title="Compare", nav="compare", template="compare.html",
                          ctx=dict(cmp=_compare_context(view, names)), models={}))
    if data.atlas is not None:
        notes = list(dict.fromkeys(a.note for a in data.atlas.anchors if a.note))
        shared = notes[0] if len(notes) == 1 and all(a.note for a in data.atlas.anchors) else ""  # said once, above
        anchors = [dict(anchor=a.anchor, anchor_thumb=int(p["thumb"].iat[a.anchor]), anchor_id=str(p["sample_id"].iat[a.anchor]),
                        anchor_class=int(p["class_id"].iat[a.anchor]),
                        neighbours=[(int(j), int(p["thumb"].iat[j])) for j in a.neighbours if 0 <= j < len(p)],
                        thumb=a.thumb, conditioning=a.conditioning, note="" if shared else a.note) for a in data.atlas.anchors]
        n_nbrs = sorted({len(a["neighbours"]) for a in anchors})
        pages.append(dict(name="atlas", file="atlas.html", title="Atlas", nav="atlas", template="atlas.html",
                          ctx=dict(atlas=data.atlas, anchors=anchors, names=names, n_grid=len(data.atlas.grid),
                                   shared_note=shared, n_neighbours=n_nbrs[-1] if n_nbrs else 0,
                                   shape=figures.atlas_shape(data.atlas.grid)[:2] if len(data.atlas.grid) else (1, 1)),
                          models={"plot": figures.atlas_figure(view)} if len(data.atlas.grid) else {}))
    return pages


def _delta(key: str, delta: float) -> tuple[str, str]:
    """(text, direction) of a delta: `better` or `worse` by the metric's direction (metric_defs), "" when none."""
    if not math.isfinite(delta):
        return "–", ""
    better = delta > 0 if METRICS[key].higher_is_better else delta < 0
    return f"{delta:+.3f}", "" if delta == 0 else "better" if better else "worse"


def _cover_diff_kinds(full: ReportData) -> list[tuple[str, str, int]]:
    """(words, colour, real points) of each COVER_DIFF kind, the pair named: neither, A only (name), B only (name),
    both; counts over every real point."""
    cmp, P = full.comparison, full.points
    codes = np.bincount(P["cover_diff"].to_numpy(np.int64)[P["set"].to_numpy() == "real"], minlength=len(COVER_DIFF))
    words = [w + {1: f" ({cmp.a})", 2: f" ({cmp.b})"}.get(i, "") for i, w in enumerate(COVER_DIFF)]
    return [(w, c, int(n)) for w, c, n in zip(words, palette.COVER_DIFF_COLOURS, codes)]


def _better(key: str) -> str:
    return f"{'higher' if METRICS[key].higher_is_better else 'lower'} is better"


def _compare_context(view: SiteView, names: dict[int, str]) -> dict:
    """The comparison page: metrics side by side, the coverage difference's counts, the largest per-class
    changes and the same-seed grids (Comparison in data.py)."""
    cmp, p, P = view.site.comparison, view.site.points, view.full.points
    overall = []
    for key, rows in cmp.overall.groupby("key", sort=False):
        spec = METRICS[key]
        cells = []
        for r in rows.itertuples():
            text, direction = _delta(key, r.delta)
            cells.append(dict(generator=r.generator, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high,
                              ci=bool(np.isfinite(r.ci_low) and np.isfinite(r.ci_high)), separated=bool(r.separated),
                              delta_text=text, direction=direction,
                              words=f"{r.generator} minus {cmp.generators[0]} ({_better(key)})"))
        overall.append(dict(key=key, label=spec.label, explanation=spec.explanation, colour=spec.colour, cells=cells))
    n_real = max(1, int((P["set"] == "real").sum()))
    coverage = [(w, c, n, n / n_real) for w, c, n in _cover_diff_kinds(view.full)]
    class_tables = []
    for (g, key), rows in cmp.per_class.groupby(["generator", "key"], sort=False):
        rows = rows[np.isfinite(rows["delta"].to_numpy(np.float64))].head(MAX_CLASS_DELTAS)
        class_tables.append(dict(generator=g, key=key, label=METRICS[key].label, rows=[
            dict(class_id=int(r.class_id), name=names.get(int(r.class_id), str(r.class_id)), reference=r.reference,
                 value=r.value, **dict(zip(("delta_text", "direction"), _delta(key, r.delta)))) for r in rows.itertuples()]))
    seed_tables = []
    seeds = cmp.seeds[cmp.seeds["point"] >= 0]
    for c, sc in seeds.groupby("class_id", sort=True):
        rows = []
        for seed, ss in sc.groupby("seed_index", sort=False):
            at = dict(zip(ss["generator"], ss["point"].astype(int)))
            rows.append((int(seed), [(g, at.get(g), int(p["thumb"].iat[at[g]]) if g in at else -1) for g in cmp.generators]))
        seed_tables.append(dict(class_id=int(c), name=names.get(int(c), str(c)), rows=rows))
    return dict(generators=cmp.generators, encoder=cmp.generators[0], space=cmp.feature_space, a=cmp.a, b=cmp.b,
                k_dc=_k_dc(view.full), overall=overall, coverage=coverage, class_tables=class_tables,
                max_rows=MAX_CLASS_DELTAS, seed_tables=seed_tables,
                direction_note=" ".join(f"{METRICS[k].label}: {_better(k)}." for k in dict.fromkeys(cmp.overall["key"])))


def _nav(has_atlas: bool, extra: list[dict] = (), has_comparison: bool = False) -> list[tuple[str, str, str]]:
    nav = [("index", "index.html", "Overview"), ("map", "map.html", "Map"), ("variants", "variants.html", "Variants"),
           ("classes", "classes.html", "Classes"), ("metrics", "metrics.html", "Metrics")]
    if has_comparison:
        nav.append(("compare", "compare.html", "Compare"))
    if has_atlas:
        nav.append(("atlas", "atlas.html", "Atlas"))
    return nav + [(p["nav"], p["file"], p["title"]) for p in extra]


EXTRA_PAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _extra_pages(user_dir: Path | None, taken: set[str]) -> list[dict]:
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
        if not EXTRA_PAGE_NAME.fullmatch(stem):
            raise UserError(f"{f}: report.template_dir: page names may hold letters, digits, - and _ only "
                            f"(and start with a letter or digit); rename it or start it with _ to make it a partial")
        if stem in taken:
            raise UserError(f"{f}: report.template_dir: {stem!r} is already a page of the report; rename it")
        title = stem.replace("-", " ").replace("_", " ")
        pages.append(dict(name=stem, file=f.name, title=title[:1].upper() + title[1:], nav=stem, template=f.name,
                          ctx={}, models={}))
    return pages


BUNDLED_STATIC = {*BOKEH_FILES, "site.css", "site.js"}


def _user_static(user_dir: Path | None) -> list[tuple[Path, Path]]:
    """(file, path under static/) of every file in the user folder's static/ (a logo, extra CSS),
    refusing the names of our own static files (a page would lose BokehJS or the site's script)."""
    if user_dir is None or not (user_dir / "static").is_dir():
        return []
    root = user_dir / "static"
    out = [(f, f.relative_to(root)) for f in user_template_files(root)]
    for f, rel in out:
        if rel.as_posix() in BUNDLED_STATIC:
            raise UserError(f"{f}: report.template_dir: static/{rel.as_posix()} would replace the report's own file; "
                            f"rename it (add CSS through a <link> in your base.html instead)")
    return out


def _common(data: ReportData) -> dict:
    p = data.points  # the full data: counts of every point
    return dict(run=data.run, model=data.model, sources=data.sources,
                n_real=int((p["set"] == "real").sum()), n_gen=int((p["set"] == "generated").sum()))


def render_site(data: ReportData, site_dir, *, single_file: bool = False, single_file_limit_mb: float = 25.0,
                color_by: str = "class", png_fallback: bool = False, max_points: int | None = None,
                template_dir: str = "") -> list[Path]:
    """Write the report for `data` into `site_dir` (a folder) and return the files written.

    The map draws at most `max_points` points (a class-balanced sample, `view.balanced_sample`) over
    density images of every point; the site carries only those points and the ones its pages show.

    single_file=True writes `site_dir/report.html` with BokehJS, data and thumbnails inlined,
    logs its size, and raises UserError when it exceeds `single_file_limit_mb`. Thumbnail sheets are
    WebP; `png_fallback` adds PNG copies for browsers without WebP (folder form only).

    `template_dir` (report.template_dir): a folder of templates searched before ours (see
    `_environment`); its other pages are added to the site and the nav, its static/ files copied
    into the site's static/ (folder form; the single file references no files).
    """
    from ..config import MAP_COLOURS
    if color_by not in MAP_COLOURS:
        raise UserError(f"report.color_by: expected one of {', '.join(MAP_COLOURS)}, got {color_by!r}")
    try:
        data.validate()
    except ValueError as e:
        raise UserError(f"report data: {e}") from None
    site_dir = Path(site_dir)
    if site_dir.exists() and not site_dir.is_dir():
        raise UserError(f"{site_dir}: exists and is not a folder")
    if site_dir.is_dir() and any(site_dir.iterdir()) and not (site_dir / SITE_MARKER).exists():
        raise UserError(f"{site_dir}: folder is not empty and is not a dmd2report site; choose another --site folder")
    if max_points is None:  # the default declared once, in config.py
        from ..config import ReportConfig
        max_points = ReportConfig().max_points
    if max_points < 1:
        raise UserError(f"report.max_points: expected at least 1, got {max_points}")
    user_dir = user_template_dir(template_dir)
    env = _environment(user_dir)
    user_static = _user_static(user_dir)
    view = site_view(data, max_points)
    pages = _pages(view, color_by, reuse_figures=not single_file)
    extra = _extra_pages(user_dir, {p["name"] for p in pages})
    pages += extra
    nav = _nav(data.atlas is not None, extra, data.comparison is not None)
    common = _common(data)

    # Temporary folders a killed render left beside the site (only ours, by name) go first.
    files.remove_stale_folders(site_dir)
    with files.replacing(site_dir) as tmp:
        if single_file:
            if user_static:
                log.warning("report.template_dir: static/ files are not part of a single-file report; "
                            "inline them (data: URIs) in your templates")
            html = _render_single(env, view, pages, nav, common)
            size_mb = len(html.encode()) / 2**20
            log.info("single-file report: %.1f MB", size_mb)
            if size_mb > single_file_limit_mb:
                raise UserError(f"single-file report would be {size_mb:.1f} MB, above the {single_file_limit_mb:g} MB limit "
                                f"(report.single_file_limit_mb); use the folder form (without --single-file) and share the folder")
            files.save_text(tmp / "report.html", html)
        else:
            _render_folder(env, view, pages, nav, common, tmp, png_fallback)
            for f, rel in user_static:
                (tmp / "static" / rel).parent.mkdir(parents=True, exist_ok=True)
                files.copy_file(f, tmp / "static" / rel)
        files.save_text(tmp / SITE_MARKER, "rendered by dmd2report; this folder is replaced on every render\n")
    return sorted(q for q in site_dir.rglob("*") if q.is_file() and q.name != SITE_MARKER)


def _sprite_css(n_sheets: int, urls: list[list[str]]) -> str:
    rules = []
    for s in range(n_sheets):
        u = urls[s]
        if len(u) == 2:  # WebP preferred, palette PNG for browsers without image-set()
            rules.append(f'.sheet-{s}{{background-image:url("{u[1]}");background-image:image-set(url("{u[0]}") type("image/webp"),url("{u[1]}") type("image/png"))}}')
        else:
            rules.append(f'.sheet-{s}{{background-image:url("{u[0]}")}}')
    return "\n".join(rules)


def _render_folder(env, view: SiteView, pages, nav, common, out: Path, png_fallback: bool = False) -> None:
    data = view.site
    (out / "static").mkdir()
    (out / "assets").mkdir()
    (out / "classes").mkdir()
    js_dir = Path(bokehjs_path()) / "js"
    for f in BOKEH_FILES:
        files.copy_file(js_dir / f, out / "static" / f)
    for f in ("site.css", "site.js"):
        files.save_text(out / "static" / f, _static_text(f))
    layout = sprites.write_sheets(data.thumbnails, out / "assets", png_fallback)
    site_json = json_for_script(_site_data(view, layout))
    files.save_text(out / "assets" / "data.js", f"window.DMD2_DATA={site_json};\n")
    for page in pages:
        depth = page["file"].count("/")
        root = "../" * depth
        formats = ("webp", "png") if png_fallback else ("webp",)
        urls = [[f"{root}assets/thumbs-{s:03d}.{fmt}" for fmt in formats] for s in range(layout.sheets)]
        script, divs = page.get("embedded") or (components(page["models"]) if page["models"] else ("", {}))
        html = env.get_template(page["template"]).render(
            **common, **page["ctx"], page=page, nav=nav, root=root, single=False, fragment=False,
            link=lambda target, root=root: f"{root}{target}", map_link=lambda c, root=root: f"{root}map.html#class={int(c)}",
            map_colour_link=lambda mode, root=root: f"{root}map.html#colour={mode}",
            bokeh_script=script, divs=divs,
            sprite_css=_sprite_css(layout.sheets, urls), thumb=_Thumbs(layout), thumb_px=THUMB_PX,
            inline_css="", inline_js="", inline_data="")
        files.save_text(out / page["file"], html)


def _render_single(env, view: SiteView, pages, nav, common) -> str:
    layout, uris = sprites.inline_sheets(view.site.thumbnails)
    site_json = json_for_script(_site_data(view, layout))
    thumbs = _Thumbs(layout)
    sections, scripts = [], []

    def link(target, root=""):  # page files become in-document anchors
        name = next((pg["name"] for pg in pages if pg["file"] == target), None)
        return f"#page={name}" if name else "#"

    def map_link(class_id):
        return f"#page=map&class={int(class_id)}"

    def map_colour_link(mode):
        return f"#page=map&colour={mode}"
    for page in pages:
        script, divs = page.get("embedded") or (components(page["models"]) if page["models"] else ("", {}))
        scripts.append(script)
        sections.append((page["name"], env.get_template(page["template"]).render(
            **common, **page["ctx"], page=page, nav=nav, root="", single=True, fragment=True, link=link, map_link=map_link,
            map_colour_link=map_colour_link,
            bokeh_script="", divs=divs, sprite_css="", thumb=thumbs, thumb_px=THUMB_PX,
            inline_css="", inline_js="", inline_data="")))
    js_dir = Path(bokehjs_path()) / "js"
    bokehjs = "\n".join((js_dir / f).read_text(encoding="utf-8") for f in BOKEH_FILES)
    return env.get_template("single.html").render(
        **common, nav=nav, sections=sections, link=link, bokeh_scripts=scripts, page=pages[0], single=True, map_link=map_link,
        inline_css=_static_text("site.css"), sprite_css=_sprite_css(layout.sheets, [[u] for u in uris]),
        inline_bokehjs=bokehjs, inline_js=_static_text("site.js"), inline_data=f"window.DMD2_DATA={site_json};")
