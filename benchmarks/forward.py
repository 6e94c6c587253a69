"""Model-only forward rates of the full DMD2 ImageNet-64 network, eager and compiled.

    PYTHONPATH=. python benchmarks/forward.py --out $OUT [--batch 512] [--only compiled] [--cudagraphs]

Rows, side by side in one run, for generation (full network, `encoder_bottleneck` and `midblock`
captured) and extraction (stopping after `midblock`): float32 eager (TF32 convolutions, PyTorch's
default), bfloat16 eager with flash SDPA, and the whole network compiled (`model.compile`, the path
`extract`/`generate` take at scale), with its compile time; with --cudagraphs also the compiled network with CUDA graphs
(torch.compile mode `reduce-overhead`, not used by the stages). Timed with CUDA events, median of
repeated batches after warm-up; img/s, TFLOP/s, fraction of the 790 TFLOP/s bf16 peak. Random
weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PEAK_BF16, flops_per_image, random_weights, rate

from dmd2report.models import build_preset
from dmd2report.runtime import compile_forward, prepare


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench")))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--only", default="", help="run only the rows whose name contains this")
    ap.add_argument("--cudagraphs", action="store_true", help="add the compiled network with CUDA graphs first")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "run on a CUDA machine"
    dev = torch.device("cuda")
    gflop = {"generate": flops_per_image(False) / 1e9, "extract": flops_per_image(True) / 1e9}
    base = random_weights(build_preset("dmd2-imagenet64")).eval()

    def copy(use_fp16: bool, compile: str = "off", mode: str | None = None):
        net = build_preset("dmd2-imagenet64", use_fp16=use_fp16)
        net.load_state_dict(base.state_dict())
        net = prepare(net, dev, "auto", compile=compile, batch_hint=args.batch)
        if mode:
            compile_forward(net, args.batch, mode=mode)
        return net

    rows = {}

    def record(name, what, img_s, first):
        rows[f"{what}: {name}"] = {"img_s": img_s, "tflop_s": img_s * gflop[what] / 1e3,
                                   "fraction_of_peak": img_s * gflop[what] * 1e9 / PEAK_BF16, "first_call_s": first}
        print(f"{what + ': ' + name:<44}{img_s:>8.0f} img/s {img_s * gflop[what] / 1e3:>7.1f} TFLOP/s"
              f" {img_s * gflop[what] * 1e9 / PEAK_BF16:>6.1%}  first call {first:6.1f} s", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "forward.json").write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                                            "torch": torch.__version__, "batch": args.batch,
                                                            "gflop": gflop, "rows": rows}, indent=1))

    variants = [("float32 eager (TF32)", {"use_fp16": False}),
                ("bf16 eager, flash SDPA", {"use_fp16": True})]
    if not args.skip_compile:
        variants.append(("bf16 compiled (model.compile)", {"use_fp16": True, "compile": "on"}))
    if args.cudagraphs:
        variants.insert(0, ("bf16 compiled + CUDA graphs", {"use_fp16": True, "mode": "reduce-overhead"}))
    variants = [v for v in variants if args.only in v[0]]
    for name, kw in variants:
        net = copy(**kw)
        for what in ("generate", "extract"):
            img_s, first = rate(net, args.batch, what == "extract")
            record(f"{name}, batch {args.batch}", what, img_s, first)
        del net
        torch.cuda.empty_cache()
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
