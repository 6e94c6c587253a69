"""The render stage: stored results -> `ReportData` (read from disk alone, no model) -> the static site."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..context import Context, Stage
from ..errors import UserError
from ..files import bytes_digest, load_npz, load_parquet, read_json
from ..metric_defs import METRICS, STEP_REFERENCES
from ..metrics import generator_documents
from ..report.data import (CLASS_DELTA_COLUMNS, CLASS_DELTA_INTERVALS, CLASS_DELTA_METRICS, COMPARISON_COLUMNS,
                           OVERALL_COLUMNS, POINT_COLUMNS,
                           SPACE_COLUMNS,
                           Comparison, compared_class_set, STEP_METRIC_COLUMNS, Atlas, AtlasAnchor, DataSource, FrechetDistance,
                           Metrics, ModelInfo, Neighbours, Ragged, ReportData, RunInfo, StackedThumbnails, Trajectories,
                           package_versions)
from ..report.render import render_site
from ..report.view import COMPARE_SEED_BUDGET, COMPARE_SEEDS
from ..resources import report_code_paths, user_template_dir, user_template_files
from ..store import Store
from ..workdir import generated_sets, set_label

log = logging.getLogger(__name__)


def _fit_thumb(images: np.ndarray, size: int) -> np.ndarray:
    """Images (n, r, r, 3) at the thumbnail size of the stores (box filter when shrinking)."""
    if len(images) == 0 or images.shape[1] == size:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX if size < im.shape[0]
                                                           else Image.Resampling.NEAREST)) for im in images])


def run(ctx: Context, overwrite: bool = False) -> None:
    """The render stage: the site at `run.site`, replaced whole."""
    written = render_site(assemble_report(ctx), ctx.config.run.site, ctx.config.report)
    pages = sum(Path(f).suffix == ".html" for f in written)   # the pages a reader opens; the rest are their assets
    ctx.log.info("[render] wrote %d page%s and %d other file%s to %s", pages, "s" * (pages != 1),
                 len(written) - pages, "s" * (len(written) - pages != 1), ctx.config.run.site)


def assemble_report(ctx: Context) -> ReportData:
    """Build the `ReportData` of a finished run from its work directory: one reader per part."""
    cfg, wd = ctx.config, ctx.workdir
    shown = _shown_sets(ctx)
    points, thumbs = _read_points(shown, wd.fit / "points.parquet")
    t = thumbs[0].shape[1]
    # The atlas's and the trajectories' thumbnails follow the points'.
    atlas = None
    if (wd.atlas / "atlas.npz").exists():
        atlas, more = _read_atlas(wd, shown.real, len(points), t)
        thumbs += more
    trajectories = None
    if cfg.trajectory.enabled:
        trajectories, more = _read_trajectories(wd, sum(len(a) for a in thumbs), t)
        thumbs += more
    covered_by, cover_count, cover_radius = _read_coverage(shown)
    data = ReportData(
        run=_read_run(ctx), model=_read_model(ctx), sources=_read_sources(cfg, shown), classes=_class_table(shown.real),
        points=points, thumbnails=StackedThumbnails([a if a.dtype == np.uint8 else a.astype(np.uint8) for a in thumbs]),
        neighbours=_read_neighbours(shown, cfg.metrics.k_neighbours),
        covered_by=covered_by, cover_count=cover_count, cover_radius=cover_radius, metrics=_read_metrics(shown),
        nn_real_real=shown.arrays["real.nn_real_dist"][:, 0], nn_gen_real=shown.arrays[CLASS_ARRAYS + "nn_real_dist"][:, 0],
        variants=_read_variants(shown, cfg.generate.variant_samples), atlas=atlas, chosen_classes=[],
        max_class_pages=cfg.report.max_classes_pages, trajectories=trajectories,
        skipped=list(shown.real.manifest.get("skipped", [])), converted=dict(shown.real.manifest.get("converted", {})),
        comparison=_read_comparison(shown) if shown.compared else None)
    data.validate()
    return data


CLASS_ARRAYS = "variant.class."   # measure's arrays of the class-conditioned set (coverage, the real points' lists)


@dataclass
class ShownSets:
    """The sets the report shows, in point order: the real set, the reference encoder's generated sets (`generated`,
    by variant) and, in a comparison, every other generator's class-conditioned set (`compared`, by its points'
    variant `<name>: class`); with fit's points and measure's arrays of those sets under the same names."""

    ref: str                     # the reference encoder's generator: the one every page but the comparison shows
    generators: list[str]        # the reference first, then the compared ones
    real: Store
    generated: dict[str, Store]
    compared: dict[str, Store]
    points: pd.DataFrame
    arrays: dict
    documents: dict              # each generator's metrics document
    headline: dict

    @property
    def layers(self) -> dict[str, Store]:
        """Every generated set shown, in point order."""
        return self.generated | self.compared

    @property
    def offsets(self) -> dict[str, int]:
        """The first point row of each set."""
        sizes = [("real", len(self.real))] + [(name, len(store)) for name, store in self.layers.items()]
        return dict(zip([name for name, _ in sizes], np.cumsum([0] + [n for _, n in sizes[:-1]]).tolist()))

    @property
    def n(self) -> int:
        return len(self.real) + sum(len(s) for s in self.layers.values())


def _shown_sets(ctx: Context) -> ShownSets:
    """The stores shown, fit's points and measure's arrays, relabelled for a comparison."""
    cfg, wd = ctx.config, ctx.workdir
    points = wd.points()
    # With [[generators]] the pages show the reference encoder's generator; the comparison page shows them all.
    ref = ctx.generator.name
    compared = [g for g in ctx.generators if g != ref]
    headline = wd.headline()
    arrays = wd.arrays()
    real = wd.store("real")
    gens = {v: wd.store(name) for v, name in generated_sets(cfg, ref)}
    # Every other generator's class-conditioned set joins the map as a layer of its own, `<name>: class`.
    others = {compared_class_set(g): wd.store(generated_sets(cfg, g)[0][1]) for g in compared}
    documents = generator_documents(wd.metrics())
    if others:
        other_class = points["generator"].isin(compared) & (points["variant"] == "class")
        points = points[points["generator"].isin(["", ref]) | other_class].copy()
        points.loc[other_class, "variant"] = points.loc[other_class, "generator"].map(compared_class_set)
        points.loc[points["set"] == "generated", "generator"] = points["generator"].where(points["generator"] != "", ref)
    # Each shown set's per-point arrays under its name in the points (its variant, or `<name>: class`).
    arrays = {k: v for k, v in arrays.items() if not k.startswith("variant.")} | {
        f"variant.{name}.{k[len(prefix):]}": a for name, prefix in
        [(v, f"variant.{set_label(ref, v)}.") for v in gens] +
        [(compared_class_set(g), f"variant.{set_label(g, 'class')}.") for g in compared]
        for k, a in arrays.items() if k.startswith(prefix)}
    return ShownSets(ref=ref, generators=[ref] + compared, real=real, generated=gens, compared=others, points=points,
                     arrays=arrays, documents=documents, headline=headline)


def _read_points(shown: ShownSets, points_file: Path) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Point rows: real first, then every generated set in order; their thumbnails in the same order, kept
    memory-mapped chunk by chunk (the site reads only the rows it shows). `points_file`: where fit's points are."""
    thumbs, frames = [], []
    for name, store in [("real", shown.real), *shown.layers.items()]:
        part = shown.points[(shown.points["variant"] == name)].sort_values("row")
        if len(part) != len(store):
            raise UserError(f"{points_file}: {len(part)} points of {name!r}, store has {len(store)}; "
                            f"rerun `dmd2report fit`")
        if name != "real":  # stores number their samples from 0: make ids unique across sets
            part = part.assign(sample_id=f"{name}:" + part["sample_id"].astype(str))
        frames.append(part)
        thumbs += [c for c in store.thumbnail_chunks() if len(c)]
    pts = pd.concat(frames, ignore_index=True)
    pts["thumb"] = np.arange(len(pts))
    pts["covered"] = False
    n_real, covered = len(shown.real), shown.arrays[CLASS_ARRAYS + "real_covered"].astype(bool)
    pts.loc[: n_real - 1, "covered"] = covered
    if not shown.compared:
        return pts[POINT_COLUMNS], thumbs
    # Real points by which of the pair (the reference, the next generator) covers them: COVER_DIFF codes.
    code = np.full(len(pts), -1, np.int64)
    code[:n_real] = (covered.astype(np.int64) + 2 * shown.arrays[
        f"variant.{compared_class_set(shown.generators[1])}.real_covered"].astype(bool).astype(np.int64))
    pts["cover_diff"] = code
    return pts[POINT_COLUMNS + ["generator", "cover_diff"]], thumbs


