"""The fit stage's map work beside its exact searches in PCA space, side by side: when to start the searches,
and on which CUDA stream (the choice `stages/fit.py`'s `_Searches` makes).

    PYTHONPATH=. python benchmarks/fit_overlap.py --n 640000 --out fit-overlap-h200.json

Synthetic class-structured rows (1000 classes, already the PCA width, 50), reduced as the fit reduces them,
and the fit's three pieces of work on them:
- umap: the UMAP fitted on the class-balanced subsample of 50,000 rows (`fit_map`, its graph search included
  and also timed apart),
- project: every other row placed by the fast projection (`Embedding.transform_reduced`; its searches of the
  fitted rows also timed apart),
- searches: the trust scores' exact searches (the rows among themselves, k = 10, and 100,000 + 3 x 50,000
  generated-like rows against them), what `_Searches` runs in its background thread.

Schedules, each timed whole and piece by piece, after one untimed warm-up on a small set (numba's compiles):
- sequential: umap, project, searches, one after the other (no thread);
- ahead: the searches started in a thread before umap (the fit as of 2e06709);
- ahead-stream: the same, the thread on a CUDA stream of its own;
- after-umap: umap first, then the searches started in a thread beside project;
- after-umap-stream: the same, the thread on a CUDA stream of its own.
Needs CUDA (on the CPU the fit runs its searches in line: `_ahead`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time

import numpy as np
import torch

from dmd2report import embed
from dmd2report.embed import balanced_subsample, fit_map, fit_reduction
from dmd2report.knn import knn

DEVICE = "cuda"
SCHEDULES = ("sequential", "ahead", "ahead-stream", "after-umap", "after-umap-stream")


def synthetic(n: int, classes: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(0, 0.7, (n, dim)).astype(np.float32)), labels


class Searches:
    """The trust searches in a thread (optionally on a stream of its own), timed."""

    def __init__(self, real, gens, stream: bool):
        self.real, self.gens, self.stream = real, gens, stream
        self.seconds = None

    def _run(self):
        t = time.perf_counter()
        ctx = torch.cuda.stream(torch.cuda.Stream()) if self.stream and DEVICE == "cuda" else contextlib.nullcontext()
        with ctx:
            knn(self.real, None, 10, exclude_self=True, device=DEVICE)
            for g in self.gens:
                knn(g, self.real, 10, device=DEVICE)
        self.seconds = time.perf_counter() - t

    def start(self):
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        return self

    def join(self):
        self.thread.join()
        return self.seconds


_graph_search = []   # seconds of fit_map's own graph search (the main thread's knn calls)


def _timed_knn(*args, **kwargs):
    if threading.current_thread() is not threading.main_thread():
        return knn(*args, **kwargs)
    t = time.perf_counter()
    out = knn(*args, **kwargs)
    _graph_search.append(time.perf_counter() - t)
    return out


embed.knn = _timed_knn   # fit_map's graph search, timed apart from the UMAP's layout


def run(schedule: str, X, labels, gens, fit_index, rest) -> dict:
    emb = fit_reduction(X, X.shape[1], device=DEVICE, progress=False)
    red = emb.reduce(X)
    reds = [emb.reduce(g) for g in gens]
    times = {}
    t0 = time.perf_counter()
    bg = None
    stream = schedule.endswith("-stream")
    if schedule.startswith("ahead"):
        bg = Searches(red, reds, stream).start()
    t = time.perf_counter()
    fit_map(emb, red[fit_index], labels[fit_index], fit_subsample=len(fit_index), device=DEVICE, progress=False)
    times["umap"] = time.perf_counter() - t
    times["umap_graph_search"] = sum(_graph_search)
    _graph_search.clear()
    if schedule.startswith("after-umap"):
        bg = Searches(red, reds, stream).start()
    t = time.perf_counter()
    emb.transform_reduced(red[rest], device=DEVICE, progress=False)
    times["project"] = time.perf_counter() - t
    times["project_searches"] = sum(_graph_search)
    _graph_search.clear()
    if bg is None:
        bg = Searches(red, reds, False)
        bg._run()
        times["searches"] = bg.seconds
    else:
        t = time.perf_counter()
        times["searches"] = bg.join()
        times["wait_for_searches"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return {k: round(v, 2) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=640_000)
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--fit-subsample", type=int, default=50_000)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to try the script on small data")
    ap.add_argument("--out")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    import numba
    X, labels = synthetic(args.n, 1000, 50, 0)
    gens = [synthetic(m, 1000, 50, s)[0] for s, m in enumerate((100_000, 50_000, 50_000, 50_000), 1)]
    fit_index = balanced_subsample(labels, args.fit_subsample, 0)
    rest = np.setdiff1d(np.arange(args.n), fit_index)
    # warm-up: numba's compiles (cached or not), CUDA context, cuBLAS
    m = min(60_000, args.n)
    small = balanced_subsample(labels[:m], min(20_000, m // 3), 0)
    run("sequential", X[:m], labels[:m], [g[:5000] for g in gens], small, np.setdiff1d(np.arange(m), small))
    rows = []
    print(f"{args.n:,} rows x 50, UMAP on {len(fit_index):,}, {torch.get_num_threads()} torch threads, "
          f"numba threading layer {numba.threading_layer()}", flush=True)
    for s in args.schedules.split(","):
        r = run(s, X, labels, gens, fit_index, rest)
        rows.append({"schedule": s} | r)
        print(f"  {s:18s} " + "  ".join(f"{k} {v:7.2f}" for k, v in r.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
