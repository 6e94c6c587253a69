"""Exact k-NN timing: chunked torch (dmd2report.knn) on CPU and CUDA against baselines, same data, same run.

    python benchmarks/knn.py                      # 20,000 x 20,000 x 256, k = 10
    python benchmarks/knn.py --n 5000 --skip-baseline

Baselines: scikit-learn NearestNeighbors(algorithm="brute") (chunked pairwise distances with float64
upcasting), and the naive full N x M float32 distance matrix in numpy with argpartition (run last, so
the peak resident memory printed before it is that of the chunked search). faiss-cpu IndexFlatL2 runs side by side when importable. Each method's indices are checked
against the torch CPU result (fraction of identical neighbour lists, largest distance difference).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from dmd2report.knn import knn, within_radius


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux reports KiB


def agreement(ref, other):
    (d0, i0), (d1, i1) = ref, other
    return f"same lists {np.mean((i0 == i1).all(axis=1)):.4f}, max |d diff| {np.abs(d0 - d1).max():.2e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="queries = base points")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--block-mib", type=int, default=256, help="max_block_bytes of the chunked search, MiB")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    y = (rng.normal(size=(args.n, args.dim)) * 1.1 + 0.1).astype(np.float32)
    block = args.block_mib * 2**20
    print(f"exact k-NN, {args.n} queries x {args.n} base x {args.dim} dims, k={args.k}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, block {args.block_mib} MiB")

    rows = {}
    t, ref = timed(lambda: knn(y, x, args.k, device="cpu", max_block_bytes=block))
    rows["torch chunked, cpu"] = t
    print(f"torch chunked  cpu   {t:8.2f} s   (process peak RSS so far {peak_rss_gib():.2f} GiB)")
    r = ref[0][:, 2].copy()
    t, _ = timed(lambda: within_radius(y, x, r, device="cpu", max_block_bytes=block))
    print(f"torch chunked  cpu   {t:8.2f} s   (within_radius: one precision pass, same sizes)")

    try:
        import faiss
    except ImportError:
        print("faiss          cpu        -     (faiss-cpu not importable)")
    else:
        def run_faiss():
            index = faiss.IndexFlatL2(args.dim)
            index.add(x)
            d2, i = index.search(y, args.k)
            return np.sqrt(np.maximum(d2, 0)), i
        t, out = timed(run_faiss)
        rows["faiss IndexFlatL2, cpu"] = t
        print(f"faiss flat     cpu   {t:8.2f} s   {agreement(ref, out)}")

    if torch.cuda.is_available():
        knn(y[:1000], x[:1000], args.k, device="cuda")   # warm-up: context, kernels
        def run_cuda():
            out = knn(y, x, args.k, device="cuda", max_block_bytes=block)
            torch.cuda.synchronize()
            return out
        t, out = timed(run_cuda, repeat=3)
        rows["torch chunked, cuda"] = t
        print(f"torch chunked  cuda  {t:8.2f} s   {agreement(ref, out)} ({torch.cuda.get_device_name()})")
    else:
        print("torch chunked  cuda       -     (no CUDA device)")

    if not args.skip_baseline:
        from sklearn.neighbors import NearestNeighbors

        def run_sklearn():
            d, i = NearestNeighbors(n_neighbors=args.k, algorithm="brute").fit(x).kneighbors(y)
            return d.astype(np.float32), i
        t, out = timed(run_sklearn)
        rows["baseline sklearn brute, cpu"] = t
        print(f"sklearn brute  cpu   {t:8.2f} s   {agreement(ref, out)}  (baseline)")

        def run_full_matrix():
            d2 = (x * x).sum(1)[None, :] - 2 * (y @ x.T)
            d2 += (y * y).sum(1)[:, None]
            i = np.argpartition(d2, args.k, axis=1)[:, :args.k]
            part = np.take_along_axis(d2, i, 1)
            order = np.argsort(part, axis=1)
            return np.sqrt(np.maximum(np.take_along_axis(part, order, 1), 0)), np.take_along_axis(i, order, 1)
        t_full, out = timed(run_full_matrix)
        print(f"numpy full     cpu   {t_full:8.2f} s   {agreement(ref, out)}  (baseline; a {args.n}x{args.n} "
              f"float32 matrix = {args.n**2 * 4 / 2**30:.2f} GiB; process peak RSS {peak_rss_gib():.2f} GiB)")
        for name, secs in rows.items():
            if not name.startswith("baseline"):
                print(f"  {name}: {t / secs:5.2f}x the speed of sklearn brute, {t_full / secs:5.2f}x numpy full matrix")


if __name__ == "__main__":
    main()
