"""Putting a generator on a device for fast inference.

On CUDA the default path is: the UNet in bfloat16 (DMD2's own precision) with PyTorch SDPA (flash)
attention, TF32 for what stays in float32, cuDNN autotuning, and, for runs large enough to repay
the compilation, the whole network compiled by `torch.compile` (`model.compile`, see
`CompiledForward`): the graphs run `models.compiled`, the network written in forms that Inductor
fuses into fast kernels over channels-last maps, which eager mode cannot do. Eager calls run
`models.unet`. If compilation fails, the eager path is used and a warning says so.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

from .errors import UserError
from .models import compiled

log = logging.getLogger(__name__)

# `model.compile = "auto"` compiles when a stage has at least this many samples to do (in this process):
# compiling a stage's graphs costs minutes without Inductor's on-disk cache, and each compiled image
# saves a fraction of a millisecond, so compiling pays from about 170k generated or 500k extracted
# images on a fresh machine (benchmarks/README.md, "When compiling pays"), sooner once the cache
# holds the graphs. The threshold sits between the two.
AUTO_COMPILE_MIN_SAMPLES = 200_000
COMPILE_MODES = ("auto", "on", "off")


def prepare(net: torch.nn.Module, device: torch.device, precision: str = "auto", compile: str = "auto",
            batch_hint: int = 256) -> torch.nn.Module:
    """Move `net` to `device` and set up its fastest numerically-checked inference path.

    `compile` is `model.compile`: "on" compiles the network for batches of `batch_hint`, "auto"
    installs the compiled forward disabled until a large stage enables it (`stage_samples`), "off"
    keeps eager. Only CUDA compiles."""
    if compile not in COMPILE_MODES:
        raise UserError(f"model.compile: {compile!r} is not one of {', '.join(COMPILE_MODES)}")
    net = net.eval().requires_grad_(False).to(device)
    use_box_resampling(net)
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
    if compile != "off":
        compile_forward(net, batch_hint, enabled=compile == "on")
    return net


def use_box_resampling(net: torch.nn.Module) -> None:
    """Let every resampling layer whose loaded filter is the 2x2 box use pooling / nearest upsampling
    (the same arithmetic; see models.unet.Conv2d). Decided on the loaded buffer, not the config."""
    from .models.unet import Conv2d

    for m in net.modules():
        if isinstance(m, Conv2d) and m.resample_filter is not None:
            f = m.resample_filter
            m.box_resample = bool(f.shape[-2:] == (2, 2) and torch.all(f == 0.25))


def stage_samples(net: torch.nn.Module, n: int) -> None:
    """A stage announces how many samples this process will run (0 when it ends). With
    `model.compile = "auto"` the compiled graphs are used during stages of AUTO_COMPILE_MIN_SAMPLES
    or more and the eager network elsewhere (small stages would not repay compiling a new graph,
    nor padding small batches to the compiled size)."""
    fwd = net.__dict__.get("forward_capture")
    if isinstance(fwd, CompiledForward) and fwd.auto:
        fwd.enabled = n >= AUTO_COMPILE_MIN_SAMPLES


def compile_forward(net: torch.nn.Module, batch: int, enabled: bool = True, mode: str | None = None) -> CompiledForward:
    """Replace `net.forward_capture` (and so `net.forward`) by its compiled version.

    `mode` is torch.compile's (None: the default; "reduce-overhead" adds CUDA graphs, measured by
    benchmarks/forward.py --cudagraphs, not used by the stages)."""
    fwd = CompiledForward(net, batch, enabled, mode)
    net.forward_capture = fwd
    _quiet_extern_choice_warning()
    return fwd


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quiet_extern_choice_warning() -> None:
    """Inductor warns once per matrix product of the attention blocks (dozens of lines per graph) that it
    could not describe a cuBLAS call's tensors for its benchmark bookkeeping; nothing is autotuned by
    default and the call runs as it is, so the line says nothing to a user. Only that message is dropped."""
    logger = logging.getLogger("torch._inductor.select_algorithm")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage("tensor meta failed for Extern Choice"))


class _CompileFailed(Exception):
    pass


class CompiledForward:
    """`forward_capture` as whole-network graphs of one static batch size.

    A graph runs `models.compiled.forward_capture` over the network's own modules and parameters.
    One graph per (captured blocks, stop_after), each compiled on first use with
    `fullgraph=True, dynamic=False`: a static shape lets Inductor specialise every kernel, and a
    batch of another size is cut into pieces of `batch` with the last one padded (repeating its last
    row; padded rows are dropped), so a chunk's short last batch costs no recompilation.
    The eager method runs instead while any forward hook is installed in the network (masking:
    the graphs know nothing of hooks added later), for `force_fp32`, and, with a warning, after a
    graph failed to compile. Errors of a compiled graph that did compile (out of memory, say) are
    raised as they are.
    """

    def __init__(self, net: torch.nn.Module, batch: int, enabled: bool = True, mode: str | None = None):
        # The bound method of the class (also when `net` was compiled before: never a graph of a graph).
        self.eager = type(net).forward_capture.__get__(net)
        self.net = net
        self.batch = int(batch)
        self.enabled = enabled
        self.auto = not enabled
        self.mode = mode
        self.failed = False
        self.graphs: dict[tuple, _Graph] = {}
        self.modules = list(net.modules())
        self.label_dim = net.label_dim
        # Every graph compiles the same Python function (one per key and per network): Dynamo counts
        # them as recompilations of one code object, 8 by default, after which fullgraph fails.
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))

    def _hooked(self) -> bool:
        from torch.nn.modules import module as nn_module

        return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or
                    any(m._forward_hooks or m._forward_pre_hooks for m in self.modules))

    def __call__(self, x, sigma, class_labels=None, force_fp32=False, capture=(), stop_after=None, **model_kwargs):
        key = (tuple(capture), stop_after)
        n = x.shape[0]
        if not self.enabled or self.failed or n == 0 or force_fp32 or model_kwargs or self._hooked():
            return self.eager(x, sigma, class_labels, force_fp32, capture=capture, stop_after=stop_after, **model_kwargs)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(n)
        if self.label_dim:
            labels = class_labels if class_labels is not None else torch.zeros(1, self.label_dim, device=x.device)
            labels = labels.to(torch.float32).reshape(-1, self.label_dim).expand(n, -1)
        else:
            labels = None
        try:
            pieces = [self._run(key, x[s:s + self.batch], sigma[s:s + self.batch],
                                labels[s:s + self.batch] if labels is not None else None)
                      for s in range(0, n, self.batch)]
        except _CompileFailed as e:  # a backend failure: warn once, go on eager
            self.failed = True
            e = e.__cause__
            first_line = (str(e).splitlines() or [""])[0][:160]
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line}); running eager", stacklevel=2)
            return self.eager(x, sigma, class_labels, force_fp32, capture=capture, stop_after=stop_after)
        if len(pieces) == 1:
            return pieces[0]
        out = None if pieces[0][0] is None else torch.cat([p[0] for p in pieces])
        return out, {k: torch.cat([p[1][k] for p in pieces]) for k in pieces[0][1]}

    def _run(self, key, x, sigma, labels):
        n = x.shape[0]
        if n < self.batch:
            pad = self.batch - n
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            sigma = torch.cat([sigma, sigma[-1:].expand(pad)])
            labels = torch.cat([labels, labels[-1:].expand(pad, -1)]) if labels is not None else None
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._compile(key)
        args = x.contiguous(), sigma.contiguous(), labels.contiguous() if labels is not None else None
        if graph.fresh:  # the first call compiles: a failure here is the compiler's
            t0 = time.perf_counter()
            try:
                out, acts = graph.fn(*args)
            except UserError:
                raise
            except Exception as e:
                raise _CompileFailed from e
            graph.fresh = False
            log.info(f"torch.compile: graph ready in {time.perf_counter() - t0:.0f} s")
        else:
            out, acts = graph.fn(*args)
        if self.mode == "reduce-overhead":  # CUDA graphs reuse their output buffers on the next replay
            out = out.clone() if out is not None else None
            acts = {k: v.clone() for k, v in acts.items()}
        if n < self.batch:
            out = out[:n] if out is not None else None
            acts = {k: v[:n] for k, v in acts.items()}
        return out, acts

    def _compile(self, key):
        capture, stop_after = key
        net = self.net

        def forward(x, sigma, labels):
            return compiled.forward_capture(net, x, sigma, labels, capture=capture, stop_after=stop_after)

        what = f"capturing {', '.join(capture)}" if capture else "the full network"
        log.info(f"torch.compile: compiling the network for batches of {self.batch} ({what}"
             f"{', stopping after ' + stop_after if stop_after else ''}); once per run, about a minute")
        return _Graph(torch.compile(forward, fullgraph=True, dynamic=False, mode=self.mode))


class _Graph:
    """A compiled function and whether its first (compiling) call is still to come."""

    def __init__(self, fn):
        self.fn = fn
        self.fresh = True


# ---------------------------------------------------------------------------------------------
# The automatic batch size (features.batch_size = 0), moved here from config so that config imports no torch.

def auto_batch_size(device, batch_size: int = 0) -> int:
    """The batch to run on `device` (a torch.device or a string such as "cuda:0"): `batch_size` when
    it is set (> 0), else chosen by the device: on CUDA by GPU memory (1024 from 48 GiB, 512 from
    24 GiB, else 256), 256 elsewhere."""
    if batch_size:
        return int(batch_size)
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    if kind != "cuda":
        return 256
    # The full ImageNet-64 network's stages peaked at about 23 GiB for batches of 1024 (benchmarks/README.md),
    # 512 needs about half. 1024 is where the end-to-end figures were measured, and it halves the
    # launches per image.
    gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    return 1024 if gib >= 48 else 512 if gib >= 24 else 256
