"""The fit stage: per layer, standardisation + PCA fitted on the chosen set; a 2-D UMAP map of the
headline layer; every set projected onto it, with a trust score per point.

Writes `fit/<layer>.joblib` (the fitted reductions; pickles, so the manifest records their SHA-256
and nothing else is ever unpickled), `fit/points.parquet` (every point's map position and trust) and,
last, `fit/manifest.json`, which also records the stores fitted on (their config hashes): readers
refuse a fit of other stores (WorkDir.fit_manifest). fit/ is replaced whole at the end, so a failed
fit leaves the previous one as it was.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..context import Context
from ..embed import fit_embedding, save_embedding, trust_scores, trust_summary
from ..errors import UserError
from ..files import save_json, save_parquet
from ..workdir import generated_sets

log = logging.getLogger(__name__)


def run(ctx: Context, overwrite: bool = False) -> None:
    cfg, e, wd = ctx.config, ctx.config.embedding, ctx.workdir
    real = wd.store("real", reader="fit")
    real_meta = real.metadata()
    real_classes = real_meta["class_id"].to_numpy()
    gens = {v: wd.store(name, reader="fit") for v, name in generated_sets(cfg)}
    headline = cfg.metrics.layer
    if headline not in real.layers:
        raise UserError(f"metrics.layer: {headline!r} is not among the extracted layers ({', '.join(real.layers)})")
    manifest = {"layers": {}, "headline": headline, "fit_on": e.fit_on,
                "stores": {"real": real.manifest["config_hash"]} | {n: gens[v].manifest["config_hash"]
                                                                    for v, n in generated_sets(cfg)}}
    frames, fitted_files = [], {}
    for layer in real.layers:
        real_x = real.features(layer)
        gen_x = gens["class"].features(layer)
        gen_classes = gens["class"].metadata()["class_id"].to_numpy()
        fit_x, fit_c = {"real": (real_x, real_classes),
                        "generated": (gen_x, gen_classes),
                        "both": (np.concatenate([real_x, gen_x]), np.concatenate([real_classes, gen_classes]))}[e.fit_on]
        ctx.log.info("[fit] %s: standardise + PCA %d%s", layer, e.pca_components, " + UMAP" if layer == headline else "")
        emb = fit_embedding(fit_x, fit_c, pca_components=e.pca_components, n_neighbors=e.n_neighbors,
                            min_dist=e.min_dist, metric=e.metric, seed=cfg.run.seed, fit_subsample=e.fit_subsample,
                            with_map=layer == headline)
        fitted_files[layer] = emb
        manifest["layers"][layer] = {"file": f"{layer}.joblib", "params": emb.params}
        if layer != headline:
            continue
        # Sets that were part of the fitted set already have coordinates; the others are projected.
        fitted = {"real": {"real": emb.coords}, "generated": {"class": emb.coords},
                  "both": {"real": emb.coords[: len(real_x)], "class": emb.coords[len(real_x):]}}[e.fit_on]
        real_red = emb.reduce(real_x)
        real_2d = fitted["real"] if "real" in fitted else emb.transform(real_x)
        real_trust = trust_scores(real_red, real_2d, real_red, real_2d, k=min(e.trust_k, len(real_x) - 1),
                                  exclude_self=True)
        frames.append(_points_frame("real", "real", real_meta, real_2d, real_trust))
        summaries = {"real": trust_summary(real_trust)}
        for variant, store in gens.items():
            g = store.features(layer)
            g2d = fitted[variant] if variant in fitted else emb.transform(g)
            trust = trust_scores(emb.reduce(g), g2d, real_red, real_2d, k=min(e.trust_k, len(real_x)))
            frames.append(_points_frame("generated", variant, store.metadata(), g2d, trust))
            summaries[variant] = trust_summary(trust)
        manifest["trust"] = summaries
    manifest["fit_id"] = wd.fit_id(manifest)
    with wd.replacing(wd.fit) as out:
        for layer, emb in fitted_files.items():
            manifest["layers"][layer]["sha256"] = save_embedding(emb, out / f"{layer}.joblib")
        save_parquet(out / "points.parquet", pd.concat(frames, ignore_index=True))
        # The SHA-256 of every fitted file: the only files `load_embedding` will ever unpickle. Written last.
        save_json(out / "manifest.json", manifest)


def _points_frame(set_name: str, variant: str, meta: pd.DataFrame, coords: np.ndarray, trust: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"set": set_name, "variant": variant, "row": np.arange(len(meta)),
                         "sample_id": meta["sample_id"].astype(str).to_numpy(),
                         "class_id": meta["class_id"].to_numpy().astype(np.int64),
                         "source": meta["source"].astype(str).to_numpy() if "source" in meta else "",
                         "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32),
                         "trust": trust.astype(np.float32)})
