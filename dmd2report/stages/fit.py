"""The fit stage: per layer, standardisation + PCA fitted on the chosen set; a 2-D UMAP map of the
headline layer; every set projected onto it, with a trust score per point.

Writes `fit/<layer>.joblib` (the fitted reductions; pickles, so the manifest records their SHA-256
and nothing else is ever unpickled), `fit/points.parquet` (every point's map position and trust) and,
last, `fit/manifest.json`, which also records the stores fitted on (their config hashes): readers
refuse a fit of other stores (WorkDir.fit_manifest). fit/ is replaced whole at the end, so a failed
fit leaves the previous one as it was.
"""

from __future__ import annotations

import functools
import itertools
import logging
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd

from ..context import Context, Stage
from ..embed import FAST_METRICS, fit_map, fit_reduction, save_embedding, trust_scores, trust_summary
from ..errors import UserError
from ..files import array_digest, save_json, save_npz, save_parquet
from ..knn import as_device, knn
from ..workdir import generated_sets, set_label

log = logging.getLogger(__name__)


def run(ctx: Context, overwrite: bool = False) -> None:
    cfg, e, wd = ctx.config, ctx.config.embedding, ctx.workdir
    device = ctx.generator.device()
    real = wd.store("real", reader="fit")
    real_meta = real.metadata()
    real_classes = real_meta["class_id"].to_numpy()
    # Every generated set of every generator, by its label (its variant; `<generator>/<variant>` in a comparison).
    sets = {set_label(g, v): (g, v, name) for g in ctx.generators for v, name in generated_sets(cfg, g)}
    gens = {label: wd.store(name, reader="fit") for label, (_, _, name) in sets.items()}
    gen_meta = {v: s.metadata() for v, s in gens.items()}
    headline = cfg.metrics.layer
    if headline not in real.layers and headline not in real.encoders:
        raise UserError(f"metrics.layer: {headline!r} is not among the extracted layers or encoders "
                        f"({', '.join([*real.layers, *real.encoders])})")
    manifest = {"layers": {}, "headline": headline, "fit_on": e.fit_on,
                "stores": {"real": real.manifest["config_hash"]} | {name: gens[label].manifest["config_hash"]
                                                                    for label, (_, _, name) in sets.items()}}
    # The fitted set, read chunk by chunk from the memory-mapped stores (never a whole layer in memory).
    own_class = set_label(ctx.generator.name, "class")   # with several generators, fit_on is real (config.py)
    fit_sets = {"real": ["real"], "generated": [own_class], "both": ["real", own_class]}[e.fit_on]
    stores = {"real": real} | gens
    classes = {"real": real_classes} | {v: m["class_id"].to_numpy() for v, m in gen_meta.items()}
    fit_c = np.concatenate([classes[v] for v in fit_sets])
    frames, fitted_files = [], {}
    # A standard space (an encoder's) is measured unreduced, as its protocol is: reduced only to draw the map in it.
    for layer in real.layers + ([headline] if headline in real.encoders else []):
        chunks = lambda: itertools.chain.from_iterable(stores[v].iter_features(layer) for v in fit_sets)  # noqa: E731
        ctx.log.info("[fit] %s: standardise + PCA %d%s", layer, e.pca_components, " + UMAP" if layer == headline else "")
        emb = fit_reduction(chunks, e.pca_components, seed=cfg.run.seed, device=device, desc=f"PCA {layer}",
                            total=sum(len(stores[v]) for v in fit_sets))
        fitted_files[layer] = emb
        if layer != headline:
            manifest["layers"][layer] = {"file": f"{layer}.joblib", "params": emb.params}
            continue
        # Every set reduced once (chunk by chunk): the UMAP's input, the projection's and the trust scores'.
        reduced = {v: emb.reduce_chunks(s.iter_features(layer), total=len(s), desc=f"reduce {v}")
                   for v, s in stores.items()}
        log.debug("reduced every set: %d rows", sum(len(r) for r in reduced.values()))
        # When the UMAP is fitted on every real row (fit_on real, N <= fit_subsample), the fast path's
        # searches in PCA space coincide: the UMAP graph and the real trust score need each real row's
        # nearest other real rows, the projection and the trust of a generated set each of its rows'
        # nearest real rows. Each is then searched once, with the larger k, and shared (exact either way).
        n_real = len(reduced["real"])
        shared = (e.fit_on == "real" and n_real <= e.fit_subsample and e.projection == "fast"
                  and e.metric in FAST_METRICS)
        k_graph, k_trust_self, k_trust = min(e.n_neighbors, n_real - 1), min(e.trust_k, n_real - 1), min(e.trust_k, n_real)
        near = {}
        with _Searches(_ahead(device)) as searches:
            # The searches in PCA space, queued here, start once the UMAP is fitted (`on_fitted`): on a GPU they
            # run while the CPU projects the map. Not before: beside the UMAP's fit they made that step several
            # times slower on the H200 (`benchmarks/HISTORY.md`, "The fit's searches start once the UMAP is fitted").
            if shared:
                near["real"] = knn(reduced["real"], None, max(k_graph - 1, k_trust_self), exclude_self=True,
                                   device=device)   # the UMAP's graph: needed first
                for v in stores:
                    if v not in fit_sets:
                        searches.add(v, reduced[v], reduced["real"], max(k_graph, k_trust), device=device)
            else:
                searches.add("real", reduced["real"], None, k_trust_self, exclude_self=True, device=device)
                for label in sets:
                    searches.add(label, reduced[label], reduced["real"], k_trust, device=device)
            fit_map(emb, np.concatenate([reduced[v] for v in fit_sets]) if len(fit_sets) > 1 else reduced[fit_sets[0]],
                    fit_c, n_neighbors=e.n_neighbors, min_dist=e.min_dist, metric=e.metric, init=e.init,
                    fit_subsample=e.fit_subsample, projection=e.projection, projection_epochs=e.projection_epochs,
                    reproducible=e.reproducible, device=device, graph_knn=near.get("real"), on_fitted=searches.launch)
            manifest["layers"][layer] = {"file": f"{layer}.joblib", "params": emb.params}
            # Sets that were part of the fitted set already have coordinates; the others are projected.
            coords, row = {}, 0
            for v in fit_sets:
                coords[v] = emb.coords[row:row + len(reduced[v])]
                row += len(reduced[v])
            for v in stores:
                if v in coords:
                    continue
                if shared:
                    near[v] = searches.result(v)
                coords[v] = emb.transform_reduced(reduced[v], device=device, desc=f"project {v}", neighbours=near.get(v))
                log.debug("projected %s: %d points", v, len(coords[v]))
            for name in searches.pending():
                near[name] = searches.result(name)
        real_red, real_2d = reduced["real"], coords["real"]
        real_trust = trust_scores(real_red, real_2d, real_red, real_2d, k=k_trust_self, exclude_self=True, device=device,
                                  feature_neighbours=near["real"][1])
        # Measure's real radii and neighbour lists of this layer are a prefix of this exact search of the same
        # reduced rows (one of its largest searches at ImageNet scale): kept, with the rows' digest, for reuse.
        real_knn = {"dist": near["real"][0], "idx": near["real"][1]}
        manifest["real_knn"] = {"file": "real_knn.npz", "layer": layer, "k": int(near["real"][1].shape[1]),
                                "reduced_sha256": array_digest(real_red)}
        log.debug("trust of %d real points", len(real_trust))
        frames.append(_points_frame("real", "real", real_meta, real_2d, real_trust))
        summaries = {"real": trust_summary(real_trust)}
        for label, (generator, variant, _) in sets.items():
            trust = trust_scores(reduced[label], coords[label], real_red, real_2d, k=k_trust, device=device,
                                 feature_neighbours=near[label][1])
            frame = _points_frame("generated", variant, gen_meta[label], coords[label], trust)
            frames.append(frame.assign(generator=generator) if generator else frame)
            summaries[label] = trust_summary(trust)
            log.debug("trust of %s: %d points", label, len(trust))
        manifest["trust"] = summaries
    manifest["fit_id"] = wd.fit_id(manifest)
    with wd.replacing(wd.fit) as out:
        for layer, emb in fitted_files.items():
            manifest["layers"][layer]["sha256"] = save_embedding(emb, out / f"{layer}.joblib")
        save_npz(out / "real_knn.npz", **real_knn)
        points = pd.concat(frames, ignore_index=True)
        if "generator" in points:   # a comparison: which generator made each point ("" for real ones)
            points["generator"] = points["generator"].fillna("")
        save_parquet(out / "points.parquet", points)
        log.debug("saved %d map points", len(points))
        # The SHA-256 of every fitted file: the only files `load_embedding` will ever unpickle. Written last.
        save_json(out / "manifest.json", manifest)


