"""The measure stage: exact metrics in the reduced space of every layer, overall, per class and per
variant (`metrics.measure`), into `measure/metrics.json`; the headline layer's per-point arrays (radii,
neighbours, coverage) into `measure/arrays.npz` for the report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..context import Context
from ..errors import UserError
from ..files import save_json, save_npz
from ..metrics import NO_CLASS, measure, write_metrics_json
from ..workdir import generated_sets

log = logging.getLogger(__name__)


def variant_classes(variant: str, meta: pd.DataFrame) -> np.ndarray:
    """Conditioning class of each sample for class fidelity: the class for one-hot and blend
    conditioning (a blend's heaviest class), none for uniform and zero."""
    if variant in ("uniform", "zero"):
        return np.full(len(meta), NO_CLASS, np.int64)
    return meta["class_id"].to_numpy().astype(np.int64)


def run(ctx: Context, overwrite: bool = False) -> None:
    cfg, m, wd = ctx.config, ctx.config.metrics, ctx.workdir
    fit_manifest = wd.fit_manifest()  # first: a fit of other stores is refused before any work
    real = wd.store("real", reader="measure")
    real_classes = real.metadata()["class_id"].to_numpy()
    gens = {v: wd.store(name, reader="measure") for v, name in generated_sets(cfg)}
    results, headline = [], None
    for layer in real.layers:
        emb = wd.fitted(layer)
        real_red = _reduced(emb, real, layer)
        generated = {v: (_reduced(emb, s, layer), variant_classes(v, s.metadata())) for v, s in gens.items()}
        space = f"{layer}:{cfg.features.reduce}+standardise+pca{emb.n_components}"
        ctx.log.info("[measure] %s: %d real, %s", space, len(real_red),
                     ", ".join(f"{len(g[0])} {v}" for v, g in generated.items()))
        r = measure(real_red, real_classes, generated, feature_space=space, k_pr=m.k_pr, k_dc=m.k_dc,
                    k_fidelity=m.k_fidelity, k_neighbours=m.k_neighbours, bootstrap=m.bootstrap, seed=cfg.run.seed)
        if layer == m.layer:
            headline = (r["arrays"], {"feature_space": space, "layer": layer, "fit": wd.fit_id(fit_manifest)})
        results.append(r)
    ident = ctx.generator.identity()
    provenance = {"model_checksum": ident["sha256"], "model_preset": ident["preset"],
                  "checkpoint": Path(ident["checkpoint"]).name if ident["checkpoint"] else "",
                  "data": {"source": cfg.data.source, "path": cfg.data.path, "n_real": len(real_classes)},
                  "config_hash": cfg.section_hash(), "headline_layer": m.layer,
                  "fit": fit_manifest.get("trust", {})}
    # measure/ is replaced whole: metrics.json, arrays.npz and headline.json always come from one run.
    with wd.replacing(wd.measure) as out:
        if headline is not None:
            save_npz(out / "arrays.npz", **flatten_arrays(headline[0]))
            save_json(out / "headline.json", headline[1])
        write_metrics_json(out / "metrics.json", results, provenance)


def _reduced(emb, store, layer: str) -> np.ndarray:
    """A store's features of `layer` in the fitted reduced space, checked finite (FD and the k-NN
    metrics would otherwise fail or mislead)."""
    x = emb.reduce(store.features(layer))
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise UserError(f"measure: non-finite values in {store.path.name} features of layer {layer} after the fitted "
                        f"reduction, first at row {int(bad[0])}; rerun `dmd2report fit`")
    return x


def flatten_arrays(arrays: dict) -> dict[str, np.ndarray]:
    """The per-point arrays of the headline layer, flattened to `real.x` / `variant.name.x` keys."""
    flat = {}
    for k, v in arrays["real"].items():
        flat[f"real.{k}"] = np.asarray(v)
    for variant, d in arrays["variants"].items():
        for k, v in d.items():
            if k == "real_covered_by":  # rows of covering samples: stored as offsets + values
                lengths = np.array([len(x) for x in v], np.int64)
                flat[f"variant.{variant}.{k}.offsets"] = np.concatenate([[0], np.cumsum(lengths)])
                flat[f"variant.{variant}.{k}.values"] = np.concatenate([np.asarray(x, np.int64) for x in v]) \
                    if len(v) else np.zeros(0, np.int64)
            else:
                flat[f"variant.{variant}.{k}"] = np.asarray(v)
    return flat
