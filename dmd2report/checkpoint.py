"""Reading generator checkpoints safely, and the architecture of a run: a preset or read off a checkpoint.

Formats, told apart by the file's first bytes (not its name): safetensors (an 8-byte little-endian
header length, then JSON), a PyTorch zip archive and a legacy PyTorch pickle, both read through
`torch.load(weights_only=True)` (never a full unpickle); anything else is not a checkpoint. An
Accelerate checkpoint folder as DMD2's training saves it is read too (`pytorch_model.bin` or
`model.safetensors` is the generator, `pytorch_model_1.bin` the guidance networks). Loading is
strict; a `module.` prefix (DDP) on every key is stripped. A tensor holding NaN or infinity is
refused, and so is a network whose outputs are not finite or do not depend on its input (`check_outputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .files import sha256_file
from .models import ArchitectureError, build_network, infer_architecture, preset_config
from .models.architecture import preset_with_config, shapes_of
from .resources import BUNDLED_CHECKPOINTS, BUNDLED_PREFIX, bundled_by_name, bundled_file

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
class ShapeMatch:
    exact: bool
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint shape, network's shape


def resolve_checkpoint_file(path: str | Path) -> Path:
    """The generator file of a path: the file itself, the generator inside an Accelerate folder, or the bundled
    file a `bundled:NAME` names."""
    if str(path).startswith(BUNDLED_PREFIX):
        return bundled_by_name(BUNDLED_CHECKPOINTS, str(path)[len(BUNDLED_PREFIX):], "checkpoint", BUNDLED_PREFIX)
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
    ckpt = _read(path, shapes_only=False)
    for k, t in ckpt.state_dict.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise UserError(f"{ckpt.path}: tensor {k!r} holds non-finite values (NaN or infinity); the checkpoint is damaged")
    return ckpt


def read_shapes(path: str | Path) -> Checkpoint:
    """The checkpoint with its tensors on the meta device (shapes, no values), reading as little as its
    format allows: a safetensors header, a PyTorch archive memory-mapped; a legacy PyTorch file is read
    whole. Cached by file, size and modification time (the config checks and the stages ask again)."""
    file = resolve_checkpoint_file(path)
    stat = file.stat()
    return _cached_shapes(file, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_shapes(file: Path, size: int, mtime_ns: int) -> Checkpoint:
    ckpt = _read(file, shapes_only=True)
    ckpt.state_dict = {k: torch.empty(t.shape, device="meta") for k, t in ckpt.state_dict.items()}
    return ckpt


def _read(path: str | Path, shapes_only: bool) -> Checkpoint:
    file = resolve_checkpoint_file(path)
    fmt = checkpoint_format(file)
    if fmt is None:
        raise UserError(f"{file}: not a checkpoint (neither safetensors nor a PyTorch file)")
    if fmt == "safetensors":
        state = _read_safetensors(file, shapes_only)
    else:
        state, fmt = _read_torch(file, fmt)
    state = _unwrap(state, file)
    if any(k.startswith(GUIDANCE_PREFIXES) for k in state):
        raise UserError(f"{file}: holds DMD2's guidance networks (real/fake score UNets), not the generator; "
                        f"point at pytorch_model.bin of the same checkpoint folder")
    # DDP saves keys as `module.model....`; no key of EDMPrecond starts with `module.`.
    prefix = "module." if all(k.startswith("module.") for k in state) else ""
    return Checkpoint(path=file, format=fmt, state_dict={k[len(prefix):]: v for k, v in state.items()},
                      stripped_prefix=prefix)


SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def checkpoint_format(file: Path) -> str | None:
    """"safetensors", "torch-zip" or "torch-legacy" from a file's first bytes; None for anything else.

    A legacy PyTorch file is a pickle (protocol 2 or later: 0x80, then the protocol); whether it is
    one torch can read, and holds nothing but tensors, is found out by `torch.load(weights_only=True)`."""
    try:
        with open(file, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e.strerror or e})") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-legacy"
    return None


def _read_safetensors(file: Path, shapes_only: bool) -> dict:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if shapes_only:  # the header alone: tensors of the right shapes that hold nothing
            with safe_open(str(file), "pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: not a readable safetensors file ({_first_line(e)}); is it truncated?") from None


def _read_torch(file: Path, fmt: str) -> tuple[dict, str]:
    is_zip = fmt == "torch-zip"
    try:
        # mmap avoids a second copy of a 1.2 GB checkpoint in memory; legacy files can't be mapped.
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise UserError(f"{file}: refused: the pickle holds objects other than tensors, and loading it would run "
                        f"code ({_first_line(e).split('. ')[0]}); convert it to a plain state dict or safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile) as e:
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


def match_shapes(state: dict[str, torch.Tensor], want: dict[str, tuple]) -> ShapeMatch:
    have = shapes_of(state)
    return ShapeMatch(
        exact=have == want,
        missing=[k for k in want if k not in have],
        unexpected=[k for k in have if k not in want],
        mismatched=[(k, have[k], want[k]) for k in want if k in have and have[k] != want[k]],
    )


def describe_mismatch(m: ShapeMatch, limit: int = 5) -> str:
    parts = []
    if m.missing:
        parts.append(f"{len(m.missing)} missing (e.g. {', '.join(m.missing[:limit])})")
    if m.unexpected:
        parts.append(f"{len(m.unexpected)} unexpected (e.g. {', '.join(m.unexpected[:limit])})")
    if m.mismatched:
        parts.append(f"{len(m.mismatched)} shape mismatches (e.g. " +
                     ", ".join(f"{k}: {list(a)} vs {list(b)}" for k, a, b in m.mismatched[:limit]) + ")")
    return "; ".join(parts)


def load_into(net, ckpt: Checkpoint, what: str) -> None:
    """Strict load; a mismatch is a UserError that names `what` the network is and the first differing keys."""
    m = match_shapes(ckpt.state_dict, shapes_of(net))
    if not m.exact:
        raise UserError(f"{ckpt.path}: does not match {what}: {describe_mismatch(m, 3)}")
    net.load_state_dict(ckpt.state_dict, strict=True)


# ------------------------------------------------------------------------------------------------
# The architecture of a run: a preset, or read off the checkpoint; [model.config] over either.


@dataclass(frozen=True)
class Architecture:
    kwargs: dict      # EDMPrecond's keywords
    name: str         # the preset these keywords are, else "custom"
    what: str         # where they come from, in words ("preset 'tiny'", ...)


def preset_architecture(preset: str) -> Architecture:
    return Architecture(preset_config(preset), preset, f"preset {preset!r}")


def checkpoint_architecture(ckpt: Checkpoint) -> tuple[dict, str | None]:
    """(EDMPrecond keywords, the preset whose shapes they are or None) read off a checkpoint's shapes
    (`read_shapes` reads no more); a UserError naming the file and the key or shape it could not read
    for anything but a DhariwalUNet."""
    try:
        return infer_architecture(shapes_of(ckpt.state_dict))
    except ArchitectureError as e:
        raise UserError(f"{ckpt.path}: not a DhariwalUNet checkpoint: {e}") from None


def model_architecture(model) -> Architecture:
    """The network a `[model]` section (config.ModelConfig) or a `[[generators]]` table (config.GeneratorConfig)
    describes: model.preset's keywords, or with
    preset "auto" those read off model.checkpoint's shapes; then every key [model.config] sets."""
    if model.preset == "auto":
        if not model.checkpoint:
            raise UserError('model.preset = "auto" reads the architecture off model.checkpoint, which is not set')
        kwargs, _ = checkpoint_architecture(read_shapes(model.checkpoint))
        what = "the architecture read off its shapes"
    else:
        kwargs, what = preset_config(model.preset), f"preset {model.preset!r}"
    overrides = {k: v for k, v in dataclasses.asdict(model.config).items() if v is not None}
    if overrides:
        kwargs, what = kwargs | overrides, f"{what} with [model.config]"
    return Architecture(kwargs, preset_with_config(kwargs) or "custom", what)


