"""EDMPrecond + DhariwalUNet as upstream defines them, with the presets and the architecture read off a checkpoint."""

from .architecture import ArchitectureError, infer_architecture
from .precond import EDMPrecond
from .presets import PRESETS, build_network, build_preset, preset_config
from .unet import Conv2d, DhariwalUNet, GroupNorm, Linear, PositionalEmbedding, UNetBlock

__all__ = ["EDMPrecond", "DhariwalUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm",
           "PositionalEmbedding", "PRESETS", "build_preset", "build_network", "preset_config",
           "ArchitectureError", "infer_architecture"]
