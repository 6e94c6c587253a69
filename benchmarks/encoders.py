"""Throughput of the standard feature spaces' encoders on one GPU, each against a baseline in the same process.

Run on a CUDA machine from the repository root (the reference implementations installed: `pip install -e
'.[reference]'`):

    PYTHONPATH=. python benchmarks/encoders.py --extra-compile-modes max-autotune-no-cudagraphs \
        --out benchmarks/results/encoders-h100.json

About 6 minutes on an H100 (the float32 ViT-L/14 runs at about 270 img/s; torch.compile of the bfloat16 encoder
takes half a minute, under max-autotune two and a half); each encoder's figures are printed and written as soon as
they are measured.

- Inception (FID, pytorch-fid's protocol): dmd2report's encoder as the extract and generate stages call it (uint8
  batches already on the GPU, `features.batch_size` images a call) against pytorch-fid's own feature loop
  (`fid_score.get_activations`: PNG files through its DataLoader, batches of 50) on the same 64x64 images, and
  against pytorch-fid's model alone on the same GPU tensors in its batches of 50. Both in float32; with PyTorch's
  default, cuDNN convolutions may use TF32 (stated in the result), and once more with TF32 off.
- DINOv2 ViT-L/14 (FD_DINOv2, EDM2's protocol): float32 and bfloat16, and the FD between the two precisions'
  features of two image sets beside the FD of the sets themselves (the drift bfloat16 adds to FD_DINOv2).

Random weights (speed does not depend on them; the real files cannot be had offline), random images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` wall times of fn() (seconds), the GPU synchronised."""
    best = math.inf
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def random_inception_file(path: Path, seed: int = 0) -> dict:
    """pytorch-fid's FID Inception with random weights, saved in the layout of pt_inception-2015-12-05-6726825d.pth."""
    import torchvision

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=True)
    torch.manual_seed(seed)
    sd = net.state_dict()
    torch.save(sd, path)
    return sd


def random_dinov2_file(path: Path, kind: str = "dinov2-vitl14", seed: int = 0) -> None:
    """A DINOv2 backbone with random weights (small, so activations stay in range), in the official file's layout."""
    from dmd2report.encoders.dinov2 import build_dinov2

    torch.manual_seed(seed)
    net = build_dinov2(kind, device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.02 if p.ndim > 1 else 1 + 0.02 * torch.randn_like(p))
    torch.save(net.state_dict(), path)


def in_batches(encoder, images: torch.Tensor, batch: int) -> None:
    for b in range(0, len(images), batch):
        encoder(images[b:b + batch])


def bench_inception(n: int, batch: int, work: Path) -> dict:
    from PIL import Image
    from pytorch_fid import fid_score, inception as pf

    from dmd2report.encoders.inception import load_inception

    sd = random_inception_file(work / "inception.pth")
    pf.load_state_dict_from_url = lambda *a, **k: sd   # pytorch-fid's constructor downloads the real weights
    theirs = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).cuda().eval()
    ours = load_inception("inception", work / "inception.pth", device="cuda")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    files = []
    for i, im in enumerate(images):
        files.append(work / f"{i:06d}.png")
        Image.fromarray(im).save(files[-1])
    gpu = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().cuda()
    out = {"n": n, "batch": batch, "tf32_default": torch.backends.cudnn.allow_tf32}
    with torch.no_grad():
        in_batches(ours, gpu[:batch], batch)   # warm-up: cuDNN's algorithms
        out["ours_img_s"] = n / timed(lambda: in_batches(ours, gpu, batch))
        t = timed(lambda: fid_score.get_activations(files, theirs, batch_size=50, device="cuda", num_workers=8), 1)
        out["pytorch_fid_loop_img_s"] = n / t
        floats = gpu.float() / 255
        out["pytorch_fid_model_img_s"] = n / timed(lambda: [theirs(floats[b:b + 50]) for b in range(0, n, 50)])
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        out["ours_strict_fp32_img_s"] = n / timed(lambda: in_batches(ours, gpu, batch))
        torch.backends.cudnn.allow_tf32 = True
    out["ratio_to_loop"] = out["ours_img_s"] / out["pytorch_fid_loop_img_s"]
    out["ratio_to_model"] = out["ours_img_s"] / out["pytorch_fid_model_img_s"]
    return out


