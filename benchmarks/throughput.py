"""End-to-end extraction and generation throughput of the full DMD2 ImageNet-64 model on one GPU.

Run on a CUDA machine from the repository root:

    PYTHONPATH=. python benchmarks/throughput.py --out /tmp/bench [--quick]

Everything is measured end to end: data in (NPZ batches / noise), features and thumbnails
written to the store, with the same functions `dmd2report extract/generate/build` use. Side by
side in the same run:

- seed-style: what the seed tool did (float32, hooks copying both layers' full activations to
  the host, one `np.savez_compressed` per sample);
- float32 eager: this project's model in plain float32 eager mode, per-batch host copies,
  features written as float32 .npy per batch;
- optimised: the default CUDA path at scale (bf16 UNet, flash SDPA, the whole network compiled,
  one static batch, pinned non-blocking copies, on-device reduction, writer thread, early exit
  after `midblock` for extraction). Compilation happens once per run, before the timed part;
  its time is reported beside the rates.

Generation is measured as the issue states it (the layers captured in the generating pass,
`features.generated = "generation"`) for each conditioning mode, and once more with the default
`reencode` (a second, extraction pass over each generated image).

Random weights (speed does not depend on them), drawn so that no branch is zero. FLOPs per image
are counted by torch's FLOP counter on the real network (multiply-add = 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmd2report.config import Config  # noqa: E402
from dmd2report.layers import ActivationCapture  # noqa: E402
from dmd2report.models import build_preset  # noqa: E402
from dmd2report.sampling import condition_vectors, sample_noise  # noqa: E402

PEAK_BF16 = 790e12  # measured bf16 dense matmul rate on this card (device notes), FLOP/s
LAYERS = ["encoder_bottleneck", "midblock"]


def random_weights(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (zero-initialised branches too): timings on zeros can mislead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("weight"):  # group norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def flops_per_image(early_exit: bool, compiled_forms: bool = False, by_op: bool = False):
    """FLOPs per image of the upstream network (models.unet), or (compiled_forms) of the forms the
    compiled graphs run (models.compiled: the up blocks from low-resolution maps do less);
    by_op: {ATen operator: FLOPs per image} instead of the total."""
    counts = flop_counts(early_exit, compiled_forms)  # of two images: / 2 below
    if not by_op:
        return sum(counts["Global"].values()) / 2
    ops = {str(op): f / 2 for op, f in counts["Global"].items()}
    # Counted in float32, attention's qkv and projection are 1x1 convolutions; compiled in bf16 they
    # are matrix products over tokens (cuBLAS, models.compiled.attention), the same FLOPs. The
    # counter names modules only as the upstream forward calls them.
    upstream = flop_counts(early_exit, compiled_forms=False)
    ops["of which attention qkv + proj"] = sum(f for name, c in upstream.items()
                                               if name.endswith((".qkv", ".proj")) for f in c.values()) / 2
    return ops


def flop_counts(early_exit: bool, compiled_forms: bool) -> dict:
    """torch's FLOP counts of one forward over two images: {module name or "Global": {op: FLOPs}}."""
    from torch.utils.flop_counter import FlopCounterMode

    from dmd2report.models import compiled
    from dmd2report.models.unet import Conv2d

    # On the meta device: FLOPs are counted from shapes, nothing is computed.
    net = build_preset("dmd2-imagenet64", device="meta", use_fp16=False)
    for m in net.modules():  # as runtime.prepare finds DMD2's [1, 1] filter (meta buffers hold no values)
        if compiled_forms and isinstance(m, Conv2d) and m.resample_filter is not None:
            m.box_resample = True
    x = torch.randn(2, 3, 64, 64, device="meta")
    c = torch.zeros(2, 1000, device="meta")
    sigma = torch.full((2,), 80.0, device="meta")
    cap = ActivationCapture(net, LAYERS, early_exit=early_exit)  # the block names a stage captures
    stop_after = cap.last if early_exit else None
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        if compiled_forms:
            compiled.forward_capture(net, 80 * x, sigma, c, capture=cap.capture, stop_after=stop_after)
        else:
            net.forward_capture(80 * x, sigma, c, capture=cap.capture, stop_after=stop_after)
    return fc.get_flop_counts()


