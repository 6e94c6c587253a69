"""Named generator configurations. Constructor keywords exactly as upstream EDMPrecond takes them."""

from __future__ import annotations

import torch

from .precond import EDMPrecond

PRESETS: dict[str, dict] = {
    # DMD2 ImageNet 64x64 (Yin et al. 2024): EDM's ADM config with map_augment removed.
    "dmd2-imagenet64": dict(
        img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, sigma_min=0,
        sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", augment_dim=0,
        model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
        attn_resolutions=[32, 16, 8], dropout=0.0, label_dropout=0,
    ),
    # The bundled demo generator (data/demo/), trained on the procedural demo dataset (12 classes, 32x32).
    "demo": dict(
        img_resolution=32, img_channels=3, label_dim=12, use_fp16=False, sigma_min=0,
        sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", augment_dim=0,
        model_channels=32, channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=2,
        attn_resolutions=[8], dropout=0.0, label_dropout=0,
    ),
    # The reference vectors' tiny configuration (tests/fixtures/dhariwal_tiny.config.json).
    "tiny": dict(
        img_resolution=16, img_channels=3, label_dim=10, use_fp16=False, sigma_min=0,
        sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", augment_dim=0,
        model_channels=32, channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=2,
        attn_resolutions=[8, 4], dropout=0.0, label_dropout=0,
    ),
}


def preset_config(name: str) -> dict:
    from ..errors import UserError

    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def build_preset(name: str, device: str | torch.device | None = None, **overrides) -> EDMPrecond:
    """Build a preset with fresh (random) weights; `device="meta"` builds it without memory."""
    return build_network(preset_config(name) | overrides, device)


def build_network(kwargs: dict, device: str | torch.device | None = None) -> EDMPrecond:
    """EDMPrecond of these keywords with fresh (random) weights; `device="meta"` builds it without memory."""
    with torch.device(device or "cpu"):
        return EDMPrecond(**kwargs)