@torch.no_grad()
def check_outputs(net, source: str | Path) -> None:
    """The probe every loaded generator passes before any stage uses it: one forward of two different inputs at sigma
    80 (the noise of seeds 0 and 1, the first and the last class). A network whose outputs or block activations hold
    NaN or infinity, or whose activations of some block are the same for both inputs (all-zero or constant weights:
    its features would all be one value, and the map and metrics undefined), is refused in one line naming `source`
    (its checkpoint). Milliseconds on a GPU; the full ImageNet model takes seconds on a CPU."""
    from .layers import block_names

    device = next(net.parameters()).device
    n, r = 2, net.img_resolution
    z = torch.cat([torch.randn((1, net.img_channels, r, r), generator=torch.Generator().manual_seed(seed))
                   for seed in range(n)]).to(device)
    labels = None
    if net.label_dim:
        labels = torch.zeros(n, net.label_dim, device=device)
        labels[0, 0] = labels[1, net.label_dim - 1] = 1
    blocks = block_names(net)
    with torch.no_grad():
        out, acts = net.forward_capture(80 * z, torch.full((n,), 80.0, device=device), labels, capture=tuple(blocks))
    if not bool(torch.isfinite(out).all()) or not all(bool(torch.isfinite(acts[b]).all()) for b in blocks):
        raise UserError(f"outputs of {source} are not finite (NaN or infinity at sigma 80); "
                        f"the checkpoint is damaged or was trained for another preset")
    same = next((b for b in blocks if torch.equal(acts[b][0], acts[b][1])), None)
    if same is not None:
        raise UserError(f"{source}: the network's activations do not depend on its input (block {same} is the same "
                        f"for two different noises and classes at sigma 80): all-zero or constant weights? "
                        f"Its features would all be one value; check the checkpoint")


@dataclass
class GeneratorInfo:
    preset: str
    checkpoint: str            # path as given, or "" for fresh weights
    sha256: str                # of the checkpoint file ("" when untrained)
    format: str
    untrained: bool            # random weights: every page says so


def bundled_weights(preset: str) -> Path | None:
    """Weights that ship with the package for a preset (the bundled checkpoint of its name: the demo generator),
    if present."""
    if preset not in BUNDLED_CHECKPOINTS:
        return None
    path = bundled_file(BUNDLED_CHECKPOINTS[preset])
    return path if path.is_file() else None


def load_generator(architecture: Architecture | str, checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple[torch.nn.Module, GeneratorInfo]:
    """Build an architecture (or a preset, by name) and load its weights: the given checkpoint, else the
    bundled ones of the preset it is, else random.

    Random weights (seeded) are only used when neither exists, and are reported as untrained.
    """
    arch = preset_architecture(architecture) if isinstance(architecture, str) else architecture
    torch.manual_seed(seed)  # only matters for random weights
    net = build_network(arch.kwargs)
    path = Path(checkpoint) if checkpoint else bundled_weights(arch.name)
    if path is None:
        info = GeneratorInfo(preset=arch.name, checkpoint="", sha256="", format="", untrained=True)
    else:
        ckpt = read_checkpoint(path)
        load_into(net, ckpt, arch.what)
        info = GeneratorInfo(preset=arch.name, checkpoint=str(path), sha256=sha256_file(ckpt.path),
                             format=ckpt.format, untrained=False)
    return net.eval().requires_grad_(False).to(device), info