def write_npz(root: Path, n: int, per_file: int = 10000) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(range(0, n, per_file)):
        m = min(per_file, n - s)
        # Smooth random images (not noise, not zeros) so decoding/transfer see realistic bytes.
        base = rng.integers(0, 256, (m, 3, 8, 8), dtype=np.uint8)
        data = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3).reshape(m, -1)
        np.savez(root / f"train_data_batch_{i + 1}.npz", data=data, labels=rng.integers(1, 1001, m))


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def with_peak_memory(run, *args, **kwargs) -> dict:
    """run's row with the GPU memory it peaked at (allocated tensors), for the baselines."""
    torch.cuda.reset_peak_memory_stats()
    row = run(*args, **kwargs)
    return row | {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}


# ---------------------------------------------------------------------------------------------- baselines


@torch.no_grad()
def seed_style_generation(net, n: int, batch: int, out: Path) -> dict:
    """float32; hooks copy both layers' full activations to the host; one savez_compressed per sample."""
    out.mkdir(parents=True, exist_ok=True)
    dev = next(net.parameters()).device
    sync()
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        idx = range(s, min(s + batch, n))
        z = sample_noise(0, idx, (3, 64, 64)).to(dev)
        c = condition_vectors("class", 1000, classes=[i % 1000 for i in idx]).to(dev)
        cap = ActivationCapture(net, LAYERS)
        img = cap.run(80 * z, torch.full((len(idx),), 80.0, device=dev), c)
        acts = {k: v.cpu().numpy() for k, v in cap.activations.items()}
        img = img.cpu().numpy()
        for j, i in enumerate(idx):
            np.savez_compressed(out / f"{i:07d}.npz", image=img[j], **{k: a[j].reshape(-1) for k, a in acts.items()})
    sync()
    dt = time.perf_counter() - t0
    return {"img_s": n / dt, "bytes_per_sample": store_bytes(out) / n, "n": n}


