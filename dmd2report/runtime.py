"""Putting a generator on a device for fast inference.

On CUDA the default path is: the UNet in bfloat16 (DMD2's own precision) with PyTorch SDPA (flash)
attention, TF32 for what stays in float32, cuDNN autotuning. Channels-last memory is opt-in
(`channels_last=True`): measured on an H200 it made this network slower in eager mode (group norm
has no fast channels-last kernel; benchmarks/README.md). `model.compile` compiles each UNet block
with `torch.compile`. Blocks are compiled one by one rather than the whole network so
that capture/masking hooks, which sit on the blocks, keep working unchanged and early exit after
`midblock` still skips the rest. If compilation fails, the eager blocks are used and a warning says so.
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
    import torch._dynamo.config as dynamo_config

    blocks = list(net.model.enc.values()) + list(net.model.dec.values())
    # Every block shares UNetBlock.forward's code object; each distinct shape (and batch size) is
    # one more compiled variant of it. The default limit of 8 would silently leave most blocks eager.
    limit = 8 * len(blocks)
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(dynamo_config, name, limit) < limit:
            setattr(dynamo_config, name, limit)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if getattr(dynamo_config, name, 4 * limit) < 4 * limit:
            setattr(dynamo_config, name, 4 * limit)
    eager = [b.forward for b in blocks]
    try:
        for b in blocks:
            # Automatic dynamic shapes: the first new batch size recompiles once with a symbolic
            # batch; after that partial batches and per-class subsets reuse it.
            b.forward = torch.compile(b.forward)
        _warm_up(net, device, batch_hint)
    except Exception as e:  # any backend failure: fall back, never fail the run
        for b, f in zip(blocks, eager):
            b.forward = f
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); running eager")


@torch.no_grad()
def _warm_up(net, device, batch: int) -> None:
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
    labels = torch.zeros(batch, net.label_dim, device=device) if net.label_dim else None
    net(x, torch.full((batch,), 80.0, device=device), labels)


