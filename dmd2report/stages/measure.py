"""The measure stage: every declared metric (`metric_defs.METRICS`) of every generated set in every feature space
(`FEATURE_SPACES`: the reduced space of each UNet layer, and each standard space: an encoder's features as its
protocol uses them), overall, per class and per variant (`metrics.measure`), into `measure/metrics.json`; the
headline space's per-point arrays (radii, neighbours, coverage) into `measure/arrays.npz` for the report; each
standard space's real-set statistics into `measure/<space>.stats.npz` (`mu`, `sigma`: the format of the
community's reference batches, for a later run to measure against)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..classes import ClassIndex
from ..config import encoder_entries
from ..context import Context, Stage
from ..encoders.stats import load_stats, save_stats
from ..errors import UserError
from ..files import save_json, save_npz, sha256_file
from ..metric_defs import mean_and_cov
from ..metrics import (NO_CLASS, comparison_document, fd_real_halves, fd_real_halves_per_class, measure,
                       metrics_document, save_metrics_document)
from ..workdir import generated_sets, set_label

log = logging.getLogger(__name__)


def variant_classes(variant: str, meta: pd.DataFrame) -> np.ndarray:
    """Conditioning class of each sample for class fidelity: the class for one-hot and blend
    conditioning (a blend's heaviest class), none for uniform and zero."""
    if variant in ("uniform", "zero"):
        return np.full(len(meta), NO_CLASS, np.int64)
    return meta["class_id"].to_numpy().astype(np.int64)


@dataclass(frozen=True)
class FeatureSpace:
    """One feature space the stage scores every generated set in, the real set's features and theirs in it."""

    name: str                        # metrics.json's key of the space
    real: np.ndarray                 # (N, D) the real set's features, float32
    generated: dict                  # {set label: ((M, D) features, (M,) conditioning classes, NO_CLASS for none)}
    real_neighbours: tuple | None    # the real rows' exact k-NN searched already (the fit stage's), or None
    headline: dict | None = None     # headline.json's fields when this is the report's space (its arrays kept)
    real_extra: dict | None = None   # a standard space's evidence of the real set (metrics.measure's real_extra)
    reference_moments: tuple | None = None   # (mean, covariance) of a published reference set in the space
    protocol: dict | None = None     # a standard space: the encoder, its preprocessing, its reference statistics


def unet_layers(ctx: Context, real, gens: dict) -> Iterator[FeatureSpace]:
    """The generator's UNet layers, each in its fitted reduced space (`features.reduce`, standardised, PCA), one
    at a time: only one layer's reduced features are held. `gens`: {set label: (variant, store)}."""
    cfg, wd = ctx.config, ctx.workdir
    for layer in real.layers:
        emb = wd.fitted(layer)
        real_red = _reduced(emb, real, layer)
        yield FeatureSpace(f"{layer}:{cfg.features.reduce}+standardise+pca{emb.n_components}", real_red,
                           {label: (_reduced(emb, s, layer), variant_classes(v, s.metadata()))
                            for label, (v, s) in gens.items()},
                           wd.fit_real_neighbours(layer, real_red),
                           {"layer": layer} if layer == cfg.metrics.layer else None)


def standard_spaces(ctx: Context, real, gens: dict) -> Iterator[FeatureSpace]:
    """The encoders' spaces (dmd2report/encoders/), one at a time, in their features as the published protocols use
    them (float32, unreduced: FID is the Frechet distance of Inception's raw pool features), with their classifiers'
    top-1 classes and Inception's score logits as evidence."""
    cfg = ctx.config
    references = {e.name: e.reference_stats for e in encoder_entries(cfg)}
    for name, info in real.encoders.items():
        to_data = _class_map(info.get("class_order", ""), ctx.classes, info["num_classes"])

        def extra(store):
            if not info["num_classes"]:
                return {}
            logits = store.logits(name)
            out = {} if to_data is None else {"predicted": to_data[logits.argmax(axis=1)]}
            return out | ({"score_logits": logits} if info["kind"].startswith("inception") else {})

        reference, ref_moments = references.get(name, ""), None
        if reference:
            ref_moments = load_stats(Path(reference), info["feature_dim"])
        yield FeatureSpace(
            f"{name}:{info['kind']}", _raw(real, name),
            {label: (_raw(s, name), variant_classes(v, s.metadata()), extra(s)) for label, (v, s) in gens.items()},
            None, {"layer": name} if name == cfg.metrics.layer else None, extra(real), ref_moments,
            {"encoder": name, "kind": info["kind"], "protocol": info["protocol"],
             "reference_stats": {"file": Path(reference).name, "sha256": sha256_file(Path(reference))} if reference
             else None})


def _class_map(order: str, data_classes, num_classes: int) -> np.ndarray | None:
    """A classifier's output index -> the data's class id (-1 where the data has no such class), by synset; None
    for logits in no class order (Inception's 1008)."""
    index = {"imagenet": ClassIndex.imagenet, "demo": ClassIndex.demo}.get(order)
    if index is None:
        return None
    synsets = index().synsets[:num_classes]
    known = {s: i for i, s in enumerate(data_classes.synsets)}
    return np.array([known.get(s, -1) for s in synsets], np.int64)


def _raw(store, name: str) -> np.ndarray:
    """A store's features of a standard space, as stored (float32, checked finite by the store), in memory."""
    x = np.ascontiguousarray(store.features(name), dtype=np.float32)
    return x if x.flags.writeable else x.copy()   # a one-chunk store's memory map is read-only


# The feature spaces every set is measured in, in metrics.json's order: each a source of `FeatureSpace`s.
FEATURE_SPACES = (unet_layers, standard_spaces)


def run(ctx: Context, overwrite: bool = False) -> None:
    cfg, m, wd = ctx.config, ctx.config.metrics, ctx.workdir
    fit_manifest = wd.fit_manifest()  # first: a fit of other stores is refused before any work
    real = wd.store("real", reader="measure")
    real_classes = real.metadata()["class_id"].to_numpy()
    # Every generator's sets in one measure call per space: the real side (radii, neighbours, fd_real) is
    # searched once and every set is scored against it (sets labelled `<generator>/<variant>` in a comparison).
    sets = {set_label(g, v): (g, v, name) for g in ctx.generators for v, name in generated_sets(cfg, g)}
    gens = {label: (v, wd.store(name, reader="measure")) for label, (_, v, name) in sets.items()}
    results, headline, stats = [], None, {}
    for space in (space for source in FEATURE_SPACES for space in source(ctx, real, gens)):
        ctx.log.info("[measure] %s: %d real, %s", space.name, len(space.real),
                     ", ".join(f"{len(g[0])} {v}" for v, g in space.generated.items()))
        generated = space.generated | matched_sets(space.generated, sets, cfg)
        # per-point arrays are kept for the headline space only: other spaces skip the searches only they need
        r = measure(space.real, real_classes, generated, feature_space=space.name, k_pr=m.k_pr, k_dc=m.k_dc,
                    k_fidelity=m.k_fidelity, k_neighbours=m.k_neighbours, bootstrap=m.bootstrap, seed=cfg.run.seed,
                    arrays=space.headline is not None, device=ctx.generator.device(),
                    real_neighbours=space.real_neighbours, real_extra=space.real_extra,
                    reference_moments=space.reference_moments)
        fold_matched(r)
        r["reference"]["fd"] = fd_real_halves(space.real, real_classes, cfg.run.seed)   # the scale FD reads against
        r["reference_per_class"] = {c: {"fd": e} for c, e in   # and a class's FD
                                    fd_real_halves_per_class(space.real, real_classes, cfg.run.seed).items()}
        if space.protocol is not None:
            r["protocol"] = space.protocol
            stats[space.protocol["encoder"]] = mean_and_cov(space.real)
        if space.headline is not None:
            headline = (r["arrays"], {"feature_space": space.name, **space.headline, "fit": wd.fit_id(fit_manifest)})
        results.append(r)
    trust = fit_manifest.get("trust", {})
    documents = {}
    for name, g in ctx.generators.items():
        ident = g.identity()
        own = {label: v for label, (gen, v, _) in sets.items() if gen == name}   # this generator's sets: label -> variant
        provenance = {"model_checksum": ident["sha256"], "model_preset": ident["preset"],
                      "checkpoint": Path(ident["checkpoint"]).name if ident["checkpoint"] else "",
                      "data": {"source": cfg.data.source, "path": cfg.data.path, "n_real": len(real_classes)},
                      "config_hash": cfg.section_hash(), "headline_layer": m.layer,
                      "fit": {own.get(k, k): t for k, t in trust.items() if k == "real" or k in own}}   # by variant
        if name:
            provenance |= {"generator": name, "encoder": ctx.generator.name}
        documents[name] = metrics_document([r | {"variants": {v: r["variants"][label] for label, v in own.items()},
                                                 "matched": {v: r["matched"][label] for label, v in own.items()
                                                             if label in r["matched"]}}
                                            for r in results], provenance)
    # measure/ is replaced whole: metrics.json, arrays.npz and headline.json always come from one run.
    with wd.replacing(wd.measure) as out:
        if headline is not None:
            save_npz(out / "arrays.npz", **flatten_arrays(headline[0]))
            save_json(out / "headline.json", headline[1])
        document = documents[""] if "" in documents else comparison_document(documents, ctx.generator.name)
        save_metrics_document(out / "metrics.json", document)
        for name, (mu, sigma) in stats.items():
            save_stats(out / f"{name}.stats.npz", mu, sigma)


MATCHED = "@matched"   # the label suffix of a class-conditioned set's first seeds, measured beside the set


def matched_sets(generated: dict, sets: dict, cfg) -> dict:
    """The class-conditioned sets' first `generate.variant_samples` samples: the seeds and classes every other variant
    is drawn from, so each variant has a class-conditioned counterpart of its own sample count (coverage and recall
    grow with the count; 1,200 class-conditioned samples beside 240 of a variant would favour them). Only where the
    run has other variants and the class set is larger than they are. `sets`: {label: (generator, variant, store)}."""
    out = {}
    if not any(v != "class" for _, v, _ in sets.values()):
        return out
    for label, (_, variant, _) in sets.items():
        n = min(cfg.generate.variant_samples, len(generated[label][0]))
        if variant == "class" and n < len(generated[label][0]):
            feats, cond, *extra = generated[label]
            out[label + MATCHED] = (feats[:n], cond[:n], *({k: a[:n] for k, a in e.items()} for e in extra))
    return out


def fold_matched(result: dict) -> None:
    """Each matched set's overall entries out of the variants, into the space's "matched" under its class-conditioned
    set's label ({"n_seeds", "overall"}: metrics.json's `feature_spaces.<space>.matched.class`); its arrays dropped
    (the map draws the whole set)."""
    result["matched"] = {}
    for label in [k for k in result["variants"] if k.endswith(MATCHED)]:
        entries = result["variants"].pop(label)["overall"]
        n = entries["precision"]["n_generated"] if "precision" in entries else 0
        result["matched"][label[:-len(MATCHED)]] = {"n_seeds": int(n), "overall": entries}
        if result.get("arrays"):
            result["arrays"]["variants"].pop(label, None)


def _reduced(emb, store, layer: str) -> np.ndarray:
    """A store's features of `layer` in the fitted reduced space, checked finite (FD and the k-NN
    metrics would otherwise fail or mislead). Read chunk by chunk from the memory-mapped store and
    reduced chunk by chunk: only the reduced (n, n_components) float32 array is held, never a copy of
    the full-width layer (768 floats a sample at ImageNet scale)."""
    x = emb.reduce_chunks(store.iter_features(layer), total=len(store), desc=f"reduce {store.path.name}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise UserError(f"measure: non-finite values in {store.path.name} features of layer {layer} after the fitted "
                        f"reduction, first at row {int(bad[0])}; rerun `dmd2report fit`")
    return x


def flatten_arrays(arrays: dict) -> dict[str, np.ndarray]:
    """The per-point arrays of the headline layer, flattened to `real.x` / `variant.name.x` keys.
    `real_covered_by` (rows of covering generated samples, -1 padded) is stored ragged: `.values` holds each
    real point's covering samples (nearest first, no -1) one point after the other, `.offsets` (n + 1) where
    each point's run starts, so point i's list is values[offsets[i]:offsets[i + 1]]."""
    flat = {}
    for k, v in arrays["real"].items():
        flat[f"real.{k}"] = np.asarray(v)
    for variant, d in arrays["variants"].items():
        for k, v in d.items():
            if k == "real_covered_by":
                v = np.asarray(v, np.int64).reshape(len(v), -1)
                valid = v >= 0     # each row's -1 padding follows its entries (a prefix of its neighbours)
                flat[f"variant.{variant}.{k}.offsets"] = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
                flat[f"variant.{variant}.{k}.values"] = v[valid]   # row-major: point by point, nearest first
            else:
                flat[f"variant.{variant}.{k}"] = np.asarray(v)
    return flat


def _reference_statistics(ctx: Context) -> dict:
    """The encoders' reference statistics files (encoders.reference_stats), by content."""
    return {f"encoders.reference_stats ({e.name})": ctx.workdir.content(Path(e.reference_stats).parent,
                                                                         [Path(e.reference_stats).name],
                                                                         write=ctx.generator.write_cache)
            for e in encoder_entries(ctx.config) if e.reference_stats}


STAGE = Stage(
    "measure", run, "Compute metrics.json and the report's neighbour arrays.", writes="measure/",
    after=("fit",), reads=("metrics",), content=_reference_statistics, outputs=lambda ctx: [ctx.workdir.measure])
