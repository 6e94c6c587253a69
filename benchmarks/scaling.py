"""Scaling of extraction and generation over the GPUs of one host, through torchrun.

    PYTHONPATH=. python benchmarks/scaling.py --gpus 1,2,4 --out $OUT
    PYTHONPATH=. python benchmarks/scaling.py --gpus 1,2,4,8 --encoders inception,dinov2-vitl14 --out $OUT
    PYTHONPATH=. python benchmarks/scaling.py --gpus 1,2 --device cpu --preset demo --n-extract 256 --n-generate 128 --batch 32 --chunk 64

For each GPU count N it launches `torchrun --nproc_per_node=N` on this same file (`--worker`), which runs
the stage functions `dmd2report extract` and `generate` use (each rank takes every N-th chunk and writes
its own chunk files; rank 0 writes the manifest), timed end to end between barriers, data in and store
written; with `--encoders`, the standard encoders (random weights, the layout of their official files) encode the
same images inside the same chunks, as `[[encoders]]` makes the stages do. The parent then reports img/s and scaling efficiency (rate_N / (N * rate_1)) and checks that
each N-process store equals the 1-process store: identical metadata and thumbnails, features equal within
the bf16 tolerance. NCCL settings come from the environment (keep NVLink multicast off where it is set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from dmd2report.classes import ClassIndex
    from dmd2report.config import Config
    from dmd2report.device import resolve_device
    from dmd2report.stages.extract import extract_real
    from dmd2report.stages.generate import generate_set
    from dmd2report.models import build_preset
    from dmd2report.runtime import auto_batch_size, prepare
    from dmd2report.workdir import WorkDir

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import random_weights

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = resolve_device(args.device)
    args.batch = args.batch or auto_batch_size(device)
    net = prepare(random_weights(build_preset(args.preset)), device, "auto", compile=args.compile,
                  batch_hint=args.batch)

    def config(workdir, n_extract):
        c = Config()
        c.run.workdir, c.run.device, c.model.preset = str(workdir), args.device, args.preset
        c.features.batch_size, c.features.chunk_size = args.batch, args.chunk
        if args.preset == "demo":
            c.data.source, c.data.max_samples = "demo", n_extract
        else:
            c.data.source, c.data.path, c.data.max_samples = "imagenet64-npz", str(args.npz), n_extract
        return c

    c = config(args.workdir, args.n_extract)
    n, K = args.n_generate, net.label_dim
    classes = ClassIndex.demo() if args.preset == "demo" else ClassIndex.imagenet()
    encoders = {}
    for kind in filter(None, args.encoders.split(",")):
        from encoders import random_dinov2_file, random_inception_file
        from dmd2report.config import EncoderConfig
        from dmd2report.encoders.registry import load_encoder

        path = Path(args.workdir).parent / f"{kind}.pth"     # one file for every process count
        if rank == 0 and not path.exists():
            random_inception_file(path) if kind.startswith("inception") else random_dinov2_file(path, kind)
        dist.barrier()
        encoders[kind] = load_encoder(EncoderConfig(name=kind, kind=kind, weights=str(path)), device,
                                      WorkDir(args.workdir), write_cache=rank == 0)

    def extract(cfg):
        extract_real(cfg, WorkDir(cfg.run.workdir), net, "scaling", classes, encoders=encoders, overwrite=True,
                     progress=False)

    def generate(cfg, count):
        generate_set(cfg, WorkDir(cfg.run.workdir), net, "scaling", "class", np.arange(count) % K, np.arange(count),
                     classes=classes, overwrite=True, progress=False, encoders=encoders)

    # Untimed warm-up, the same collective stages on a small set with one batch per chunk, so that
    # every rank compiles its graphs (when compiled) and autotunes cuDNN before the timed part.
    warm = config(Path(args.workdir) / "warm", 2 * args.batch * world)
    warm.features.chunk_size = args.batch
    extract(warm)
    generate(warm, args.batch * world)
    timings = {}

    def timed(name, fn):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        timings[name] = time.perf_counter() - t0

    timed("extract", lambda: extract(c))
    timed("generate", lambda: generate(c, n))
    if rank == 0:
        (Path(args.workdir) / "timings.json").write_text(json.dumps({"world": world, **timings}))
    dist.destroy_process_group()


def compare_stores(a: Path, b: Path, atol: float) -> dict:
    from dmd2report.store import Store

    sa, sb = Store(a), Store(b)
    out = {"metadata_equal": sa.metadata().equals(sb.metadata()),
           "thumbnails_equal": bool(np.array_equal(sa.thumbnails(), sb.thumbnails()))}
    for layer in sa.layers:
        fa, fb = sa.features(layer).astype(np.float32), sb.features(layer).astype(np.float32)
        out[f"max_abs_diff_{layer}"] = float(np.abs(fa - fb).max())
        out[f"features_close_{layer}"] = bool(np.allclose(fa, fb, atol=atol, rtol=atol))
    for name in sa.encoders:   # a standard encoder's features, the same images in another split
        fa, fb = sa.features(name), sb.features(name)
        out[f"max_abs_diff_{name}"] = float(np.abs(fa - fb).max())
        out[f"features_close_{name}"] = bool(np.allclose(fa, fb, atol=atol, rtol=atol))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="1,2", help="process counts to compare, comma-separated; the first is the reference")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="dmd2-imagenet64")
    ap.add_argument("--n-extract", type=int, default=65536)
    ap.add_argument("--n-generate", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=0, help="0: the automatic batch (features.batch_size = 0)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--compile", default="on", choices=["auto", "on", "off"], help="model.compile of every rank")
    ap.add_argument("--encoders", default="", help="standard encoders' kinds run in the same chunks, comma-separated "
                                                   "(inception, inception-tf1, dinov2-vit{s,b,l,g}14), random weights")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/scaling")))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--npz", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    counts = [int(g) for g in args.gpus.split(",")]
    for stage, total in (("extract", args.n_extract), ("generate", args.n_generate)):
        chunks = -(-total // args.chunk)
        uneven = [n for n in counts if chunks % n]
        if total % args.chunk or uneven:
            # Ranks take whole chunks (r, r + N, ...): with fewer chunks than ranks, or a remainder,
            # some GPUs idle and the "efficiency" measures the split, not the scaling.
            n = uneven[0] if uneven else max(counts)
            sys.exit(f"--n-{stage} {total} in chunks of {args.chunk} makes {chunks} chunk(s)"
                     f"{', the last one partial' if total % args.chunk else ''}, which {n} processes cannot share "
                     f"evenly; use a multiple of {args.chunk} x {n}")
    root = Path(tempfile.mkdtemp(prefix="dmd2scale-"))
    npz = root / "npz"
    if args.preset != "demo":
        from throughput import write_npz

        write_npz(npz, args.n_extract)
    results = {}
    for n in counts:
        work = root / f"w{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port=29577",
               __file__, "--worker", "--workdir", str(work), "--npz", str(npz), "--device", args.device,
               "--preset", args.preset, "--n-extract", str(args.n_extract), "--n-generate", str(args.n_generate),
               "--batch", str(args.batch), "--chunk", str(args.chunk), "--compile", args.compile,
               "--encoders", args.encoders]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{n} process(es) failed:\n{p.stderr[-4000:]}")
        t = json.loads((work / "timings.json").read_text())
        results[n] = {"extract_img_s": args.n_extract / t["extract"], "generate_img_s": args.n_generate / t["generate"]}
        print(n, results[n], flush=True)
    ref = counts[0]
    atol = 2e-2 if args.device == "cuda" else 1e-3
    print(f"\n{'procs':>5}{'extract img/s':>15}{'eff.':>8}{'generate img/s':>16}{'eff.':>8}  store equal to {ref}-process run")
    for n in counts:
        r = results[n]
        for stage in ("extract", "generate"):
            r[f"{stage}_efficiency"] = r[f"{stage}_img_s"] / (n / ref * results[ref][f"{stage}_img_s"])
        same = {s: compare_stores(root / f"w{ref}" / "stores" / s, root / f"w{n}" / "stores" / s, atol)
                for s in ("real", "gen-class")}
        r["stores"] = same
        ok = all(v for d in same.values() for k, v in d.items() if not k.startswith("max_abs"))
        print(f"{n:>5}{r['extract_img_s']:>15.0f}{r['extract_efficiency']:>8.1%}{r['generate_img_s']:>16.0f}"
              f"{r['generate_efficiency']:>8.1%}  {'yes' if ok else 'NO'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
