"""Exact k-NN timing: chunked torch (dmd2report.knn) on CPU and CUDA against baselines, same data, same run.

    python benchmarks/knn.py                      # 20,000 x 20,000 x 256, k = 10
    python benchmarks/knn.py --n 5000 --skip-baseline
    python benchmarks/knn.py --trust              # trust-score searches: old numpy all-pairs vs knn.py

`--kernels REF` times the searches of the measure stage (on the CPU; `--kernels-device cuda`), this code against the code at git commit REF
(its `knn.py` loaded from `git show` into a package of its own), same data, same process, identical results
checked: a set among itself (k = 14, each point excluded: the fit's graph, the metrics' radii) and one
generated x real pass of the metrics (ball tests for precision, recall, density and coverage, the generated
samples' 10 nearest real points, the real points' 16 nearest generated samples).

`--trust` times the trust score's two searches (real x real, k = 10, each point excluded from its own
list) at 50,000 x 50,000: in feature space (50 dims, chunked torch on the CPU) and on the 2-D map (cKDTree),
against a copy of the float64 numpy all-pairs search the package used before (`embed._exact_knn`, kept here
only as the baseline); `--trust-baseline-n` runs the baseline on fewer points when it is too slow.

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

OLD_CHUNK_BYTES = 64 << 20   # embed.KNN_CHUNK_BYTES before the one k-NN module


def old_exact_knn(query, ref, k, exclude_self=False):
    """The removed embed._exact_knn, verbatim but for the name: float64 numpy all-pairs product form,
    chunked over queries, argpartition then lexsort. (indices, distances). Baseline only."""
    q = np.asarray(query, np.float64)
    r = np.asarray(ref, np.float64)
    if exclude_self and len(q) != len(r):
        raise ValueError("exclude_self needs the query set to be the reference set")
    r2 = np.einsum("ij,ij->i", r, r)
    rows = max(1, OLD_CHUNK_BYTES // (8 * max(1, len(r))))
    idx = np.empty((len(q), k), np.int64)
    dist = np.empty((len(q), k), np.float64)
    for s in range(0, len(q), rows):
        qc = q[s:s + rows]
        d2 = np.einsum("ij,ij->i", qc, qc)[:, None] - 2.0 * qc @ r.T + r2[None, :]
        np.maximum(d2, 0.0, out=d2)
        if exclude_self:
            d2[np.arange(len(qc)), np.arange(s, s + len(qc))] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.broadcast_to(np.arange(d2.shape[1]), d2.shape)
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        idx[s:s + rows] = np.take_along_axis(part, order, axis=1)
        dist[s:s + rows] = np.sqrt(np.take_along_axis(pd, order, axis=1))
    return idx, dist


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


def trust_searches(n: int, baseline_n: int, k: int, block: int) -> None:
    """The trust score's searches, real x real with exclude_self: old numpy all-pairs vs knn.py."""
    from dmd2report.embed import trust_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 50)) * 3
    feats = (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, 50))).astype(np.float32)
    map_2d = (feats[:, :2] * 2 + rng.normal(size=(n, 2))).astype(np.float32)   # a noisy 2-D view of them
    print(f"trust-score searches, real x real, k={k}, each point excluded from its own list; "
          f"{torch.get_num_threads()} torch threads, block {block // 2**20} MiB")
    for name, x in (("feature space, 50 dims", feats), ("2-D map", map_2d)):
        t_new, (d, i) = timed(lambda x=x: knn(x, None, k, exclude_self=True, device="cpu", max_block_bytes=block))
        path = "cKDTree" if x.shape[1] <= 2 else "torch chunked, cpu"
        m = min(baseline_n, n)
        sub = x[:m]
        t_old, (oi, od) = timed(lambda sub=sub: old_exact_knn(sub, sub, k, exclude_self=True))
        if m == n:
            same, t_old_n = np.mean((oi == i).all(axis=1)), t_old
            d_diff = np.abs(od - d).max()
            note = ""
        else:   # the knn result on the subset, to compare lists; the old time scaled by (n / m)^2
            _, si = knn(sub, None, k, exclude_self=True, device="cpu", max_block_bytes=block)
            same, t_old_n = np.mean((oi == si).all(axis=1)), t_old * (n / m) ** 2
            d_diff = float("nan")
            note = f" (old search run on {m:,} points: {t_old:.2f} s, scaled by (n/m)^2)"
        print(f"  {name:24s} knn ({path}) {t_new:8.2f} s   old numpy all-pairs {t_old_n:8.2f} s   "
              f"{t_old_n / t_new:7.1f}x faster   same lists {same:.4f}, max |d diff| {d_diff:.1e}{note}")
    q = n // 2
    t_new, scores = timed(lambda: trust_scores(feats[:q], map_2d[:q], feats[q:], map_2d[q:], k=k, device="cpu"))
    print(f"  trust_scores, {q:,} generated x {n - q:,} real (both searches): {t_new:.2f} s, mean {scores.mean():.4f}")