def _read_neighbours(shown: ShownSets, k: int) -> Neighbours:
    """Each point's k nearest real and generated points in activation space (headline layer), as point rows."""
    n, arrays, offsets = shown.n, shown.arrays, shown.offsets
    real_idx = np.full((n, k), -1, np.int64)
    real_dist = np.full((n, k), np.nan, np.float32)
    gen_idx = np.full((n, k), -1, np.int64)
    gen_dist = np.full((n, k), np.nan, np.float32)

    def put(target_i, target_d, rows, idx, dist, offset):
        kk = min(k, idx.shape[1])
        target_i[rows, :kk] = np.where(idx[:, :kk] >= 0, idx[:, :kk] + offset, -1)
        target_d[rows, :kk] = dist[:, :kk]

    rr = np.arange(len(shown.real))
    put(real_idx, real_dist, rr, arrays["real.nn_real_idx"], arrays["real.nn_real_dist"], 0)
    put(gen_idx, gen_dist, rr, arrays[CLASS_ARRAYS + "real_nn_gen_idx"], arrays[CLASS_ARRAYS + "real_nn_gen_dist"],
        offsets["class"])
    for v, store in shown.layers.items():
        rows = offsets[v] + np.arange(len(store))
        put(real_idx, real_dist, rows, arrays[f"variant.{v}.nn_real_idx"], arrays[f"variant.{v}.nn_real_dist"], 0)
        if f"variant.{v}.nn_gen_idx" in arrays:
            put(gen_idx, gen_dist, rows, arrays[f"variant.{v}.nn_gen_idx"], arrays[f"variant.{v}.nn_gen_dist"], offsets[v])
    return Neighbours(real_idx, real_dist, gen_idx, gen_dist, layer=shown.headline["layer"])