def bench_dinov2(n: int, batch: int, work: Path, compile_bf16: bool = True) -> dict:
    from dmd2report.encoders.dinov2 import load_dinov2
    from dmd2report.metric_defs import frechet_from_stats, mean_and_cov

    random_dinov2_file(work / "dinov2_vitl14.pth")
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)).cuda()
    b = torch.from_numpy(np.clip(rng.normal(128, 40, (n, 3, 64, 64)), 0, 255).astype(np.uint8)).cuda()
    out = {"n": n, "batch": batch}
    feats = {}
    # bfloat16 first (the rate the issue asks for), float32 after it: at about a tenth of the rate, its timing is
    # one pass (the first pass of each is a warm-up).
    for name, dtype, repeat in (("bfloat16", torch.bfloat16, 3), ("float32", torch.float32, 1)):
        enc = load_dinov2("dinov2-vitl14", work / "dinov2_vitl14.pth", device="cuda", dtype=dtype)
        with torch.no_grad():
            in_batches(enc, a[:batch], batch)
            out[f"{name}_img_s"] = n / timed(lambda e=enc: in_batches(e, a, batch), repeat)
            feats[name] = [torch.cat([enc(x[i:i + batch])[0] for i in range(0, n, batch)]).cpu().numpy()
                           for x in (a, b)]
            if compile_bf16 and name == "bfloat16":
                # The same encoder under torch.compile (Inductor fuses the layer norms, GELU and layer scales into
                # the matrix products' neighbours): what a stage would get with model.compile on.
                t0 = time.perf_counter()
                fast = torch.compile(enc)
                in_batches(fast, a[:batch], batch)
                out[f"{name}_compile_s"] = time.perf_counter() - t0
                out[f"{name}_compiled_img_s"] = n / timed(lambda f=fast: in_batches(f, a, batch))
                compiled = torch.cat([fast(a[i:i + batch])[0] for i in range(0, n, batch)]).cpu().numpy()
                out[f"{name}_compiled_max_relative_error"] = float(
                    np.abs(compiled - feats[name][0]).max() / np.abs(feats[name][0]).max())
                del fast
        print(json.dumps({name: {k: v for k, v in out.items() if k.startswith(name)}}), flush=True)
        del enc
        torch.cuda.empty_cache()
    fd = {name: frechet_from_stats(*mean_and_cov(feats[name][0]), *mean_and_cov(feats[name][1])) for name in ("float32", "bfloat16")}
    out["fd_float32"], out["fd_bfloat16"] = fd["float32"], fd["bfloat16"]
    out["fd_drift_relative"] = abs(fd["bfloat16"] - fd["float32"]) / fd["float32"]
    out["feature_max_relative_error"] = float(np.abs(feats["bfloat16"][0] - feats["float32"][0]).max()
                                              / np.abs(feats["float32"][0]).max())
    return out


def bench_dinov2_compiled(n: int, batch: int, work: Path, mode: str) -> dict:
    """DINOv2 ViT-L/14 in bfloat16 under torch.compile(mode=mode), on the images and file of bench_dinov2."""
    from dmd2report.encoders.dinov2 import load_dinov2

    a = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)).cuda()
    enc = load_dinov2("dinov2-vitl14", work / "dinov2_vitl14.pth", device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        t0 = time.perf_counter()
        fast = torch.compile(enc, mode=mode)
        in_batches(fast, a[:batch], batch)
        out = {"compile_s": time.perf_counter() - t0, "img_s": n / timed(lambda: in_batches(fast, a, batch))}
    print(json.dumps({mode: out}), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192, help="images per Inception measurement")
    p.add_argument("--dinov2-n", type=int, default=4096, help="images per DINOv2 measurement (two sets for the FD)")
    p.add_argument("--batch", type=int, default=1024, help="images per encoder call (features.batch_size)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of DINOv2 in bfloat16")
    p.add_argument("--extra-compile-modes", type=lambda s: [m for m in s.split(",") if m], default=[],
                   help="torch.compile modes to time DINOv2 bfloat16 under after the rest (comma-separated, e.g. "
                        "max-autotune-no-cudagraphs: Triton matrix-product kernels tuned per shape)")
    p.add_argument("--out", type=Path, help="write the results as JSON here (after each encoder)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def save():
        text = json.dumps(result, indent=2)
        print(text, flush=True)
        if args.out:
            args.out.write_text(text + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        result["inception"] = bench_inception(args.n, args.batch, Path(tmp))
        save()
        result["dinov2_vitl14"] = bench_dinov2(args.dinov2_n, min(args.batch, 512), Path(tmp), not args.no_compile)
        save()
        for mode in args.extra_compile_modes:
            result["dinov2_vitl14"][f"bfloat16_compiled_{mode}"] = bench_dinov2_compiled(
                args.dinov2_n, min(args.batch, 512), Path(tmp), mode)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
