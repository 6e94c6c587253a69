"""Where a compiled batch spends its GPU time: the slowest kernels of the compiled network, full names.

    PYTHONPATH=. python benchmarks/kernels.py --out $OUT [--batch 1024] [--what generate,extract]

For each layout variant of the compiled network, side by side in one run: model-only img/s of
generation (full network) and extraction (stopping after `midblock`), and the kernels that take
the most GPU time in one batch, with Inductor's full kernel names (which name the fused operations)
so that they can be found in its generated code (run with TORCH_COMPILE_DEBUG=1 to keep that code;
`device_suite.sh kernels` does). Variants: `default` (what the stages run), `nchw-cat` (the
decoder's skip concatenations left to Inductor's default layout, as before `unet.cat_channels`),
`shifted-sums` (group norm's per-channel statistics from plain sums, `unet.SHIFTED_SUMS`), and
`coordinate-descent` and `autotune-pointwise` (Inductor tuning its own kernels' launch parameters, by
coordinate descent or over its list of configurations: candidates for the memory-bound group-norm
kernels between the convolutions; both compile for longer).
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

from throughput import flops_per_image, model_batch, random_weights, rate

from dmd2report.models import build_preset, unet
from dmd2report.runtime import prepare

# Flags set while a variant's graphs compile: attributes of models.unet, or "inductor.<name>" of
# torch._inductor.config.
VARIANTS = {"default": {}, "nchw-cat": {"CHANNELS_LAST_CAT": False}, "shifted-sums": {"SHIFTED_SUMS": True},
            "coordinate-descent": {"inductor.coordinate_descent_tuning": True},
            "autotune-pointwise": {"inductor.max_autotune_pointwise": True}}


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench")))
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--what", default="generate,extract")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "run on a CUDA machine"
    base = random_weights(build_preset("dmd2-imagenet64")).eval()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch, "rows": {}}
    for variant in args.variants.split(","):
        flags = {(torch._inductor.config, k[len("inductor."):]) if k.startswith("inductor.") else (unet, k): v
                 for k, v in VARIANTS[variant].items()}
        saved = {k: getattr(*k) for k in flags}
        for (owner, name), v in flags.items():  # read while a graph compiles (its first call)
            setattr(owner, name, v)
        net = build_preset("dmd2-imagenet64")
        net.load_state_dict(base.state_dict())
        net = prepare(net, torch.device("cuda"), "auto", compile="on", batch_hint=args.batch)
        for what in args.what.split(","):
            early = what == "extract"
            img_s, first = rate(net, args.batch, early)
            kernels = top_kernels(net, args.batch, early)
            result["rows"][f"{what}: {variant}"] = {"img_s": img_s, "first_call_s": first, "kernels": kernels}
            print(f"\n== {what}: {variant}: {img_s:.0f} img/s (model only, batch {args.batch}; "
                  f"{img_s * flops_per_image(early) / 1e12:.0f} TFLOP/s), first call {first:.0f} s", flush=True)
            for k in kernels:
                print(f"{k['ms']:9.2f} ms {k['calls']:4d}x {k['share']:6.1%}  {k['kernel'][:160]}")
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "kernels.json").write_text(json.dumps(result, indent=1))
        for (owner, name), v in saved.items():
            setattr(owner, name, v)
        del net
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