def _read_coverage(shown: ShownSets) -> tuple[Ragged, np.ndarray, np.ndarray]:
    """The real points' covered-by lists (CSR, as measure stores them) as point rows, generated rows having none;
    the lists stop at measure's cover_cap, so also the true counts and the radius each real point is tested with."""
    n, n_real, arrays = shown.n, len(shown.real), shown.arrays
    offs = np.asarray(arrays[CLASS_ARRAYS + "real_covered_by.offsets"], np.int64)
    vals = np.asarray(arrays[CLASS_ARRAYS + "real_covered_by.values"], np.int64)
    covered_by = Ragged(np.concatenate([offs, np.full(n - n_real, offs[-1], np.int64)]), vals + shown.offsets["class"])
    cover_count = np.zeros(n, np.int64)
    cover_count[:n_real] = arrays[CLASS_ARRAYS + "real_cover_count"]
    cover_radius = np.full(n, np.nan)
    cover_radius[:n_real] = arrays["real.r_dc"]
    return covered_by, cover_count, cover_radius


def _read_metrics(shown: ShownSets) -> Metrics:
    """The metrics tables from the reference generator's metrics.json (the headline feature space)."""
    doc, headline = shown.documents[shown.ref], shown.headline
    space = doc["feature_spaces"][headline["feature_space"]]
    variants = space["variants"]
    main = variants["class"]["overall"]
    rows = []
    for key, spec in METRICS.items():  # labels and explanations: the one declaration (metrics.METRICS)
        e = main.get(key) if spec.scope == "overall" else None
        if e is None:
            continue
        rows.append((key, spec.label, _num(e.get("value")), _num(e.get("ci_low")), _num(e.get("ci_high")),
                     spec.explanation, e.get("n_real", 0), e.get("n_generated", 0), spec.headline))
    trust, spec = doc["provenance"].get("fit", {}).get("class", {}), METRICS["trust"]
    if trust.get("n"):
        rows.append(("trust", spec.label, trust["mean"], np.nan, np.nan, spec.explanation, len(shown.real),
                     trust["n"], spec.headline))
    overall = pd.DataFrame(rows, columns=OVERALL_COLUMNS)
    per_class, intervals = [], {}

    def interval(table, row_id, key, entry):   # a bootstrapped entry's interval, by its table's row and metric
        if entry.get("ci_low") is not None:
            intervals[(table, row_id, key)] = (_num(entry["ci_low"]), _num(entry["ci_high"]))

    real_classes = shown.real.metadata()["class_id"].to_numpy(np.int64)
    real_count = pd.Series(real_classes).value_counts()  # one pass, not one comparison per class
    for c, scope in sorted(variants["class"]["per_class"].items(), key=lambda kv: int(kv[0])):
        row = {"class_id": int(c), "n_real": int(real_count.get(int(c), 0)),
               "n_gen": int(scope.get("class_fidelity", {}).get("n_generated", 0))}
        for key in ("precision", "recall", "density", "coverage", "coverage_global", "class_fidelity", "fd"):
            if key in scope:
                row[key] = _num(scope[key].get("value"))
                interval("class", int(c), key, scope[key])
        per_class.append(row)
    per_variant = []
    matched = space.get("matched", {}).get("class")   # the class set's first seeds, beside it
    rows_of = [(v, d["overall"]) for v, d in variants.items()]
    if matched:
        rows_of.insert(1, (matched_row := f"class, first {matched['n_seeds']:,} seeds", matched["overall"]))
    for v, overall_of in rows_of:
        row = {"variant": v, "n_gen": int(overall_of["precision"]["n_generated"])}
        for key in ("precision", "recall", "density", "coverage", "fd", "class_fidelity"):
            if key in overall_of:
                row[key] = _num(overall_of[key].get("value"))
                interval("variant", v, key, overall_of[key])
        per_variant.append(row)
    fd_e, halves = main["fd"], space.get("reference", {}).get("fd") or {}
    fd = FrechetDistance(value=_num(fd_e["value"]), n_real=fd_e["n_real"], n_gen=fd_e["n_generated"],
                         layer=headline["layer"],
                         note="few samples: biased upwards" if min(fd_e["n_real"], fd_e["n_generated"]) < 5000 else "",
                         real_halves=halves.get("value"), n_halves=tuple(halves.get("n_halves", (0, 0))))
    spaces, protocols = _read_spaces(doc, headline["feature_space"])
    accuracy = next((s for s in doc["feature_spaces"].values()
                     if "classification_accuracy" in s["variants"]["class"]["overall"]), None)
    if accuracy is not None:   # which classes the generator draws recognisably, by a classifier's eye
        scopes = accuracy["variants"]["class"]["per_class"]
        for row in per_class:
            row["classification_accuracy"] = _num(scopes.get(str(row["class_id"]), {})
                                                  .get("classification_accuracy", {}).get("value"))
    class_fd_real = {int(c): _num(r["fd"].get("value")) for c, r in space.get("reference_per_class", {}).items()
                     if "fd" in r}
    return Metrics(overall=overall, per_class=pd.DataFrame(per_class), per_variant=pd.DataFrame(per_variant),
                   fd=fd, layer=headline["layer"], spaces=spaces, protocols=protocols, intervals=intervals,
                   class_fd_real=class_fd_real, matched=matched_row if matched else "")


