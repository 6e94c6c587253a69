"""The UMAP fit's settings side by side, on the same data in one process (issue 20 item 2).

Class-structured synthetic features at the dmd2-imagenet64 layer width (`ClassStructuredFeatures`, 1,000 classes),
reduced as the fit stage does (`embed.fit_reduction`, 50 components), the exact 15-NN graph (`knn.knn`), then
umap-learn's fit on that graph under each setting of `embedding.init` x `embedding.reproducible`, each timed
after numba has compiled (a 300-point fit of the same mode first). Map quality of each: trustworthiness
(sklearn, k = 10, on a fixed 4,000-point subsample) and the 10-NN class accuracy on the map (first half fits
the classifier, second half is scored).

    PYTHONPATH=. python benchmarks/umap_modes.py --n 50000 --out benchmarks/results/umap-modes-cpu2.json
    PYTHONPATH=. python benchmarks/umap_modes.py --store runs/demo/stores/real --seeds 2   # the demo's real set
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import ClassStructuredFeatures  # noqa: E402  (tests/synthetic.py)

MODES = [("spectral", True), ("pca", True), ("spectral", False), ("pca", False)]


def quality(reduced, classes, coords) -> dict:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import KNeighborsClassifier

    n = len(reduced)
    s = np.random.default_rng(1).choice(n, min(n, 4000), replace=False)
    half = n // 2
    acc = KNeighborsClassifier(10).fit(coords[:half], classes[:half]).score(coords[half:], classes[half:])
    return {"trustworthiness": round(float(trustworthiness(reduced[s], coords[s], n_neighbors=10)), 4),
            "knn_class_accuracy": round(float(acc), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--store", type=Path, help="a work directory's real store (e.g. the demo build's "
                    "runs/demo/stores/real) instead of synthetic features")
    ap.add_argument("--layer", default="midblock", help="the store's layer (with --store)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the reproducible modes (one fit each)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import umap

    from dmd2report.embed import fit_reduction
    from dmd2report.knn import knn

    if args.store:
        from dmd2report.store import Store

        store = Store(args.store)
        classes = store.metadata()["class_id"].to_numpy()
        emb = fit_reduction(lambda: store.iter_features(args.layer), 50, device="cpu", progress=False)
        reduced = emb.reduce_chunks(store.iter_features(args.layer), progress=False)
        args.n, args.classes = len(reduced), len(np.unique(classes))
    else:
        st = ClassStructuredFeatures(768, args.classes, 0)
        rng = np.random.default_rng(0)
        classes = rng.integers(0, args.classes, args.n)
        x = st.sample(rng, st.means[classes], 1.0, 0.3).astype(np.float32)
        reduced = fit_reduction(x, 50, device="cpu", progress=False).reduce(x)
    t = time.perf_counter()
    dist, idx = knn(reduced, None, 14, exclude_self=True, device="cpu")
    t_graph = time.perf_counter() - t
    rows = np.arange(args.n)[:, None]

    def graph():   # each row itself first, as the fit stage hands umap-learn its exact graph (a fresh copy per fit)
        return (np.concatenate([rows, idx], 1).astype(np.int32),
                np.concatenate([np.zeros_like(rows, np.float32), dist], 1))

    results = []
    for (init, reproducible), seed in ((m, s) for m in MODES for s in range(args.seeds if m[1] else 1)):
        kw = dict(n_neighbors=15, init=init, random_state=seed if reproducible else None, n_jobs=1 if reproducible else -1)
        umap.UMAP(**kw).fit(reduced[:300])                  # compile this mode's kernels first
        t = time.perf_counter()
        coords = umap.UMAP(**kw, precomputed_knn=graph()).fit(reduced).embedding_
        row = {"init": init, "reproducible": reproducible, "seed": seed if reproducible else None,
               "seconds": round(time.perf_counter() - t, 2)}
        row.update(quality(reduced, classes, coords))
        results.append(row)
        print(json.dumps(row), flush=True)
    base = results[0]["seconds"]
    for r in results:
        r["speedup_vs_spectral_seeded"] = round(base / r["seconds"], 2)
    doc = {"data": str(args.store or "synthetic"), "n": args.n, "classes": args.classes, "graph_seconds": round(t_graph, 2), "cores": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "umap": umap.__version__, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
