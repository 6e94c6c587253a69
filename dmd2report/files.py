"""Files written atomically and read back with one-line errors: the only place that writes to disk.

A file is written to a temporary name beside its target and moved into place (`os.replace`), so a
killed run leaves either the old file or the new one, never half of one. Temporaries are named
`.<name>.<random>.tmp`; `remove_temporaries` clears those a killed run left behind. Reading a file
that is missing or damaged raises a `UserError` naming it and the stage that writes it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import UserError

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Write through `write(binary file)` into a temporary file beside `path`, then move it into place.

    Disk full (ENOSPC, EDQUOT) or any other OSError becomes a one-line UserError naming the file; the
    temporary file is removed and the previous file, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with _open_binary(fd) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def _open_binary(fd: int):
    return os.fdopen(fd, "wb")


def _write_error(path: Path, e: OSError) -> UserError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{path}: disk full while writing ({e.strerror}); free space and rerun to resume")
    return UserError(f"{path}: cannot write ({e.strerror or e})")


def save_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def save_text(path, text: str) -> None:
    save_bytes(path, text.encode("utf-8"))


def json_text(obj, indent: int | None = 1) -> str:
    """Sorted keys, one value a line: stable diffs and hashes."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n"


def save_json(path, obj) -> None:
    save_text(path, json_text(obj))


def save_npy(path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def save_npz(path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def save_parquet(path, frame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def remove_temporaries(root: str | os.PathLike) -> int:
    """Delete the temporary files a killed run left under `root` (only ours: `.<name>.<random>.tmp`)."""
    n = 0
    root = Path(root)
    if root.is_dir():
        for p in root.rglob(f".*{TEMP_SUFFIX}"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Reading back.

def read_json(path: str | os.PathLike, stage: str, *, missing: str | None = None):
    """A JSON file this tool wrote. Missing: UserError(`missing` or "run the <stage> stage");
    unreadable or not JSON: UserError saying it is damaged and which stage rewrites it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {missing or f'run `dmd2report {stage}` (or `dmd2report build`)'}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise damaged(path, stage, e) from None


def damaged(path, stage: str, e: BaseException | str) -> UserError:
    """The one-line error for a file of the work directory that cannot be read."""
    why = e if isinstance(e, str) else (str(e).splitlines() or [type(e).__name__])[0][:160]
    return UserError(f"{path}: damaged ({why}); rerun `dmd2report {stage} --overwrite` "
                     f"or `dmd2report build --force {stage}`")


def load_npy(path, stage: str, mmap: bool = True) -> np.ndarray:
    """A .npy file of a store, memory-mapped; a truncated or damaged one is a UserError."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise damaged(path, stage, "file missing") from None
    except (OSError, ValueError, EOFError) as e:
        raise damaged(path, stage, e) from None


def load_npz(path, stage: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{path}: missing; run `dmd2report {stage}` (or `dmd2report build`)") from None
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise damaged(path, stage, e) from None


def load_parquet(path, stage: str):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; run `dmd2report {stage}` (or `dmd2report build`)") from None
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise damaged(path, stage, e) from None


# ---------------------------------------------------------------------------------------------
# Hashes: one short form for cache keys, one full form for files.

def short_hash(obj) -> str:
    """16 hex digits of the SHA-256 of `obj` as sorted JSON: cache keys and store keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def array_digest(a) -> str:
    """16 hex digits of the SHA-256 of an array's bytes (no copy when it is contiguous)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a))).hexdigest()[:16]


def bytes_digest(data) -> str:
    """16 hex digits of `sha256_bytes(data)`."""
    return sha256_bytes(data)[:16]


def sha256_bytes(data) -> str:
    """Full SHA-256 (hex) of bytes, or of an iterable of byte strings hashed one after another (the
    hash of their concatenation, without building it)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    for part in data:
        h.update(part)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, block: int = 1 << 24) -> str:
    """Full SHA-256 (hex) of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