def _read_spaces(doc: dict, headline: str) -> tuple[pd.DataFrame, dict]:
    """Every feature space's overall entries of the class-conditioned set, the headline space first, each with the
    real set's own value where measured (`<key>_real`); and the standard spaces' protocols."""
    rows, protocols = [], {}
    for name in sorted(doc["feature_spaces"], key=lambda s: s != headline):
        space = doc["feature_spaces"][name]
        entries, reference = space["variants"]["class"]["overall"], space.get("reference", {})
        for key, spec in METRICS.items():
            e = entries.get(key)
            if e is not None and spec.scope == "overall":
                rows.append((name, key, spec.label, _num(e.get("value")), _num(e.get("ci_low")), _num(e.get("ci_high")),
                             _num((reference.get(key) or {}).get("value")), e.get("n_generated", 0)))
        if "protocol" in space:
            protocols[name] = _protocol_words(space["protocol"])
    return pd.DataFrame(rows, columns=SPACE_COLUMNS), protocols


def _protocol_words(protocol: dict) -> str:
    """A standard space's protocol as the pages print it: how its numbers are made, and the reference file's name
    and digest where FD is measured against published statistics."""
    ref = protocol.get("reference_stats")
    return protocol["protocol"] + (f" Reference statistics: {ref['file']} (SHA-256 {ref['sha256'][:12]})." if ref else "")


