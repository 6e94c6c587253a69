"""Layer names, activation capture (through the network's `forward_capture`) and masking (forward hooks).

A layer is a block of `model.enc` or `model.dec`. It is named either upstream
(`enc.8x8_block2`, `dec.8x8_in0`) or by the seed tool's aliases:
`encoder_block_N` / `decoder_block_N` (N-th block, counted from 0), `encoder_bottleneck`
(the last encoder block) and `midblock` (the first decoder block).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

import torch

from .errors import UserError


def block_names(net) -> list[str]:
    """Upstream names of every hookable block, in execution order."""
    return [f"enc.{n}" for n in net.model.enc] + [f"dec.{n}" for n in net.model.dec]


def layer_aliases(net) -> dict[str, str]:
    """Alias -> upstream name, aliases in the seed tool's spelling."""
    enc, dec = list(net.model.enc), list(net.model.dec)
    aliases = {"encoder_bottleneck": f"enc.{enc[-1]}", "midblock": f"dec.{dec[0]}"}
    aliases |= {f"encoder_block_{i}": f"enc.{n}" for i, n in enumerate(enc)}
    aliases |= {f"decoder_block_{i}": f"dec.{n}" for i, n in enumerate(dec)}
    return aliases


def resolve_layer(net, name: str) -> str:
    """Upstream name for a layer name or alias; an unknown name is a UserError listing the valid ones."""
    aliases = layer_aliases(net)
    if name in aliases:
        return aliases[name]
    if name in block_names(net):
        return name
    valid = ", ".join(["encoder_bottleneck", "midblock", f"encoder_block_0..{len(net.model.enc) - 1}",
                       f"decoder_block_0..{len(net.model.dec) - 1}"] + block_names(net))
    raise UserError(f"unknown layer {name!r}; valid layers: {valid}")


def get_block(net, upstream_name: str) -> torch.nn.Module:
    part, key = upstream_name.split(".", 1)
    return getattr(net.model, part)[key]


def layer_shapes(net) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every block's output, found by one forward pass on the meta device."""
    shapes: dict[str, tuple[int, int, int]] = {}
    meta = _meta_copy(net)
    hooks = [get_block(meta, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))) for n in block_names(meta)]
    try:
        res, ch = meta.img_resolution, meta.img_channels
        x = torch.zeros(1, ch, res, res, device="meta")
        labels = torch.zeros(1, meta.label_dim, device="meta") if meta.label_dim else None
        meta(x, torch.ones(1, device="meta"), labels)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _meta_copy(net):
    from .models import EDMPrecond

    if next(net.parameters()).device.type == "meta":
        return net
    with torch.device("meta"):
        return EDMPrecond(**net.init_kwargs)


Reducer = Callable[[torch.Tensor], torch.Tensor]
REDUCERS: dict[str, Reducer | None] = {
    "full": None,
    "mean": lambda a: a.mean(dim=(2, 3), dtype=torch.float32),  # per-channel spatial mean, accumulated in float32
}


class ActivationCapture:
    """Record chosen layers' outputs during a forward pass.

    `reduce` ("full", "mean" or a callable on the (N, C, H, W) tensor) runs on the device
    before anything is copied. With `early_exit`, `run` stops the forward pass as soon as
    the last captured block has run and returns None instead of the image: extraction of
    `midblock` needs about 60 of the full network's 219 GFLOPs.

    The blocks' outputs come back from the network's `forward_capture` (no hooks), so a compiled
    network (`model.compile`, runtime.CompiledForward) captures inside its one graph.
    """

    def __init__(self, net, layers: Iterable[str], reduce: str | Reducer | None = "full",
                 early_exit: bool = False, float32: bool = True):
        self.net = net
        self.names = [resolve_layer(net, n) for n in layers]
        self.labels = dict(zip(self.names, layers))
        if isinstance(reduce, str):
            if reduce not in REDUCERS:
                raise UserError(f"unknown reduction {reduce!r}; valid: {', '.join(REDUCERS)}")
            reduce = REDUCERS[reduce]
        self.reduce = reduce
        self.early_exit = early_exit
        self.float32 = float32
        order = block_names(net)
        self.capture = tuple(sorted(set(self.names), key=order.index))
        self.last = self.capture[-1] if self.capture else None
        self.activations: dict[str, torch.Tensor] = {}

    def run(self, x, sigma, class_labels) -> torch.Tensor | None:
        """Forward pass; returns D(x) or, when it stopped early, None. Activations are in `.activations`."""
        out, acts = self.net.forward_capture(x, sigma, class_labels, capture=self.capture,
                                             stop_after=self.last if self.early_exit else None)
        self.activations = {}
        for name in self.names:
            a = acts[name].detach()
            if self.reduce is not None:
                a = self.reduce(a)
            self.activations[self.labels[name]] = a.float() if self.float32 else a
        return out


@contextlib.contextmanager
def mask_layers(net, replacements: Mapping[str, torch.Tensor]):
    """Hold layers' outputs fixed: each named block returns the given activations instead.

    A replacement is (N, C, H, W) (one per sample) or (C, H, W) / (1, C, H, W) (broadcast to
    the batch). NaN or a shape that does not fit the layer is an error.
    """
    hooks = []
    shapes = layer_shapes(net)
    prepared = {}
    for name, value in replacements.items():
        upstream = resolve_layer(net, name)
        value = torch.as_tensor(value)
        if value.ndim == 3:
            value = value[None]
        if value.ndim != 4 or tuple(value.shape[1:]) != shapes[upstream]:
            raise UserError(f"mask for layer {name!r} has shape {tuple(value.shape)}; expected "
                            f"(N, {', '.join(map(str, shapes[upstream]))}) or ({', '.join(map(str, shapes[upstream]))})")
        if torch.isnan(value).any():
            raise UserError(f"mask for layer {name!r} contains NaN")
        prepared[upstream] = value

    def hook_for(name, value):
        def hook(module, inputs, output):
            if value.shape[0] not in (1, output.shape[0]):
                raise UserError(f"mask for layer {name!r} holds {value.shape[0]} samples; the batch has {output.shape[0]}")
            return value.to(device=output.device, dtype=output.dtype).expand_as(output).clone()
        return hook

    try:
        for upstream, value in prepared.items():
            hooks.append(get_block(net, upstream).register_forward_hook(hook_for(upstream, value)))
        yield
    finally:
        for h in hooks:
            h.remove()
