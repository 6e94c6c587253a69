"""Reading generator checkpoints safely and matching them to a preset.

Formats: `.pth`/`.bin`/`.pt` through `torch.load(weights_only=True)` (never a full unpickle),
`.safetensors`, and an Accelerate checkpoint folder as DMD2's training saves it
(`pytorch_model.bin` or `model.safetensors` is the generator, `pytorch_model_1.bin` the guidance
networks). Loading is strict; a `module.` prefix (DDP) is stripped when the rest then matches.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .files import sha256_file
from .models import PRESETS, build_preset
from .resources import bundled_file

GENERATOR_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")
GUIDANCE_FILES = ("pytorch_model_1.bin", "model_1.safetensors")
GUIDANCE_PREFIXES = ("fake_unet.", "real_unet.", "cls_pred_branch.", "guidance_model.")


@dataclass
class Checkpoint:
    path: Path                       # the file actually read
    format: str                      # "safetensors" | "torch-zip" | "torch-legacy"
    state_dict: dict[str, torch.Tensor]
    stripped_prefix: str = ""

    @property
    def num_tensors(self) -> int:
        return len(self.state_dict)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


@dataclass
class PresetMatch:
    preset: str
    exact: bool
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint shape, preset shape


def resolve_checkpoint_file(path: str | Path) -> Path:
    """The generator file of a path: the file itself, or the generator inside an Accelerate folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        for name in GENERATOR_FILES:
            if (path / name).is_file():
                return path / name
        found = [p.name for p in path.iterdir() if p.is_file()][:8]
        hint = (f"; {GUIDANCE_FILES[0]} there holds DMD2's guidance networks, not the generator"
                if any((path / g).exists() for g in GUIDANCE_FILES) else "")
        raise UserError(f"{path}: directory holds no model file (expected {' or '.join(GENERATOR_FILES[:2])}; "
                        f"found: {', '.join(found) or 'nothing'}){hint}")
    if path.name in GUIDANCE_FILES:
        raise UserError(f"{path}: this is DMD2's guidance checkpoint (real/fake score networks), not the generator; "
                        f"use {path.parent / 'pytorch_model.bin'} instead")
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a state dict without running any code from the file."""
    file = resolve_checkpoint_file(path)
    if file.suffix == ".safetensors":
        state, fmt = _read_safetensors(file), "safetensors"
    else:
        state, fmt = _read_torch(file)
    state = _unwrap(state, file)
    if any(k.startswith(GUIDANCE_PREFIXES) for k in state):
        raise UserError(f"{file}: holds DMD2's guidance networks (real/fake score UNets), not the generator; "
                        f"point at pytorch_model.bin of the same checkpoint folder")
    return Checkpoint(path=file, format=fmt, state_dict=state)


def _read_safetensors(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: not a readable safetensors file ({_first_line(e)}); is it truncated?") from None


def _read_torch(file: Path) -> tuple[dict, str]:
    is_zip = zipfile.is_zipfile(file)
    try:
        # mmap avoids a second copy of a 1.2 GB checkpoint in memory; legacy files can't be mapped.
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise UserError(f"{file}: refused: the pickle holds objects other than tensors, and loading it would run "
                        f"code ({_first_line(e).split('. ')[0]}); convert it to a plain state dict or safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{file}: cannot read this checkpoint; it is truncated or not a PyTorch file ({_first_line(e)})") from None
    return state, "torch-zip" if is_zip else "torch-legacy"


def _unwrap(state, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{file}: does not hold a state dict (found {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{file}: not a flat state dict: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    return state


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def preset_shapes(name: str) -> dict[str, tuple]:
    net = build_preset(name, device="meta")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def match_preset(state: dict[str, torch.Tensor], preset: str) -> PresetMatch:
    want = preset_shapes(preset)
    have = {k: tuple(v.shape) for k, v in state.items()}
    return PresetMatch(
        preset=preset,
        exact=have == want,
        missing=[k for k in want if k not in have],
        unexpected=[k for k in have if k not in want],
        mismatched=[(k, have[k], want[k]) for k in want if k in have and have[k] != want[k]],
    )


def _strip_module_prefix(ckpt: Checkpoint, preset: str) -> None:
    """DDP saves keys as `module.model....`: strip the prefix when that makes the keys match."""
    keys = list(ckpt.state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        stripped = {k[len("module."):]: v for k, v in ckpt.state_dict.items()}
        if match_preset(stripped, preset).exact or not match_preset(ckpt.state_dict, preset).exact:
            ckpt.state_dict, ckpt.stripped_prefix = stripped, "module."


def identify(ckpt: Checkpoint) -> tuple[PresetMatch, list[PresetMatch]]:
    """The exactly matching preset, else the nearest one (most keys in common); with every preset's match."""
    matches = []
    for name in PRESETS:
        _strip_module_prefix(ckpt, name)
        matches.append(match_preset(ckpt.state_dict, name))
    exact = [m for m in matches if m.exact]
    best = exact[0] if exact else min(matches, key=lambda m: len(m.missing) + len(m.unexpected) + len(m.mismatched))
    return best, matches


def describe_mismatch(m: PresetMatch, limit: int = 5) -> str:
    parts = []
    if m.missing:
        parts.append(f"{len(m.missing)} missing (e.g. {', '.join(m.missing[:limit])})")
    if m.unexpected:
        parts.append(f"{len(m.unexpected)} unexpected (e.g. {', '.join(m.unexpected[:limit])})")
    if m.mismatched:
        parts.append(f"{len(m.mismatched)} shape mismatches (e.g. " +
                     ", ".join(f"{k}: {list(a)} vs {list(b)}" for k, a, b in m.mismatched[:limit]) + ")")
    return "; ".join(parts)


def load_into(net, ckpt: Checkpoint, preset: str) -> None:
    """Strict load; a mismatch is a UserError that names the first differing keys."""
    _strip_module_prefix(ckpt, preset)
    m = match_preset(ckpt.state_dict, preset)
    if not m.exact:
        raise UserError(f"{ckpt.path}: does not match preset {preset!r}: {describe_mismatch(m, 3)}")
    net.load_state_dict(ckpt.state_dict, strict=True)


@dataclass
class GeneratorInfo:
    preset: str
    checkpoint: str            # path as given, or "" for fresh weights
    sha256: str                # of the checkpoint file ("" when untrained)
    format: str
    untrained: bool            # random weights: every page says so


def bundled_weights(preset: str) -> Path | None:
    """Weights that ship with the package for a preset (the demo generator), if present."""
    name = {"demo": "demo/generator.safetensors"}.get(preset)
    if name is None:
        return None
    path = bundled_file(name)
    return path if path.is_file() else None


def load_generator(preset: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                   seed: int = 0) -> tuple[torch.nn.Module, GeneratorInfo]:
    """Build a preset and load its weights: the given checkpoint, else the bundled ones, else random.

    Random weights (seeded) are only used when neither exists, and are reported as untrained.
    """
    torch.manual_seed(seed)  # only matters for random weights
    net = build_preset(preset)
    path = Path(checkpoint) if checkpoint else bundled_weights(preset)
    if path is None:
        info = GeneratorInfo(preset=preset, checkpoint="", sha256="", format="", untrained=True)
    else:
        ckpt = read_checkpoint(path)
        load_into(net, ckpt, preset)
        info = GeneratorInfo(preset=preset, checkpoint=str(path), sha256=sha256_file(ckpt.path),
                             format=ckpt.format, untrained=False)
    return net.eval().requires_grad_(False).to(device), info
