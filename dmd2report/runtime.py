"""Putting a generator on a device for fast inference.

On CUDA the default path is: the UNet in bfloat16 (DMD2's own precision) with PyTorch SDPA (flash)
attention, TF32 for what stays in float32, cuDNN autotuning. Channels-last memory is opt-in
(`channels_last=True`): measured on an H200 it made this network slower in eager mode (group norm
has no fast channels-last kernel; benchmarks/README.md). `model.compile` fuses the elementwise
tail of every block with `torch.compile` (one shared function; see `_compile_blocks`). The blocks
themselves stay eager modules, so capture/masking hooks keep working unchanged and early exit after
`midblock` still skips the rest. If compilation fails, the eager path is used and a warning says so.
"""

from __future__ import annotations

import warnings

import torch

from .errors import UserError


def prepare(net: torch.nn.Module, device: torch.device, precision: str = "auto", compile: bool = False,
            batch_hint: int = 256, channels_last: bool = False) -> torch.nn.Module:
    """Move `net` to `device` and set up its fastest numerically-checked inference path."""
    net = net.eval().requires_grad_(False).to(device)
    if precision == "bfloat16":
        if device.type != "cuda":
            raise UserError("model.precision = bfloat16 needs a CUDA device; use auto or float32")
        net.use_fp16 = True
    elif precision == "float32":
        net.use_fp16 = False
    if device.type != "cuda":
        return net
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 path only; the bf16 path is unaffected
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile:
        _compile_blocks(net, device, batch_hint)
    return net


def _compile_blocks(net, device, batch_hint: int) -> None:
    """Fuse the elementwise tail of every block (group norm, scale/shift, SiLU) by compiling the one
    function all blocks share, with dynamic shapes: a handful of graphs instead of one per block, so
    compiling takes seconds where compiling each of the 37 blocks took minutes. Convolutions and
    attention stay with cuDNN and SDPA."""
    from .models.unet import UNetBlock, norm_silu

    compiled = torch.compile(norm_silu, dynamic=True)
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    try:
        for b in blocks:
            b.norm_silu = compiled
        _warm_up(net, device, batch_hint)
    except Exception as e:  # any backend failure: fall back, never fail the run
        for b in blocks:
            del b.norm_silu  # back to the class's eager function
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); running eager")


@torch.no_grad()
def _warm_up(net, device, batch: int) -> None:
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
    labels = torch.zeros(batch, net.label_dim, device=device) if net.label_dim else None
    net(x, torch.full((batch,), 80.0, device=device), labels)


