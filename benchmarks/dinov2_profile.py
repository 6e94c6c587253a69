"""Where DINOv2 ViT-L/14's bfloat16 time goes on one GPU, and what torch.compile's variants change (random weights,
4,096 random 64x64 images, batches of 512; needs CUDA):

    PYTHONPATH=. python benchmarks/dinov2_profile.py 2> /tmp/autotune.log

Prints img/s of: eager; eager with cuDNN's attention; compiled (default mode) and a profile of its CUDA kernels
over two batches; compiled at batch 1024; compiled with cuDNN's attention and its profile; compiled with Inductor's
coordinate-descent tuning; max-autotune with Triton's persistent TMA matrix products. About 6 minutes on an H100.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, ".")
from benchmarks.encoders import in_batches, random_dinov2_file, timed  # noqa: E402
from dmd2report.encoders.dinov2 import load_dinov2  # noqa: E402

tmp = Path(tempfile.mkdtemp())
random_dinov2_file(tmp / "d.pth")
n = 4096
a = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)).cuda()
enc = load_dinov2("dinov2-vitl14", tmp / "d.pth", device="cuda", dtype=torch.bfloat16)
res = {}


def run(name, fn, batch=512, ctx=None):
    t0 = time.perf_counter()
    with torch.no_grad():
        if ctx is None:
            in_batches(fn, a[:batch], batch)
            c = time.perf_counter() - t0
            r = n / timed(lambda: in_batches(fn, a, batch))
        else:
            with ctx():
                in_batches(fn, a[:batch], batch)
                c = time.perf_counter() - t0
                r = n / timed(lambda: in_batches(fn, a, batch))
    res[name] = {"img_s": r, "first_s": c}
    print(json.dumps({name: res[name]}), flush=True)


run("eager", enc)
run("eager_cudnn_attn", enc, ctx=lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION))
fast = torch.compile(enc)
run("compiled", fast)
with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    in_batches(fast, a[:1024], 512)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70), flush=True)
run("compiled_b1024", fast, batch=1024)
torch._dynamo.reset()
fast = torch.compile(enc)
run("compiled_cudnn_attn", fast, ctx=lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION))
with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION), \
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    in_batches(fast, a[:1024], 512)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70), flush=True)
torch._dynamo.reset()
import torch._inductor.config as ic  # noqa: E402

ic.coordinate_descent_tuning = True
fast = torch.compile(enc)
run("compiled_cdt_cudnn_attn", fast, ctx=lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION))
torch._dynamo.reset()
ic.coordinate_descent_tuning = False
ic.triton.enable_persistent_tma_matmul = True
fast = torch.compile(enc, mode="max-autotune-no-cudagraphs")
run("maxat_tma_cudnn_attn", fast, ctx=lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION))
print(json.dumps(res, indent=1))