def _ahead(device) -> bool:
    """Whether the fit's searches start ahead of their use, in a thread of their own: on a GPU, where they run
    while the CPU projects the map (the projection's numba layout on the CPU cores, without the GIL; the searches
    on the GPU); not on the CPU, whose cores the two would share."""
    return as_device(device).type == "cuda"


class _Searches:
    """Exact searches (`knn.knn`) queued before they are needed and collected when they are: with `ahead`,
    `launch` starts them in one background thread (in the order queued); else (or not launched) each runs when
    collected. Either way the same calls with the same arguments, so the same results; an error in a search is
    raised where it is collected."""

    def __init__(self, ahead: bool):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fit-search") if ahead else None
        self._jobs: dict = {}

    def add(self, name: str, *args, **kwargs) -> None:
        self._jobs[name] = functools.partial(knn, *args, **kwargs)

    def launch(self) -> None:
        if self._pool is not None:
            for name, job in self._jobs.items():
                if not isinstance(job, Future):
                    self._jobs[name] = self._pool.submit(job)

    def pending(self) -> list[str]:
        return list(self._jobs)

    def result(self, name: str):
        job = self._jobs.pop(name)
        return job.result() if isinstance(job, Future) else job()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:   # on an error: searches not started yet are dropped, a running one ends
            self._pool.shutdown(wait=True, cancel_futures=True)


def _points_frame(set_name: str, variant: str, meta: pd.DataFrame, coords: np.ndarray, trust: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"set": set_name, "variant": variant, "row": np.arange(len(meta)),
                         "sample_id": meta["sample_id"].astype(str).to_numpy(),
                         "class_id": meta["class_id"].to_numpy().astype(np.int64),
                         "source": meta["source"].astype(str).to_numpy() if "source" in meta else "",
                         "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32),
                         "trust": trust.astype(np.float32)})


STAGE = Stage(
    "fit", run, "Fit the reductions and the 2-D map; project every set; trust scores.", writes="fit/",
    after=("generate",), reads=("embedding", "metrics.layer"), outputs=lambda ctx: [ctx.workdir.fit])
