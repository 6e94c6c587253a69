"""Render a ReportData into the static site (a folder, or one inlined HTML file), as mkdocs builds one: gather
the data (the site view, pages.Site), then build each page of pages.py (its content, then its template) and write it.

The site is written into a temporary sibling folder and swapped in at the end (files.replacing),
so a failure (disk full: one line naming the file) never leaves a half-written site that looks
complete, and the previous site stays as it was. Temporary folders of killed renders are removed
first. BokehJS is copied from the installed
bokeh package into site/static/ (one copy shared by all pages); nothing is loaded from a CDN. The site's last
file, `integrity.SITE_MANIFEST`, lists every other file with its digest: `dmd2report verify --site` checks it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from bokeh.util.paths import bokehjs_path

from .. import files, integrity
from ..config import ReportConfig
from ..errors import UserError
from ..metric_defs import METRICS
from ..resources import static_file, templates_dir, user_template_dir, user_template_files
from . import figures, palette, sprites, tiles
from .data import ReportData, is_class_set
from .pages import Page, Site, navigation, site_pages
from .view import MAX_COVERED_BY, SiteView, cover_diff_kinds, coverage_k, shown_per_class, site_view

BOKEH_FILES = ["bokeh.min.js", "bokeh-gl.min.js"]
SITE_MARKER = ".dmd2report-site"     # marks a folder as a rendered site, so re-rendering may replace it
THUMB_PX = 64                        # displayed thumbnail side in grids and panels

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


def _site_data(view: SiteView, layout: sprites.SpriteLayout, tile_index: dict | None = None) -> dict:
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
                      "k": coverage_k(full), "shown": MAX_COVERED_BY,
                      "r": _finite(data.cover_radius if data.cover_radius is not None else np.full(len(p), np.nan), 4)},
        "sprites": layout.to_json(),
        "traj": _trajectory_data(data.trajectories),
        "tiles": tile_index,   # tiles.write_tiles's index (the folder form past the cap), else None
    }


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
            "coverDiff": [list(r) for r in cover_diff_kinds(full)]}


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
        "perClass": shown_per_class(s),
        "steps": {"path": s["path"].astype(int).tolist(), "step": s["step"].astype(int).tolist(),
                  "cls": s["class_id"].astype(int).tolist(), "thumb": s["thumb"].astype(int).tolist(),
                  "final": last.astype(int).tolist(), "src": s["source"].astype(str).tolist(),
                  "shown": s["shown"].astype(bool).astype(int).tolist(),
                  "x": _finite(s["x"], 4), "y": _finite(s["y"], 4)},
        "real": {"step": r["step"].astype(int).tolist(), "cls": r["class_id"].astype(int).tolist(),
                 "thumb": r["thumb"].astype(int).tolist(), "src": r["source"].astype(str).tolist(),
                 "x": _finite(r["x"], 4), "y": _finite(r["y"], 4)},
    }


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


def render_site(data: ReportData, site_dir, settings: ReportConfig | None = None) -> list[Path]:
    """Write the report for `data` into `site_dir` (a folder) and return the files written. `settings`: the
    [report] section (checked where the config loads; None: its defaults).

    The map draws at most `max_points` points (a class-balanced sample, `view.balanced_sample`) over
    density images of every point; the site carries only those points and the ones its pages show.

    single_file writes `site_dir/report.html` with BokehJS, data and thumbnails inlined,
    logs its size, and raises UserError when it exceeds `single_file_limit_mb`. Thumbnail sheets are
    WebP; `png_fallback` adds PNG copies for browsers without WebP (folder form only).

    `template_dir`: a folder of templates searched before ours (see `_environment`); its other pages
    are added to the site and the nav, its static/ files copied into the site's static/ (folder
    form; the single file references no files).
    """
    settings = settings or ReportConfig()
    try:
        data.validate()
    except ValueError as e:
        raise UserError(f"report data: {e}") from None
    site_dir = Path(site_dir)
    if site_dir.exists() and not site_dir.is_dir():
        raise UserError(f"{site_dir}: exists and is not a folder")
    if site_dir.is_dir() and any(site_dir.iterdir()) and not (site_dir / SITE_MARKER).exists():
        raise UserError(f"{site_dir}: folder is not empty and is not a dmd2report site; choose another --site folder")
    user_dir = user_template_dir(settings.template_dir)
    env = _environment(user_dir)
    user_static = _user_static(user_dir)
    view = site_view(data, settings.max_points)
    view.tiled = view.capped and not settings.single_file   # the single file keeps the capped sample (no tiles)
    site = Site(view, settings.color_by, reuse_figures=not settings.single_file)
    pages = site_pages(site, user_dir)
    common = _common(data) | dict(nav=navigation(pages))

    # Temporary folders a killed render left beside the site (only ours, by name) go first.
    files.remove_stale_folders(site_dir)
    with files.replacing(site_dir) as tmp:
        if settings.single_file:
            if user_static:
                log.warning("report.template_dir: static/ files are not part of a single-file report; "
                            "inline them (data: URIs) in your templates")
            html = _render_single(env, site, pages, common)
            size_mb = len(html.encode()) / 2**20
            log.info("single-file report: %.1f MB", size_mb)
            if size_mb > settings.single_file_limit_mb:
                raise UserError(f"single-file report would be {size_mb:.1f} MB, above the "
                                f"{settings.single_file_limit_mb:g} MB limit (report.single_file_limit_mb); use the "
                                f"folder form (without --single-file) and share the folder")
            files.save_text(tmp / "report.html", html)
        else:
            _render_folder(env, site, pages, common, tmp, settings.png_fallback)
            for f, rel in user_static:
                (tmp / "static" / rel).parent.mkdir(parents=True, exist_ok=True)
                files.copy_file(f, tmp / "static" / rel)
        files.save_text(tmp / SITE_MARKER, "rendered by dmd2report; this folder is replaced on every render\n")
        files.save_json(tmp / integrity.SITE_MANIFEST, integrity.site_manifest(tmp))
    return sorted(q for q in site_dir.rglob("*") if q.is_file() and q.name not in (SITE_MARKER, integrity.SITE_MANIFEST))


def _build_page(env: jinja2.Environment, page: Page, site: Site, context: dict) -> tuple[str, str]:
    """The page's HTML (a file of the folder, or a section of the single file) and its Bokeh script. Its content
    is built now, so its figures live no longer than it (and the class pages' shared one is refilled in turn)."""
    content = page.content(site)
    script, divs = content.components()
    html = env.get_template(page.template).render(**context, **content.ctx, page=page, divs=divs,
                                                  bokeh_script="" if context["single"] else script)
    return html, script


def _page_thumbs(layout: sprites.SpriteLayout) -> dict:
    """What every page's template gets to show thumbnails; the page itself inlines nothing (the single file
    inlines CSS, scripts and data once, around the pages)."""
    return dict(thumb=_Thumbs(layout), thumb_px=THUMB_PX, inline_css="", inline_js="", inline_data="")


def _sprite_css(n_sheets: int, urls: list[list[str]]) -> str:
    rules = []
    for s in range(n_sheets):
        u = urls[s]
        if len(u) == 2:  # WebP preferred, palette PNG for browsers without image-set()
            rules.append(f'.sheet-{s}{{background-image:url("{u[1]}");background-image:image-set(url("{u[0]}") type("image/webp"),url("{u[1]}") type("image/png"))}}')
        else:
            rules.append(f'.sheet-{s}{{background-image:url("{u[0]}")}}')
    return "\n".join(rules)


def _render_folder(env, site: Site, pages: list[Page], common: dict, out: Path, png_fallback: bool = False) -> None:
    (out / "static").mkdir()
    (out / "assets").mkdir()
    (out / "classes").mkdir()
    js_dir = Path(bokehjs_path()) / "js"
    for f in BOKEH_FILES:
        files.copy_file(js_dir / f, out / "static" / f)
    for f in ("site.css", "site.js"):
        files.save_text(out / "static" / f, _static_text(f))
    layout = sprites.write_sheets(site.data.thumbnails, out / "assets", png_fallback)
    tile_index = tiles.write_tiles(site.view, out / tiles.TILE_DIR) if site.view.tiled else None
    site_json = json_for_script(_site_data(site.view, layout, tile_index))
    files.save_text(out / "assets" / "data.js", f"window.DMD2_DATA={site_json};\n")
    formats = ("webp", "png") if png_fallback else ("webp",)
    for page in pages:
        root = "../" * page.file.count("/")
        urls = [[f"{root}assets/thumbs-{s:03d}.{fmt}" for fmt in formats] for s in range(layout.sheets)]
        html, _ = _build_page(env, page, site, common | dict(
            root=root, single=False, fragment=False, link=lambda target, root=root: f"{root}{target}",
            map_link=lambda c, root=root: f"{root}map.html#class={int(c)}",
            map_colour_link=lambda mode, root=root: f"{root}map.html#colour={mode}",
            sprite_css=_sprite_css(layout.sheets, urls), **_page_thumbs(layout)))
        files.save_text(out / page.file, html)


def _render_single(env, site: Site, pages: list[Page], common: dict) -> str:
    layout, uris = sprites.inline_sheets(site.data.thumbnails)
    site_json = json_for_script(_site_data(site.view, layout))
    anchors = {page.file: page.name for page in pages}

    def link(target, root=""):  # page files become in-document anchors
        return f"#page={anchors[target]}" if target in anchors else "#"

    def map_link(class_id):
        return f"#page=map&class={int(class_id)}"

    def map_colour_link(mode):
        return f"#page=map&colour={mode}"
    built = [_build_page(env, page, site, common | dict(
        root="", single=True, fragment=True, link=link, map_link=map_link, map_colour_link=map_colour_link,
        sprite_css="", **_page_thumbs(layout)))
        for page in pages]
    js_dir = Path(bokehjs_path()) / "js"
    bokehjs = "\n".join((js_dir / f).read_text(encoding="utf-8") for f in BOKEH_FILES)
    return env.get_template("single.html").render(
        **common, sections=[(page.name, html) for page, (html, _) in zip(pages, built)], link=link,
        bokeh_scripts=[script for _, script in built], page=pages[0], single=True, map_link=map_link,
        inline_css=_static_text("site.css"), sprite_css=_sprite_css(layout.sheets, [[u] for u in uris]),
        inline_bokehjs=bokehjs, inline_js=_static_text("site.js"), inline_data=f"window.DMD2_DATA={site_json};")