def load_knn_at(ref: str):
    """dmd2report's knn.py as it was at git commit `ref`, imported as a module of a throwaway package."""
    import importlib
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="knn-at-")) / "knn_at_ref"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name in ("knn.py", "device.py", "errors.py"):
        (root / name).write_text(subprocess.run(["git", "show", f"{ref}:dmd2report/{name}"], check=True,
                                                capture_output=True, text=True).stdout)
    sys.path.insert(0, str(root.parent))
    return importlib.import_module("knn_at_ref.knn")


def kernels_side_by_side(n: int, n_gen: int, dim: int, ref: str, device: str = "cpu") -> None:
    """This code's search against the code at `ref` on `device`, at the measure stage's shapes (see the docstring)."""
    from dmd2report import knn as new

    old = load_knn_at(ref)
    rng = np.random.default_rng(0)
    # class-structured like the metrics' reduced spaces: 1,000 class means, decaying principal variances
    means = rng.normal(size=(1000, dim)).astype(np.float32) * 2
    scale = np.linspace(3, 0.3, dim).astype(np.float32)
    real = rng.normal(size=(n, dim)).astype(np.float32) * scale + means[rng.integers(0, 1000, n)]
    gen = rng.normal(size=(n_gen, dim)).astype(np.float32) * scale * 1.1 + means[rng.integers(0, 1000, n_gen)]
    new.knn(real[:2000], None, 14, exclude_self=True, device=device)   # numba compiles (or loads its cache)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"{device} searches, {n:,} real and {n_gen:,} generated x {dim} dims, {torch.get_num_threads()} torch threads; "
          f"this code against {ref}")

    def self_search(mod):
        out = mod.knn(real, None, 14, exclude_self=True, device=device)
        sync()
        return out

    rr = {}
    for label, mod in (("this code", new), (ref, old)):
        rr[label] = timed(lambda mod=mod: self_search(mod))
    same = all(np.array_equal(a, b) for a, b in zip(rr["this code"][1], rr[ref][1]))
    t_new, t_old = rr["this code"][0], rr[ref][0]
    print(f"  real among itself, k = 14        this code {t_new:7.2f} s   {ref} {t_old:7.2f} s   "
          f"{t_old / t_new:5.2f}x   identical {same}")
    r = rr["this code"][1][0]
    col_radii = np.stack([r[:, 2], r[:, 4]], axis=1)
    row_radius = new.knn(gen, None, 3, exclude_self=True, device=device)[0][:, 2]

    def pass_new():
        out = new.radius_counts(gen, real, col_radii=col_radii, row_radius=row_radius, k=10, k_base=16, device=device)
        return out["row_counts"], out["col_counts"], out["col_counts_row"], *out["knn"], *out["knn_base"]

    def pass_old():
        out = old.radius_counts(gen, real, col_radii=col_radii, row_radius=row_radius, k=10, device=device)
        back = old.knn(real, gen, 16, device=device)   # the real points' nearest generated: a search of its own
        return out["row_counts"], out["col_counts"], out["col_counts_row"], *out["knn"], *back

    t_new, a = timed(pass_new)
    t_old, b = timed(pass_old)
    same = all(np.array_equal(x, y) for x, y in zip(a, b))
    print(f"  generated x real metrics pass    this code {t_new:7.2f} s   {ref} {t_old:7.2f} s   "
          f"{t_old / t_new:5.2f}x   identical {same}")


