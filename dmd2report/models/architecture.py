"""A DhariwalUNet's configuration read off its state dict: the keys and shapes alone.

Read from the shapes (keys as EDMPrecond names them, `model.` first):
- `model_channels` and `channel_mult_emb`: `map_layer0.weight`, (model_channels * channel_mult_emb, model_channels);
- `label_dim` / `augment_dim`: `map_label.weight` / `map_augment.weight` (absent: 0);
- `img_resolution` and `img_channels`: the input convolution `enc.RxR_conv.weight`, (channels, img_channels, 3, 3);
- the levels: the blocks' resolutions, `img_resolution` halved once per level;
- `channel_mult`: each level's first decoder block's output channels over `model_channels`;
- `num_blocks`: the first level's encoder blocks `enc.RxR_blockN`;
- `attn_resolutions`: the levels whose blocks hold attention (`qkv`). A block of fewer than 64 channels
  has no attention heads whatever the configuration says, so such levels are never listed.

The rest changes no shape: it takes the values of the preset whose shapes these are, else `DEFAULTS`.
(The resampling filter is no constructor argument: it is a buffer of the state dict, whose values load
with the weights.) The result is then built on the meta device and every key and shape compared with
the state dict's, so an inferred architecture loads strictly; anything else is an ArchitectureError
naming the key it could not read or the first key whose shape differs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from .presets import PRESETS, build_network

Shapes = Mapping[str, Sequence[int]]

# EDMPrecond's keywords that change no tensor's shape, so that a state dict cannot tell them (config.py's
# [model.config] says what each does), with the values used when no preset has these shapes: DMD2's
# (dropout off) and EDM's sigma_data.
DEFAULTS = {"use_fp16": False, "sigma_data": 0.5, "dropout": 0.0, "label_dropout": 0}
# EDMPrecond's keywords that no configuration changes here (sigma_min/sigma_max bound EDM's sampler,
# not the network; dmd2report samples with its own schedules).
FIXED = {"sigma_min": 0, "sigma_max": float("inf"), "model_type": "DhariwalUNet"}

_BLOCK = re.compile(r"model\.(enc|dec)\.(\d+)x(\d+)_([a-z]+)(\d*)\.")


class ArchitectureError(ValueError):
    """The state dict is not one of a DhariwalUNet that this module can read; the message says where."""


def shapes_of(state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a network's or a state dict's tensors."""
    state = state.state_dict() if isinstance(state, torch.nn.Module) else state
    return {k: tuple(v.shape) for k, v in state.items()}


def preset_with_config(kwargs: Mapping) -> str | None:
    """The preset whose keywords are exactly these, if any."""
    return next((name for name, config in PRESETS.items() if config == dict(kwargs)), None)


def infer_architecture(shapes: Shapes) -> tuple[dict, str | None]:
    """(EDMPrecond keywords, the preset whose shapes these are or None) from a state dict's shapes."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    revealed = _read_shapes(shapes)
    like = next((name for name, config in PRESETS.items()
                 if {k: config[k] for k in revealed} == revealed), None)
    rest = {k: PRESETS[like][k] for k in DEFAULTS} if like else dict(DEFAULTS)
    kwargs = {**revealed, **rest, **FIXED}
    difference = shape_difference(shapes, shapes_of(build_network(kwargs, "meta")))
    if difference:
        raise ArchitectureError(f"{difference} (inferred: {_brief(revealed)})")
    return kwargs, like


def shape_difference(have: Shapes, want: Shapes) -> str:
    """The first key missing, unexpected or of another shape in `have` against `want`, in words; "" if none."""
    for key, shape in want.items():
        if key not in have:
            return f"{key} is missing"
        if tuple(have[key]) != tuple(shape):
            return f"{key} has shape {list(have[key])}, not {list(shape)}"
    extra = [k for k in have if k not in want]
    return f"{extra[0]} is not a key of that network ({len(extra)} such keys)" if extra else ""


def _read_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    def shape(key: str, ndim: int, what: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ArchitectureError(f"no {key} ({what}); not an EDMPrecond DhariwalUNet state dict")
        if len(shapes[key]) != ndim:
            raise ArchitectureError(f"{key} ({what}) has shape {list(shapes[key])}; expected {ndim} dimensions")
        return shapes[key]

    emb, channels = shape("model.map_layer0.weight", 2, "the embedding's first layer")
    if emb % channels:
        raise ArchitectureError(f"model.map_layer0.weight has shape [{emb}, {channels}]: {emb} embedding channels "
                                f"are not a multiple of {channels} model channels")
    optional = {name: shape(f"model.{name}.weight", 2, what)[1] if f"model.{name}.weight" in shapes else 0
                for name, what in (("map_label", "the class embedding"), ("map_augment", "the augment embedding"))}

    blocks: dict[tuple[str, int], set[str]] = {}   # (enc|dec, resolution) -> block names ("conv", "block0", ...)
    for key in shapes:
        m = _BLOCK.match(key)
        if m and m[2] == m[3]:
            blocks.setdefault((m[1], int(m[2])), set()).add(m[4] + m[5])
    inputs = sorted(res for (part, res), names in blocks.items() if part == "enc" and "conv" in names)
    if len(inputs) != 1:
        raise ArchitectureError("no input convolution model.enc.RxR_conv.weight" if not inputs else
                                f"{len(inputs)} input convolutions (model.enc.RxR_conv at {inputs}); a DhariwalUNet has one")
    resolution = inputs[0]
    img_channels = shape(f"model.enc.{resolution}x{resolution}_conv.weight", 4, "the input convolution")[1]
    found = sorted({res for _, res in blocks}, reverse=True)
    levels = [resolution >> i for i in range(len(found))]
    if found != levels:
        raise ArchitectureError(f"blocks at resolutions {found}; a DhariwalUNet's levels halve the input "
                                f"convolution's {resolution}: {levels}")

    num_blocks = sum(1 for name in blocks[("enc", resolution)] if name.startswith("block"))
    channel_mult, attention = [], []
    for res in levels:
        key = f"model.dec.{res}x{res}_block0.conv0.weight"
        out = shape(key, 4, f"the first decoder block of level {res}x{res}")[0]
        if out % channels:
            raise ArchitectureError(f"{key} has {out} output channels, not a multiple of {channels} model channels "
                                    f"(model.map_layer0.weight)")
        channel_mult.append(out // channels)
        if any(f"model.{part}.{res}x{res}_{name}.qkv.weight" in shapes
               for part in ("enc", "dec") for name in blocks.get((part, res), ()) if name.startswith("block")):
            attention.append(res)
    return dict(img_resolution=resolution, img_channels=img_channels, label_dim=optional["map_label"],
                augment_dim=optional["map_augment"], model_channels=channels, channel_mult=channel_mult,
                channel_mult_emb=emb // channels, num_blocks=num_blocks, attn_resolutions=attention)


def _brief(config: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())
