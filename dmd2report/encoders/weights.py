"""Reading a pretrained encoder's weight file safely: a state dict of tensors, never an unpickled object.

The format is told by the file's first bytes, not its name: safetensors (an 8-byte little-endian header length,
then JSON) is read with safetensors; a PyTorch zip archive or legacy pickle (`.pth`, `.pt`, `.bin`) with
`torch.load(weights_only=True)`, so a file that holds anything but tensors and plain containers is refused and
the user is told how to convert it. A state dict wrapped under one common key ("state_dict", "model", "teacher"
...) is unwrapped only when the top level is not itself a state dict; a `module.` prefix on every key (DDP) is
stripped. Every failure is a `UserError` of one line that starts with the file's path: missing, unreadable,
truncated, not a state dict, a tensor holding NaN or infinity, and (in `check_state_dict`) the first missing,
unexpected or misshapen key, with a "wrong kind" hint when the keys are recognisably another network's.
"""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import torch

from ..checkpoint import checkpoint_format
from ..errors import UserError

WRAPPER_KEYS = ("state_dict", "model", "teacher", "model_ema", "ema", "module", "net", "params")
DINOV2_SIZES = {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}


def convert_command(path: Path) -> str:
    """How to rewrite a pickle the user trusts as safetensors: their own decision to unpickle it, never ours."""
    out = path.with_suffix(".safetensors")
    return (f"only if you trust the file, load it yourself with torch.load and weights_only=False and save its "
            f"tensors with safetensors.torch.save_file as {out}")


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in `path` (on the CPU), `what` naming the expected network in messages ("FID Inception-v3
    weights"); a one-line UserError starting with the path for anything else."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the {what} file itself")
    fmt = checkpoint_format(path)
    if fmt is None:
        raise UserError(f"{path}: not a weights file (neither safetensors nor PyTorch; empty or damaged?); "
                        f"expected {what}")
    state = _read_safetensors(path) if fmt == "safetensors" else _read_torch(path, fmt)
    state = _unwrap(state, path, what)
    for k, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise UserError(f"{path}: tensor {k!r} holds NaN or infinity; the {what} file is damaged")
    return state


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a readable safetensors file, truncated or damaged ({_first_line(e)})") from None


def _read_torch(path: Path, fmt: str) -> dict:
    try:
        # mmap: a 4.5 GB DINOv2 ViT-g file is not copied into memory twice (a legacy file cannot be mapped)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as e:
        name = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if "weights only" not in str(e).lower():
            raise UserError(f"{path}: cannot read: truncated or damaged PyTorch file ({_first_line(e)})") from None
        if name and _cut_torch_name(name.group(1)):
            raise UserError(f"{path}: cannot read: truncated or damaged PyTorch file (the pickle names "
                            f"{name.group(1)}, which torch does not have)") from None
        found = f" ({name.group(1)})" if name else ""
        raise UserError(f"{path}: refused: holds objects other than tensors{found}, which only full unpickling "
                        f"(running code from the file) could read; if you trust it, convert it to safetensors: "
                        f"{convert_command(path)}") from None
    except Exception as e:  # noqa: BLE001 -- a damaged file makes torch's reader fail in many ways (struct.error...)
        raise UserError(f"{path}: cannot read: truncated or damaged PyTorch file ({_first_line(e)})") from None


def _cut_torch_name(name: str) -> bool:
    """Whether an unsupported global is a torch name that does not exist: a legacy file cut inside its pickle
    ("torch._utils._rebuild_tens"), i.e. damage rather than unsafe content. Only torch's own names are looked
    up (importing a module the file names could run that module's code)."""
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] != "torch":
        return False
    try:
        return not hasattr(importlib.import_module(module), attr)
    except ImportError:
        return True


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(state, path: Path, what: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and not _is_state_dict(state):
        inner = [k for k in WRAPPER_KEYS if _is_state_dict(state.get(k))]
        if inner:
            state = state[inner[0]]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: does not hold a state dict (found {type(state).__name__}); expected {what}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: not a state dict of tensors: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}; "
                        f"expected {what}")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _first_line(e: Exception) -> str:
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


# ------------------------------------------------------------------------------------------------
# Strict key and shape check, with a hint when the file is another kind of network.

def guess_kind(shapes: dict[str, tuple]) -> str | None:
    """What network a state dict's keys look like (a few well-known layouts), None when unknown."""
    keys = set(shapes)
    if "Mixed_7c.branch_pool.conv.weight" in keys or "Conv2d_1a_3x3.conv.weight" in keys:
        fc = shapes.get("fc.weight")
        return "an Inception-v3" + (f" with {fc[0]} classes" if fc else "")
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        dim = shapes["cls_token"][-1]
        patch = shapes["patch_embed.proj.weight"][-1]
        if patch == 14 and dim in DINOV2_SIZES:
            return f"a DINOv2 {DINOV2_SIZES[dim]} backbone"
        return f"a ViT (width {dim}, patch {patch})"
    if keys == {"weight", "bias"} and len(shapes["weight"]) == 2:
        return f"a linear classification head ({shapes['weight'][1]} -> {shapes['weight'][0]})"
    if any(k.startswith(("model.enc.", "model.dec.", "model.map_")) for k in keys):
        return "a DMD2/EDM generator (EDMPrecond)"
    return None


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, tuple], path: Path, what: str) -> None:
    """Exactly the keys and shapes of `expected` (key -> shape), or a one-line UserError naming the first
    difference, and the kind the file looks like when it is recognisably another network."""
    have = {k: tuple(v.shape) for k, v in sd.items()}
    want = {k: tuple(s) for k, s in expected.items()}
    if have == want:
        return
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing:
        diff = (f"{len(missing)} key(s) missing, the first {missing[0]!r}"
                + (f"; {len(unexpected)} unexpected, the first {unexpected[0]!r}" if unexpected else ""))
    elif unexpected:
        diff = f"{len(unexpected)} unexpected key(s), the first {unexpected[0]!r}"
    else:
        k = next(k for k in want if have[k] != want[k])
        diff = f"tensor {k!r} has shape {list(have[k])}, expected {list(want[k])}"
    got, wanted = guess_kind(have), guess_kind(want)
    if got is not None and got != wanted:
        raise UserError(f"{path}: holds {got}, not {what} (wrong kind of weights file?): {diff}")
    raise UserError(f"{path}: does not match {what}: {diff}")