def _read_variants(shown: ShownSets, variant_samples: int) -> pd.DataFrame:
    """The variants page's rows: the same seed under each conditioning (the class set's first `variant_samples`
    samples share the variants' seeds)."""
    gens, offsets = shown.generated, shown.offsets
    n_var = min(variant_samples, len(gens["class"]))
    class_ids = gens["class"].metadata()["class_id"].to_numpy(np.int64)[:n_var]
    return pd.DataFrame({"seed_index": np.tile(np.arange(n_var), len(gens)), "class_id": np.tile(class_ids, len(gens)),
                         "variant": np.repeat(list(gens), n_var),
                         "point": np.concatenate([offsets[v] + np.arange(n_var) for v in gens])})


def _read_atlas(wd, real: Store, first_thumb: int, t: int) -> tuple[Atlas, list[np.ndarray]]:
    """The atlas (generated by masking) and its thumbnails (grid, then anchors), numbered from `first_thumb`."""
    z = load_npz(wd.atlas / "atlas.npz", "atlas")
    anchor_images, grid_images, grid = z["anchor_images"], z["grid_images"], z["grid"]
    info = read_json(wd.atlas / "atlas.json", "atlas")
    wd.check_made_on_fit(info.get("fit") if isinstance(info, dict) else None, wd.atlas, "atlas")
    names = _class_table(real)
    name_of = dict(zip(names["class_id"], names["name"]))
    grid_df = pd.DataFrame({"x": grid[:, 0], "y": grid[:, 1], "thumb": first_thumb + np.arange(len(grid))})
    anchors = [AtlasAnchor(anchor=a["anchor_row"], neighbours=a["neighbour_rows"],
                           thumb=first_thumb + len(grid) + i,
                           conditioning=f"class {a['class_id']} ({name_of.get(a['class_id'], '?')}), {a['kind']}",
                           note="" if info["invertible"] else "mask = mean full activations of its neighbours")
               for i, a in enumerate(info["anchors"])]
    atlas = Atlas(grid=grid_df, anchors=anchors, mask_layer=info["mask_layer"], note=info["note"])
    return atlas, [_fit_thumb(grid_images, t), _fit_thumb(anchor_images, t)]


def _read_run(ctx: Context) -> RunInfo:
    cfg = ctx.config
    return RunInfo(name=cfg.run.name, command=ctx.command,
                   built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), versions=package_versions(),
                   config_hash=cfg.section_hash(), config=cfg.to_dict())


def _read_model(ctx: Context) -> ModelInfo:
    ident = ctx.generator.identity()
    return ModelInfo(preset=ident["preset"],
                     checkpoint=Path(ident["checkpoint"]).name if ident["checkpoint"] else "random weights",
                     sha256="" if ident["untrained"] else ident["sha256"], untrained=ident["untrained"])


def _read_sources(cfg, shown: ShownSets) -> list[DataSource]:
    return [DataSource(f"real: {cfg.data.source}", cfg.data.path or "bundled demo data (generated on first use)",
                       len(shown.real))] + [DataSource(f"generated: {v}", f"seed {cfg.run.seed}", len(s))
                                            for v, s in shown.layers.items()]


