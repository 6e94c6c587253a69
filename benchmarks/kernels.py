"""Where a compiled batch spends its GPU time: the slowest kernels of the compiled network, full names.

    PYTHONPATH=. python benchmarks/kernels.py --out $OUT [--batch 1024] [--what generate,extract] [--variants default,...]

For each variant of the compiled network, side by side in one run: model-only img/s of generation
(full network) and extraction (stopping after `midblock`), and the kernels that take the most GPU
time in one batch, with Inductor's full kernel names (which name the fused operations) so that they
can be found in its generated code (run with TORCH_COMPILE_DEBUG=1 to keep that code;
`device_suite.sh kernels` does). Variants: `default` (what the stages run: `models.compiled`) and
compiler settings tried on it: `conv1x1-mm` (Inductor running the 1x1 convolutions, the decoder
blocks' skip projections among them, as matrix products with fused epilogues instead of cuDNN
calls), `coordinate-descent` and `autotune-pointwise` (Inductor tuning its own kernels' launch
parameters, by coordinate descent or over its list of configurations: candidates for the
memory-bound group-norm kernels between the convolutions; both compile for longer), and
`cudnn-all-algos` (cuDNN's autotuner trying every convolution algorithm,
`torch.backends.cudnn.benchmark_limit = 0`, instead of its heuristics' first 10).

Each variant runs in a process of its own, one after the other, so that nothing one variant chose
(cuDNN's per-shape algorithm cache, Dynamo's compiled code) carries over into the next; Inductor's
on-disk cache is shared, so a variant with the default's graphs reuses its compiled kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import flops_per_image, model_batch, random_weights, rate

from dmd2report.models import build_preset
from dmd2report.runtime import prepare

# Settings made in a variant's process before its graphs compile: "inductor.<name>" of
# torch._inductor.config or "cudnn.<name>" of torch.backends.cudnn.
VARIANTS = {"default": {},
            "conv1x1-mm": {"inductor.conv_1x1_as_mm": True},
            "coordinate-descent": {"inductor.coordinate_descent_tuning": True},
            "autotune-pointwise": {"inductor.max_autotune_pointwise": True},
            "cudnn-all-algos": {"cudnn.benchmark_limit": 0}}
OWNERS = {"inductor": torch._inductor.config, "cudnn": torch.backends.cudnn}


def top_kernels(net, batch: int, early_exit: bool, rows: int = 25) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    cap, inputs = model_batch(net, batch, early_exit)
    cap.run(*inputs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        cap.run(*inputs)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [{"kernel": e.key, "ms": e.self_device_time_total / 1e3, "calls": e.count,
             "share": e.self_device_time_total / total} for e in events[:rows]]


def run_variant(variant: str, what: list[str], batch: int) -> dict:
    """This process's rows: one variant's model-only rates and slowest kernels."""
    for key, value in VARIANTS[variant].items():
        owner, name = key.split(".", 1)
        setattr(OWNERS[owner], name, value)
    base = random_weights(build_preset("dmd2-imagenet64")).eval()
    net = prepare(base, torch.device("cuda"), "auto", compile="on", batch_hint=batch)
    rows = {}
    for w in what:
        early = w == "extract"
        img_s, first = rate(net, batch, early)
        kernels = top_kernels(net, batch, early)
        rows[f"{w}: {variant}"] = {"img_s": img_s, "first_call_s": first, "kernels": kernels}
        print(f"\n== {w}: {variant}: {img_s:.0f} img/s (model only, batch {batch}; "
              f"{img_s * flops_per_image(early) / 1e12:.0f} TFLOP/s), first call {first:.0f} s", flush=True)
        for k in kernels:
            print(f"{k['ms']:9.2f} ms {k['calls']:4d}x {k['share']:6.1%}  {k['kernel'][:160]}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench")))
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--what", default="generate,extract")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant here, rows as JSON to the file --one-out
    ap.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "run on a CUDA machine"
    what = args.what.split(",")
    if args.one:
        args.one_out.write_text(json.dumps(run_variant(args.one, what, args.batch)))
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"--variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch, "rows": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for v in variants:
        part = args.out / f"kernels-{v}.part.json"
        done = subprocess.run([sys.executable, __file__, "--one", v, "--one-out", str(part), "--what", args.what,
                               "--batch", str(args.batch)])
        if done.returncode != 0 or not part.exists():
            print(f"variant {v}: failed (exit {done.returncode})", flush=True)
            continue
        result["rows"].update(json.loads(part.read_text()))
        part.unlink()
        (args.out / "kernels.json").write_text(json.dumps(result, indent=1))  # after each variant: a cut run keeps its rows
    print("\n" + "\n".join(f"{k:<40}{r['img_s']:8.0f} img/s" for k, r in result["rows"].items()))


if __name__ == "__main__":
    main()
