"""Measure benchmark (issue 20 item 3): `metrics.measure` of this checkout against the code of another
commit (default f2c731b, before the grouped and fused passes), side by side in one command.

    PYTHONPATH=. python benchmarks/measure.py --n-real 10000 --n-gen 10000 --n-variant 2000 --out /tmp/m.json

Synthetic reduced features as the measure stage sees them after `Embedding.reduce` (50-D, 1000 classes:
class means plus isotropic noise; generated sets of the four variants: class, blend (with classes),
uniform, zero (without)), two layers like `dmd2-imagenet64`'s two, the second the headline (per-point
arrays). Each code path runs in its own process (`python benchmarks/measure.py --child ...`), one after
the other, timed around the two `measure` calls (imports and data excluded, wall and CPU time) with the child's
peak RSS. The old path is the package of the given commit (`git archive`); both keep per-point arrays for the
headline layer only, as the stage asks, unless the old `measure` predates `arrays=` (it then keeps them for both
layers, as it always did). On a shared machine compare the ratios, the CPU time's above all (it moves least with
the other processes), not the seconds. The new result's scalars are checked equal to the old one's (metrics.json
rounding), so the ratio compares the same answer.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def data(n_real, n_gen, n_variant, classes=1000, dim=50, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)).astype(np.float32) * 2
    rc = np.arange(n_real) % classes
    layers = []
    for layer in range(2):
        x = means[rc] + rng.normal(size=(n_real, dim)).astype(np.float32)
        gc = rng.integers(0, classes, n_gen)
        gen = {"class": (means[gc] * 0.95 + rng.normal(size=(n_gen, dim)).astype(np.float32), gc)}
        for v in ("uniform", "zero", "blend"):
            c = rng.integers(0, classes, n_variant)
            gen[v] = ((means[c] * 0.7 + 1.2 * rng.normal(size=(n_variant, dim))).astype(np.float32),
                      c if v == "blend" else None)
        layers.append((x, gen))
    return rc, layers


def child(args) -> None:
    sys.path.insert(0, args.code)
    from dmd2report.metrics import _round, measure

    lean = "arrays" in inspect.signature(measure).parameters   # the code can skip a layer's per-point arrays

    rc, layers = data(args.n_real, args.n_gen, args.n_variant)
    t0, c0 = time.perf_counter(), time.process_time()
    out = []
    for i, (x, gen) in enumerate(layers):
        headline = i == len(layers) - 1
        kw = {"arrays": False} if lean and not headline else {}
        r = measure(x, rc, gen, feature_space=f"layer{i}", device="cpu", **kw)
        out.append(_round(r["variants"]))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    Path(args.result).write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20, "variants": out}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-real", type=int, default=10000)
    ap.add_argument("--n-gen", type=int, default=10000)
    ap.add_argument("--n-variant", type=int, default=2000)
    ap.add_argument("--old", default="f2c731b", help="commit of the old path ('' to skip it)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"new": str(REPO)}
        if args.old:
            old = Path(tmp) / "old"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.old, "dmd2report"], cwd=REPO, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            paths["old"] = str(old)
        for tag in ("old", "new"):
            if tag not in paths:
                continue
            res = Path(tmp) / f"{tag}.json"
            cmd = [sys.executable, __file__, "--child", "--code", paths[tag], "--result", str(res),
                   "--n-real", str(args.n_real), "--n-gen", str(args.n_gen), "--n-variant", str(args.n_variant)]
            env = os.environ | {"PYTHONPATH": paths[tag]}
            subprocess.run(cmd, check=True, env=env)
            rows[tag] = json.loads(res.read_text())
            print(f"{tag}: measure of 2 layers {rows[tag]['seconds']:.1f} s ({rows[tag]['cpu_seconds']:.1f} s of CPU), "
                  f"peak RSS {rows[tag]['peak_rss_gib']:.2f} GiB", flush=True)
    doc = {"n_real": args.n_real, "n_gen_class": args.n_gen, "n_variant": args.n_variant, "cpus": os.cpu_count(),
           "load_avg": os.getloadavg(), **{f"{t}_s": round(r["seconds"], 2) for t, r in rows.items()},
           **{f"{t}_cpu_s": round(r["cpu_seconds"], 2) for t, r in rows.items()},
           **{f"{t}_peak_rss_gib": round(r["peak_rss_gib"], 3) for t, r in rows.items()}}
    if "old" in rows:
        doc["ratio_old_over_new"] = round(rows["old"]["seconds"] / rows["new"]["seconds"], 2)
        doc["cpu_ratio_old_over_new"] = round(rows["old"]["cpu_seconds"] / rows["new"]["cpu_seconds"], 2)
        doc["same_metrics"] = rows["old"]["variants"] == rows["new"]["variants"]
        print(f"old / new: {doc['ratio_old_over_new']}x ({doc['cpu_ratio_old_over_new']}x of CPU time); "
              f"metrics equal: {doc['same_metrics']}")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