def block_shapes(n: int, dim: int, repeat: int = 3) -> None:
    """The CPU block shapes side by side (best of `repeat`, interleaved): one generated x real metrics pass
    (as in --kernels) per (rows, columns) block shape, and one search of the real set among itself per tile
    side; what `knn.CPU_BLOCK_BYTES` and `CPU_BLOCK_COLS` were chosen from."""
    from dmd2report import knn as mod

    rng = np.random.default_rng(0)
    means = rng.normal(size=(1000, dim)).astype(np.float32) * 2
    scale = np.linspace(3, 0.3, dim).astype(np.float32)
    real = rng.normal(size=(n, dim)).astype(np.float32) * scale + means[rng.integers(0, 1000, n)]
    gen = rng.normal(size=(n, dim)).astype(np.float32) * scale * 1.1 + means[rng.integers(0, 1000, n)]
    r = mod.knn(real, None, 5, exclude_self=True, device="cpu")[0]
    radii, row_radius = np.stack([r[:, 2], r[:, 4]], axis=1), mod.knn(gen, None, 3, exclude_self=True, device="cpu")[0][:, 2]
    shapes = [(64, 32768), (256, 8192), (512, 4096), (1024, 4096), (1024, 2048), (2048, 2048)]
    sides = [1024, 2048, 3072, 4096]
    best = {("pass", s): float("inf") for s in shapes} | {("self", s): float("inf") for s in sides}
    block_shape, tile_side = mod._block_shape, mod._tile_side
    try:
        for _ in range(repeat):
            for rows, cols in shapes:
                mod._block_shape = lambda nq, nb, m, max_cols=None, rows=rows, cols=cols: (min(rows, nq), min(cols, nb))
                t, _ = timed(lambda: mod.radius_counts(gen, real, col_radii=radii, row_radius=row_radius, k=10,
                                                       k_base=16, device="cpu"))
                best[("pass", (rows, cols))] = min(best[("pass", (rows, cols))], t)
            mod._block_shape = block_shape
            for side in sides:
                mod._tile_side = lambda n_, m, side=side: min(side, n_)
                t, _ = timed(lambda: mod.knn(real, None, 14, exclude_self=True, device="cpu"))
                best[("self", side)] = min(best[("self", side)], t)
            mod._tile_side = tile_side
    finally:
        mod._block_shape, mod._tile_side = block_shape, tile_side
    print(f"CPU block shapes, {n:,} real and {n:,} generated x {dim} dims, {torch.get_num_threads()} torch threads, "
          f"best of {repeat}")
    for (what, shape), t in best.items():
        label = f"{shape[0]:,} x {shape[1]:,} blocks" if what == "pass" else f"tiles of {shape:,} a side"
        print(f"  {'generated x real pass' if what == 'pass' else 'real among itself':24s} {label:22s} {t:7.2f} s")


def profile_self_search(n: int, dim: int, device: str) -> None:
    """torch.profiler's table of this code's search of n points among themselves (k = 14) on `device`:
    where a search's time goes (matrix products, top-k, masks, the exact re-checks), by kernel."""
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(0)
    means = rng.normal(size=(1000, dim)).astype(np.float32) * 2
    real = rng.normal(size=(n, dim)).astype(np.float32) * np.linspace(3, 0.3, dim).astype(np.float32) \
        + means[rng.integers(0, 1000, n)]
    knn(real[:5000], None, 14, exclude_self=True, device=device)   # warm-up (context, kernels)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        knn(real, None, 14, exclude_self=True, device=device)
    print(f"{n:,} points among themselves, {dim} dims, k = 14, on {device}: {time.perf_counter() - t:.2f} s "
          f"under the profiler")
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="queries = base points")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--block-mib", type=int, default=256, help="max_block_bytes of the chunked search, MiB")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--kernels", metavar="REF", help="the measure stage's CPU searches against git commit REF")
    ap.add_argument("--kernels-n", type=int, default=50_000, help="real points of --kernels (generated: the same)")
    ap.add_argument("--kernels-dim", type=int, default=50, help="dimensions of --kernels (the reduced space)")
    ap.add_argument("--kernels-device", default="cpu", help="device of --kernels (cpu, cuda)")
    ap.add_argument("--shapes", action="store_true", help="the CPU block shapes side by side (--kernels-n, --kernels-dim)")
    ap.add_argument("--profile", action="store_true", help="with --kernels-device: profile this code's search of "
                    "--kernels-n points among themselves instead (torch.profiler, by kernel)")
    ap.add_argument("--trust", action="store_true", help="the trust-score searches instead (see above)")
    ap.add_argument("--trust-n", type=int, default=50_000, help="points of the --trust searches")
    ap.add_argument("--trust-baseline-n", type=int, default=50_000,
                    help="points of the old numpy search in --trust (timed at this size, scaled to --trust-n)")
    args = ap.parse_args()
    if args.shapes:
        block_shapes(args.kernels_n, args.kernels_dim)
        return
    if args.profile:
        profile_self_search(args.kernels_n, args.kernels_dim, args.kernels_device)
        return
    if args.kernels:
        kernels_side_by_side(args.kernels_n, args.kernels_n, args.kernels_dim, args.kernels, args.kernels_device)
        return
    if args.trust:
        trust_searches(args.trust_n, args.trust_baseline_n, args.k, args.block_mib * 2**20)
        return

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
