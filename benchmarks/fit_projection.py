"""Issue 20 item 2: the fast projection (`Embedding.project`) against umap-learn's `UMAP.transform`,
side by side on the same fitted map, on a demo work directory and on the synthetic 768-wide stores of
`benchmarks/scale.py`; and the time of each piece of the new fit.

    PYTHONPATH=. nice -n 10 python benchmarks/fit_projection.py --demo /tmp/cmp/work \
        --synthetic /tmp/fitscale/w50/work --n-new 10000 --out benchmarks/results/fit-projection-cpu2.json

For each set: median displacement |fast - umap| as a share of the fitted map's bounding-box diagonal
(and its 90th percentile), the mean trust score (k = 10 against the fitted real set) of each, and the
time of each, for `--epochs` layout epochs of the fast projection. The demo map is the one its fit
wrote (loaded hash-checked); the synthetic one is fitted here with the new code (fit_on real, the
defaults), timed piece by piece, and its save/load time measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dmd2report.embed import fit_map, fit_reduction, load_embedding, save_embedding, trust_scores
from dmd2report.store import Store


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2)


def umap_transform(emb, red) -> np.ndarray:
    """umap-learn's transform as umap-learn alone runs it: with pynndescent's search index over the fitted points
    (seeded; built here, as umap-learn's fit builds it), not the exact search dmd2report gives a fast map."""
    from pynndescent import NNDescent

    model = emb.umap
    if not getattr(model, "_small_data", True) and getattr(model, "_knn_search_index", None) is None:
        model._knn_search_index = NNDescent(model._raw_data, metric=model.metric, metric_kwds=model._metric_kwds,
                                            n_neighbors=model._n_neighbors, random_state=emb.params.get("seed", 0),
                                            n_jobs=1, low_memory=True, verbose=False)
    return emb.transform_reduced(red, method="umap", progress=False)


def compare(emb, red, real_red, real_2d, epochs) -> dict:
    """Both projections of reduced points `red` and their agreement."""
    fitted = np.asarray(emb.umap.embedding_)
    diag = float(np.linalg.norm(fitted.max(0) - fitted.min(0)))
    slow, t_umap = _timed(lambda: umap_transform(emb, red))   # the index's build counted, as before
    k = min(10, len(real_red))
    row = {"n": len(red), "n_umap_fit": len(fitted), "seconds_umap": t_umap,
           "trust_umap": float(trust_scores(red, slow, real_red, real_2d, k=k, device="cpu").mean())}
    for ep in epochs:
        fast, t = _timed(lambda: emb.project(red, n_epochs=ep, progress=False, device="cpu"))
        disp = np.linalg.norm(fast - slow, axis=1) / diag
        row[f"fast{ep}"] = {"seconds": t, "median_displacement_share": float(np.median(disp)),
                            "p90_displacement_share": float(np.quantile(disp, 0.9)),
                            "trust": float(trust_scores(red, fast, real_red, real_2d, k=k, device="cpu").mean())}
    print(json.dumps(row), flush=True)
    return row


def save_load(emb) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "map.joblib"
        digest, t_save = _timed(lambda: save_embedding(emb, path))
        _, t_load = _timed(lambda: load_embedding(path, digest))
        return {"save_s": t_save, "load_s": t_load, "mib": round(path.stat().st_size / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", help="a built work directory (read only)")
    ap.add_argument("--synthetic", help="the work directory of a benchmarks/scale.py run (read only)")
    ap.add_argument("--layer", default="midblock")
    ap.add_argument("--n-new", type=int, default=10000, help="generated points projected per set")
    ap.add_argument("--epochs", default="30,100")
    ap.add_argument("--out")
    args = ap.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    results = {}
    if args.demo:
        root = Path(args.demo)
        manifest = json.loads((root / "fit" / "manifest.json").read_text())
        layer = manifest["headline"]
        emb = load_embedding(root / "fit" / f"{layer}.joblib", manifest["layers"][layer]["sha256"])
        real_red = emb.reduce(Store(root / "stores" / "real").features(layer))
        for name in ("gen-class", "gen-uniform", "gen-zero", "gen-blend"):
            red = emb.reduce(Store(root / "stores" / name).features(layer))
            results[f"demo {name}"] = compare(emb, red, real_red, emb.coords, epochs)
    if args.synthetic:
        root = Path(args.synthetic)
        real = Store(root / "stores" / "real")
        timings = {}
        emb, timings["pca_s"] = _timed(lambda: fit_reduction(lambda: real.iter_features(args.layer), 50, device="cpu",
                                                             progress=False))
        real_red, timings["reduce_s"] = _timed(lambda: emb.reduce_chunks(real.iter_features(args.layer), progress=False))
        classes = real.metadata()["class_id"].to_numpy()
        _, timings["umap_fit_s"] = _timed(lambda: fit_map(emb, real_red, classes, device="cpu", progress=False))
        results["synthetic fit"] = timings | {"n_real": len(real_red)}
        print(results["synthetic fit"], flush=True)
        gen = emb.reduce_chunks(Store(root / "stores" / "gen-class").iter_features(args.layer), progress=False)
        results["synthetic gen-class"] = compare(emb, gen[:args.n_new], real_red, emb.coords, epochs)
        results["synthetic save/load"] = save_load(emb)
        print(results["synthetic save/load"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
