"""The encoders by kind: an `[[encoders]]` table's loader, its identity for cache keys, what a store records of it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import EncoderConfig
from ..resources import BUNDLED_ENCODERS, BUNDLED_PREFIX, bundled_by_name
from .demo_classifier import load_demo_classifier
from .dinov2 import load_dinov2
from .inception import load_inception

# Every kind of encoder (config.ENCODER_KINDS) and the function that loads it.
LOADERS = {"inception": load_inception, "inception-tf1": load_inception, "dinov2-vits14": load_dinov2,
           "dinov2-vitb14": load_dinov2, "dinov2-vitl14": load_dinov2, "dinov2-vitg14": load_dinov2,
           "demo-classifier": load_demo_classifier}


def weight_file(value: str) -> Path:
    """An `[[encoders]]` table's file: a path, or `bundled:NAME`, a file that ships with dmd2report."""
    if value.startswith(BUNDLED_PREFIX):
        return bundled_by_name(BUNDLED_ENCODERS, value[len(BUNDLED_PREFIX):], "encoder weights", BUNDLED_PREFIX)
    return Path(value)


def encoder_dtype(entry: EncoderConfig, device) -> torch.dtype:
    """The precision an encoder runs in (encoders.precision): auto is bfloat16 for DINOv2 on CUDA, else float32."""
    if entry.precision == "auto":
        return torch.bfloat16 if entry.kind.startswith("dinov2-") and torch.device(device).type == "cuda" \
            else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[entry.precision]


def encoder_identity(entry: EncoderConfig, device, workdir, write_cache: bool = True) -> dict:
    """What an encoder's features depend on, without loading it: its kind, precision and files' SHA-256 (cached in
    the work directory by path, size and modification time)."""
    return {"kind": entry.kind, "dtype": str(encoder_dtype(entry, device)).removeprefix("torch."),
            "weights": workdir.checkpoint_sha256(weight_file(entry.weights), write=write_cache),
            "head": workdir.checkpoint_sha256(Path(entry.head), write=write_cache) if entry.head else ""}


def load_encoder(entry: EncoderConfig, device, workdir, write_cache: bool = True) -> torch.nn.Module:
    """The encoder an `[[encoders]]` table describes, on `device` in its precision, in inference mode, with its
    `identity`."""
    module = LOADERS[entry.kind](entry.kind, weight_file(entry.weights), Path(entry.head) if entry.head else None,
                                 device)
    module = module.to(dtype=encoder_dtype(entry, device))   # features come back float32 whatever it runs in
    module.identity = encoder_identity(entry, device, workdir, write_cache)
    return module.eval().requires_grad_(False)


def describe(encoder: torch.nn.Module) -> dict:
    """What a store's manifest records of an encoder's feature space."""
    return {"kind": encoder.kind, "feature_dim": int(encoder.feature_dim), "num_classes": int(encoder.num_classes),
            "class_order": encoder.class_order, "protocol": encoder.protocol}