def _read_comparison(shown: ShownSets) -> Comparison:
    """The comparison page's tables from each generator's metrics document (every feature space, the headline first;
    the per-class deltas in the headline space) and the same-seed rows of the class-conditioned sets (their rows share
    the same seeds)."""
    generators, documents, space, offsets = shown.generators, shown.documents, shown.headline["feature_space"], shown.offsets
    class_meta = shown.generated["class"].metadata()
    class_rows, seed_index = class_meta["class_id"].to_numpy(np.int64), class_meta["seed_index"].to_numpy(np.int64)
    ref = generators[0]
    spaces = documents[ref]["feature_spaces"]
    names = [space] + [s for s in spaces if s != space and all(s in documents[g]["feature_spaces"] for g in generators)]
    rows = []
    for name in names:
        by_gen = {g: documents[g]["feature_spaces"][name]["variants"]["class"]["overall"] for g in generators}
        for key, spec in METRICS.items():
            if spec.scope != "overall" or key not in by_gen[ref]:
                continue
            r = by_gen[ref][key]
            for g in generators:
                e = by_gen[g].get(key) or {}
                v, lo, hi = _num(e.get("value")), _num(e.get("ci_low")), _num(e.get("ci_high"))
                # intervals that do not overlap: this one wholly above or below the reference's
                separated = g != ref and bool(lo > _num(r.get("ci_high")) or hi < _num(r.get("ci_low")))
                rows.append((name, g, key, spec.label, v, lo, hi, v - _num(r.get("value")), separated))
    cls = {g: documents[g]["feature_spaces"][space]["variants"]["class"] for g in generators}
    overall = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    deltas = []
    for g in generators[1:]:
        for key in CLASS_DELTA_METRICS:
            mine, theirs = (_class_entries(cls[name]["per_class"], key) for name in (g, ref))
            for c, (v, lo, hi) in mine.items():
                r, r_lo, r_hi = theirs.get(c, (np.nan,) * 3)
                deltas.append((g, key, int(c), r, v, v - r, r_lo, r_hi, lo, hi, bool(lo > r_hi or hi < r_lo)))
    per_class = pd.DataFrame(deltas, columns=CLASS_DELTA_COLUMNS + CLASS_DELTA_INTERVALS)
    per_class = per_class.iloc[np.argsort(-per_class["delta"].abs().fillna(-1).to_numpy(), kind="stable")]
    # The same seeds under every generator, for every class (the page's selector): COMPARE_SEEDS rows each while all
    # classes' fit in COMPARE_SEED_BUDGET, past it an equal share, at least one (1,000 classes: two each).
    picked = pd.DataFrame({"row": np.arange(len(class_rows)), "class_id": class_rows})
    seeds_each = max(1, min(COMPARE_SEEDS, COMPARE_SEED_BUDGET // max(len(np.unique(class_rows)), 1)))
    picked = picked.groupby("class_id").head(seeds_each)
    labels = ["class"] + [compared_class_set(g) for g in generators[1:]]
    seeds = pd.DataFrame({"seed_index": np.tile(seed_index[picked["row"]], len(generators)),
                          "class_id": np.tile(picked["class_id"].to_numpy(), len(generators)),
                          "generator": np.repeat(generators, len(picked)),
                          "point": np.concatenate([offsets[lab] + picked["row"].to_numpy() for lab in labels])})
    fd_real = {n: _num((spaces[n].get("reference", {}).get("fd") or {}).get("value")) for n in names}
    return Comparison(generators=list(generators), a=ref, b=generators[1], overall=overall,
                      per_class=per_class.reset_index(drop=True), seeds=seeds, feature_space=space,
                      protocols={n: _protocol_words(spaces[n]["protocol"]) for n in names if "protocol" in spaces[n]},
                      fd_real=fd_real)


def _class_entries(per_class: dict, key: str) -> dict:
    """{class: (value, ci_low, ci_high)} of one metric's per-class entries (NaN where none)."""
    return {c: tuple(_num(m.get(key, {}).get(f)) for f in ("value", "ci_low", "ci_high")) for c, m in per_class.items()}


def _read_trajectories(wd, first_thumb: int, t: int) -> tuple[Trajectories, list[np.ndarray]]:
    """The trajectory stage's paths, references and per-step metrics, and their thumbnails (paths, then
    references), numbered from `first_thumb`."""
    out = wd.trajectory
    hint = "run `dmd2report trajectory` (or `dmd2report build`), or set trajectory.enabled = false"
    doc = read_json(out / "metrics.json", "trajectory", missing=hint)
    wd.check_made_on_fit(doc.get("fit") if isinstance(doc, dict) else None, out, "trajectory")
    if not (out / "points.parquet").exists():
        raise UserError(f"{out / 'points.parquet'}: missing; {hint}")
    points = load_parquet(out / "points.parquet", "trajectory")
    base, thumbs = first_thumb, []
    frames = {}
    for kind, sub in (("path", "paths"), ("real", "real")):
        part = points[points["kind"] == kind].sort_values("row").reset_index(drop=True)
        store = Store(out / sub, "trajectory")
        if len(part) != len(store):
            raise UserError(f"{out / 'points.parquet'}: {len(part)} {kind} points, {out / sub} has {len(store)}; "
                            f"rerun `dmd2report trajectory`")
        if len(part):
            thumbs.append(_fit_thumb(np.asarray(store.thumbnails()), t))
        frames[kind] = part.assign(thumb=base + np.arange(len(part)))
        base += len(part)
    steps = frames["path"]
    per_class = int(doc.get("paths_per_class", 2))
    first = steps[steps["step"] == 0]
    shown_paths = set(first.groupby("class_id").head(per_class)["path"])
    steps = steps.assign(shown=steps["path"].isin(shown_paths))
    real = frames["real"].rename(columns={"path": "ref"})
    rows = []
    for st in doc["steps"]:
        for ref, key in (("real", "vs_real"), ("noised real", "vs_noised_real")):
            e = st[key]
            if key == "vs_noised_real" and not e.get("n_real"):
                continue
            rows.append((st["step"], st["sigma"], ref, _num(e.get("precision")), _num(e.get("recall")),
                         _num(e.get("coverage")), int(e.get("n_real", 0)), int(e.get("n_generated", 0))))
    mode = doc.get("features", "generation")   # stages of older versions kept the generating pass's activations
    n_paths = int(steps["path"].nunique())
    note = (f"Against real: {STEP_REFERENCES['real'][mode]}. Against noised real: {STEP_REFERENCES['noised real'][mode]}. "
            f"The first step (σ {float(doc['sigmas'][0]):g}) is the one-step sample itself. Precision is a share of the "
            f"{n_paths} paths' samples and compares with a generated set's directly; coverage grows with the number of "
            f"samples, so compare it between steps. Measured in {doc['feature_space']}.")
    floor = {k: v for k, v in (doc.get("floor") or {}).items() if not k.endswith("_ci")}
    if floor.get("n_generated"):
        note += (f" The floor row: {floor['n_generated']} real images of the paths' classes, held out of the real set "
                 f"and measured against the rest as a step is (Fréchet distance {_num(floor.get('fd')):.2f}): what real "
                 f"data itself scores at this sample count; a step near it is as close as {floor['n_generated']} "
                 f"samples can show.")
    return Trajectories(sigmas=[float(v) for v in doc["sigmas"]],
                        steps=steps[["path", "step", "sigma", "class_id", "x", "y", "thumb", "shown", "source"]],
                        real=real[["ref", "step", "sigma", "class_id", "x", "y", "thumb", "source"]],
                        metrics=pd.DataFrame(rows, columns=STEP_METRIC_COLUMNS), conditioning=doc.get("conditioning", "class"),
                        note=note, floor=floor), thumbs


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _class_table(real) -> pd.DataFrame:
    meta = real.metadata()
    cols = [c for c in ("class_id", "synset", "name") if c in meta]
    table = meta[cols].drop_duplicates("class_id").sort_values("class_id").reset_index(drop=True)
    return table


def renderer_fingerprint(template_dir: str = "") -> str:
    """Hash of the templates and the report code: a new dmd2report version re-renders old results.
    With `report.template_dir`, every file of that folder too (path and contents): editing a user
    template or its static files re-renders (the folder's path alone is in the config the stage reads)."""
    code = ((root, f) for root in report_code_paths()
            for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css", ".py")))
    user = user_template_dir(template_dir)
    own = ((user, f) for f in user_template_files(user))
    return bytes_digest(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes()
                        for root, f in itertools.chain(code, own))


def _renderer(ctx: Context) -> list:
    return [renderer_fingerprint(ctx.config.report.template_dir)]


STAGE = Stage(
    "render", run, "Re-render the site from stored results (no model needed).", writes="<run.site>/",
    after=("measure", "atlas", "trajectory"), reads=("report", "run.name", "run.site"), inputs=_renderer,
    uses_device=False, outputs=lambda ctx: [Path(ctx.config.run.site)])