@torch.no_grad()
def float32_eager(net, n: int, batch: int, out: Path, extract_npz: Path | None = None) -> dict:
    """Our model, float32 eager, hooks, mean-reduced features copied to the host per batch."""
    out.mkdir(parents=True, exist_ok=True)
    dev = next(net.parameters()).device
    files = sorted(extract_npz.glob("*.npz")) if extract_npz else []
    sync()
    t0 = time.perf_counter()
    done = 0
    data = None
    while done < n:
        if extract_npz:
            if data is None or len(data) == 0:
                data = np.load(files[(done // 10000) % len(files)])["data"]
            x = torch.from_numpy(data[:batch].reshape(-1, 3, 64, 64)).to(dev).float() / 127.5 - 1
            data = data[batch:]
            c = condition_vectors("class", 1000, classes=[0] * len(x)).to(dev)
        else:
            idx = range(done, min(done + batch, n))
            x = sample_noise(0, idx, (3, 64, 64)).to(dev)
            c = condition_vectors("class", 1000, classes=[i % 1000 for i in idx]).to(dev)
        cap = ActivationCapture(net, LAYERS, reduce="mean", early_exit=extract_npz is not None)
        img = cap.run(80 * x, torch.full((len(x),), 80.0, device=dev), c)
        np.save(out / f"{done:08d}.npy", np.concatenate([a.cpu().numpy() for a in cap.activations.values()], 1))
        if img is not None:
            np.save(out / f"{done:08d}.img.npy", ((img * 127.5 + 128).clamp(0, 255).byte()).cpu().numpy())
        done += len(x)
    sync()
    dt = time.perf_counter() - t0
    return {"img_s": done / dt, "bytes_per_sample": store_bytes(out) / done, "n": done}


# ---------------------------------------------------------------------------------------------- optimised


def bench_config(work: Path, npz: Path, n: int, batch: int) -> Config:
    c = Config()
    c.run.workdir, c.run.device = str(work), "cuda"
    c.model.preset = "dmd2-imagenet64"
    c.data.source, c.data.path, c.data.max_samples = "imagenet64-npz", str(npz), n
    c.features.batch_size = batch  # chunk_size: the default
    c.report.thumb_size = 32
    return c


def optimised_extract(net, cfg: Config) -> dict:
    from dmd2report.classes import ClassIndex
    from dmd2report.stages.extract import extract_real
    from dmd2report.workdir import WorkDir

    sync()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    path = extract_real(cfg, WorkDir(cfg.run.workdir), net, "bench", ClassIndex.imagenet(), overwrite=True,
                        progress=False)
    sync()
    dt = time.perf_counter() - t0
    n = cfg.data.max_samples
    return {"img_s": n / dt, "bytes_per_sample": store_bytes(path) / n, "n": n,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def optimised_generate(net, cfg: Config, variant: str, n: int) -> dict:
    from dmd2report.classes import ClassIndex
    from dmd2report.stages.generate import generate_set
    from dmd2report.workdir import WorkDir

    classes = np.arange(n) % 1000
    vectors = None
    if variant == "blend":
        rng = np.random.default_rng(0)
        vectors = np.zeros((n, 1000), np.float32)
        for j in range(5):
            vectors[np.arange(n), rng.integers(0, 1000, n)] += 0.2
    sync()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    path = generate_set(cfg, WorkDir(cfg.run.workdir), net, "bench", variant, classes, np.arange(n),
                        label_vectors=vectors, classes=ClassIndex.imagenet(), overwrite=True, progress=False)
    sync()
    dt = time.perf_counter() - t0
    return {"img_s": n / dt, "bytes_per_sample": store_bytes(path) / n, "n": n,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


@torch.no_grad()
def accuracy(net_fp32, net_fast, n: int = 64) -> dict:
    """Relative error of the optimised path's activations and images against float32."""
    dev = next(net_fast.parameters()).device
    z = sample_noise(123, range(n), (3, 64, 64)).to(dev)
    c = condition_vectors("class", 1000, classes=list(range(n))).to(dev)
    s = torch.full((n,), 80.0, device=dev)
    out = {}
    a = ActivationCapture(net_fp32, LAYERS)
    ref = a.run(80 * z, s, c)
    b = ActivationCapture(net_fast, LAYERS)
    got = b.run(80 * z, s, c)
    for k in LAYERS:
        out[f"rel_err_{k}"] = ((b.activations[k] - a.activations[k]).norm() / a.activations[k].norm()).item()
    out["rel_err_image"] = ((got - ref).norm() / ref.norm()).item()
    out["max_abs_err_image"] = (got - ref).abs().max().item()
    out["mean_abs_err_uint8"] = ((got - ref).abs() * 127.5).mean().item()
    return out


@torch.no_grad()
def model_batch(net, batch: int, early_exit: bool):
    """A model-only workload: (capture over both layers, its inputs 80 x, sigma, one-hot labels)."""
    dev = next(net.parameters()).device
    x = torch.randn(batch, 3, 64, 64, device=dev)
    c = condition_vectors("class", 1000, classes=[i % 1000 for i in range(batch)]).to(dev)
    s = torch.full((batch,), 80.0, device=dev)
    return ActivationCapture(net, LAYERS, reduce="mean", early_exit=early_exit), (80 * x, s, c)


def rate(net, batch: int, early_exit: bool, iters: int = 8) -> tuple[float, float]:
    """(img/s, seconds of the first call: compilation where there is one)."""
    cap, (x, s, c) = model_batch(net, batch, early_exit)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cap.run(x, s, c)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    cap.run(x, s, c)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        cap.run(x, s, c)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return batch / float(np.median(times)), first


def gpu_busy(stage) -> dict:
    """How much of an end-to-end stage's wall time the GPU spends running kernels and copies (the union
    of their intervals, from CUPTI), and its longest idle gaps: what the pipeline around the network costs."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        stage()
        sync()
        wall = time.perf_counter() - t0
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, gaps, end = 0.0, [], None
    for a, b in spans:
        if end is None or a > end:
            if end is not None:
                gaps.append(a - end)
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    gaps.sort(reverse=True)
    span = (spans[-1][1] - spans[0][0]) / 1e6 if spans else 0.0
    return {"wall_s": wall, "gpu_busy_s": busy / 1e6, "busy_fraction": busy / 1e6 / wall,
            # before the stage's first GPU work and after its last (set-up, the first chunk's input,
            # draining the writer, the manifest): a fixed cost per stage, not per image
            "idle_outside_gpu_span_s": wall - span,
            "longest_gaps_ms": [g / 1e3 for g in gaps[:5]], "gaps_over_1ms": sum(g > 1e3 for g in gaps),
            "idle_in_gaps_over_1ms_s": sum(g for g in gaps if g > 1e3) / 1e6}


_START = time.perf_counter()


def log(*args, **kw):
    """A progress line stamped with the run's elapsed time: a run cut by the device's time limit
    still shows where its time went."""
    print(f"[{time.perf_counter() - _START:4.0f} s]", *args, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench")))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--gen-samples", type=int, default=50_000,
                    help="samples per generation run (default: the 50k of an FID evaluation, the smallest real run)")
    ap.add_argument("--batch", type=int, default=0, help="0: the automatic batch (features.batch_size = 0)")
    ap.add_argument("--cudagraphs", action="store_true",
                    help="compile with CUDA graphs (torch.compile mode reduce-overhead) instead of the default")
    ap.add_argument("--busy", action="store_true",
                    help="also profile one extraction and one generation stage end to end: the GPU's busy fraction and idle gaps")
    ap.add_argument("--ablate-cudagraphs", action="store_true",
                    help="also time extraction (no subsets) and class generation end to end with the other CUDA-graph setting")
    ap.add_argument("--baselines-only", action="store_true",
                    help="only the seed-style and float32 eager rows (a short call)")
    ap.add_argument("--flops", action="store_true",
                    help="only print the FLOPs per image, upstream and as compiled (no GPU needed)")
    args = ap.parse_args()
    if args.flops:
        for early in (False, True):
            print(f"{'to midblock' if early else 'full network'}: {flops_per_image(early) / 1e9:.1f} GFLOP upstream, "
                  f"{flops_per_image(early, compiled_forms=True) / 1e9:.1f} GFLOP as compiled")
        ops = flops_per_image(False, compiled_forms=True, by_op=True)
        print("full network as compiled, by operator:", ", ".join(f"{k} {v / 1e9:.1f}" for k, v in ops.items()))
        return
    from dmd2report.runtime import auto_batch_size, compile_forward, prepare

    assert torch.cuda.is_available(), "run on a CUDA machine"
    dev = torch.device("cuda")
    args.batch = args.batch or auto_batch_size(dev)
    work = Path(tempfile.mkdtemp(prefix="dmd2bench-"))
    n_seed, n_fp32 = (64, 512) if args.quick else (256, 2048)
    n_gen, n_ext = (2048, 8192) if args.quick else (args.gen_samples, 61440)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch}
    net_cpu = random_weights(build_preset("dmd2-imagenet64")).eval()
    results["gflop_full"] = flops_per_image(early_exit=False) / 1e9
    results["gflop_extract"] = flops_per_image(early_exit=True) / 1e9
    log(f"GFLOP/image: full {results['gflop_full']:.1f}, to midblock {results['gflop_extract']:.1f}", flush=True)
    write_npz(work / "npz", n_ext)
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        (args.out / "throughput.json").write_text(json.dumps(results | {"rows": rows}, indent=1))

    fp32 = build_preset("dmd2-imagenet64", use_fp16=False)
    fp32.load_state_dict(net_cpu.state_dict())
    fp32 = fp32.eval().requires_grad_(False).to(dev)
    # Baselines run with PyTorch's default float32 settings (cuDNN convolutions may use TF32),
    # as upstream code would; the accuracy reference below is strict float32.
    rows = {}
    rows["seed-style gen"] = with_peak_memory(seed_style_generation, fp32, n_seed, 64, work / "seed")
    log("seed-style", rows["seed-style gen"], flush=True)
    rows["fp32 eager gen"] = with_peak_memory(float32_eager, fp32, n_fp32, 256, work / "fp32g")
    rows["fp32 eager extract"] = with_peak_memory(float32_eager, fp32, n_fp32 * 2, 256, work / "fp32e",
                                                  extract_npz=work / "npz")
    log("fp32", rows["fp32 eager gen"], rows["fp32 eager extract"], flush=True)
    save()
    if args.baselines_only:
        shutil.rmtree(work, ignore_errors=True)
        return

    fast = build_preset("dmd2-imagenet64")
    fast.load_state_dict(net_cpu.state_dict())
    fast = prepare(fast, dev, "auto", compile="off" if args.cudagraphs else "on", batch_hint=args.batch)
    if args.cudagraphs:
        compile_forward(fast, args.batch, mode="reduce-overhead")
    results["cudagraphs"] = args.cudagraphs
    # Compile every graph the timed runs use before timing (once per run; reported).
    t0 = time.perf_counter()
    optimised_extract(fast, bench_config(work / "warm", work / "npz", 2 * args.batch, args.batch))
    warm = bench_config(work / "warm", work / "npz", 2 * args.batch, args.batch)
    for generated in ("generation", "reencode"):
        warm.features.generated = generated
        optimised_generate(fast, warm, "class", args.batch)
    results["compile_s"] = time.perf_counter() - t0
    results["graphs"] = len(fast.forward_capture.graphs)
    log(f"compiled {results['graphs']} graphs in {results['compile_s']:.0f} s", flush=True)

    # Model only (no data, no store), for the ablation table: the compiled graphs and the same network eager.
    eager = build_preset("dmd2-imagenet64")
    eager.load_state_dict(net_cpu.state_dict())
    eager = prepare(eager, dev, "auto", compile="off")
    model_only = {}
    for what in ("extract", "generate"):
        model_only[f"{what}: bf16 eager"] = rate(eager, args.batch, what == "extract")[0]
        model_only[f"{what}: bf16 compiled"] = rate(fast, args.batch, what == "extract")[0]
    del eager
    results["model_only_img_s"] = model_only
    log("model only", {k: round(v) for k, v in model_only.items()}, flush=True)

    allow = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # strict float32 reference
    results.update(accuracy(fp32, fast))
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow
    log("accuracy", {k: v for k, v in results.items() if "err" in k}, flush=True)
    del fp32
    torch.cuda.empty_cache()

    cfg = bench_config(work / "run", work / "npz", n_ext, args.batch)
    rows["optimised extract"] = optimised_extract(fast, cfg)
    log("extract", rows["optimised extract"], flush=True)
    # The same without the per-class subsets (full midblock activations, reconstructions): what they cost.
    lean = bench_config(work / "lean", work / "npz", n_ext, args.batch)
    lean.features.full_per_class, lean.features.recon_per_class = 0, 0
    rows["optimised extract, no subsets"] = optimised_extract(fast, lean)
    log("extract, no subsets", rows["optimised extract, no subsets"], flush=True)
    save()
    cfg.features.generated = "generation"
    for variant in ("class", "uniform", "zero", "blend"):
        rows[f"optimised gen {variant}"] = optimised_generate(fast, cfg, variant, n_gen)
        log(variant, rows[f"optimised gen {variant}"], flush=True)
        save()
    cfg.features.generated = "reencode"
    rows["optimised gen class, reencode"] = optimised_generate(fast, cfg, "class", n_gen)
    log("class, reencode", rows["optimised gen class, reencode"], flush=True)
    if args.busy:  # where the end-to-end rate loses against the model-only one
        busy_ext = bench_config(work / "busy", work / "npz", 4 * 4096, args.batch)
        busy_ext.features.full_per_class, busy_ext.features.recon_per_class = 0, 0
        results["busy_extract"] = gpu_busy(lambda: optimised_extract(fast, busy_ext))
        busy_gen = bench_config(work / "busy", work / "npz", 4 * 4096, args.batch)
        busy_gen.features.generated = "generation"
        results["busy_generate"] = gpu_busy(lambda: optimised_generate(fast, busy_gen, "class", 4 * 4096))
        log("busy", {k: results[k] for k in ("busy_extract", "busy_generate")}, flush=True)
        save()
    if args.ablate_cudagraphs:  # the same network with the other CUDA-graph setting, end to end
        alt = build_preset("dmd2-imagenet64")
        alt.load_state_dict(net_cpu.state_dict())
        alt = prepare(alt, dev, "auto", compile="on" if args.cudagraphs else "off", batch_hint=args.batch)
        if not args.cudagraphs:
            compile_forward(alt, args.batch, mode="reduce-overhead")
        tag = "without" if args.cudagraphs else "with"
        optimised_extract(alt, bench_config(work / "warm2", work / "npz", 2 * args.batch, args.batch))
        warm = bench_config(work / "warm2", work / "npz", 2 * args.batch, args.batch)
        warm.features.generated = "generation"
        optimised_generate(alt, warm, "class", args.batch)
        lean = bench_config(work / "lean2", work / "npz", n_ext, args.batch)
        lean.features.full_per_class, lean.features.recon_per_class = 0, 0
        rows[f"optimised extract, no subsets, {tag} CUDA graphs"] = optimised_extract(alt, lean)
        gen = bench_config(work / "run2", work / "npz", n_ext, args.batch)
        gen.features.generated = "generation"
        rows[f"optimised gen class, {tag} CUDA graphs"] = optimised_generate(alt, gen, "class", n_gen)
        log(tag, "CUDA graphs", {k: round(v["img_s"]) for k, v in rows.items() if "CUDA graphs" in k}, flush=True)

    seed = rows["seed-style gen"]["img_s"]
    for name, r in rows.items():
        gflop = results["gflop_extract"] if "extract" in name else results["gflop_full"]
        if "reencode" in name:
            gflop = results["gflop_full"] + results["gflop_extract"]
        r["tflop_s"] = r["img_s"] * gflop / 1e3
        r["fraction_of_peak"] = r["img_s"] * gflop * 1e9 / PEAK_BF16
        r["vs_seed"] = None if "extract" in name else r["img_s"] / seed  # the seed-style baseline generates
        base = rows["fp32 eager extract" if "extract" in name else "fp32 eager gen"]["img_s"]
        r["vs_fp32"] = r["img_s"] / base
    save()
    print(f"\n{'run':<30}{'img/s':>9}{'TFLOP/s':>9}{'of peak':>9}{'KB/sample':>11}{'x seed':>8}{'x fp32':>8}{'peak GiB':>9}")
    for name, r in rows.items():
        vs_seed = "-" if r["vs_seed"] is None else f"{r['vs_seed']:.1f}"
        print(f"{name:<30}{r['img_s']:>9.0f}{r['tflop_s']:>9.1f}{r['fraction_of_peak']:>9.1%}"
              f"{r['bytes_per_sample'] / 1e3:>11.1f}{vs_seed:>8}{r['vs_fp32']:>8.2f}{r.get('peak_gib', float('nan')):>9.1f}")
    print({k: v for k, v in results.items() if k != "rows"})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
