"""Files written atomically and read back with one-line errors: the only place that writes to disk.

A file is written to a temporary name beside its target and moved into place (`os.replace`), so a
killed run leaves either the old file or the new one, never half of one. Temporaries are named
`.<name>.<random>.tmp`; `remove_temporaries` clears those a killed run left behind. A folder that
must change as a whole (the site, fit/, measure/, atlas/) is written into a temporary sibling,
`.<name>.tmp-<pid>-<random>`, and swapped in (`replace_folder`); `remove_stale_folders` clears the
ones a killed run left. Disk full or any other OSError while writing is a one-line UserError naming
the file. Reading a file that is missing or damaged raises a `UserError` naming it and the stage
that writes it.

Every file written here is hashed once, as written (`file_digest`, read back from the temporary file
while it is still in the page cache), and noted with its size and modification time in `WRITTEN`
under its final path: the digests a stage records of its results (integrity.py) come from there
without reading the results again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import UserError, is_disk_full

TEMP_SUFFIX = ".tmp"

# The permissions a file opened normally gets (mkstemp's are 0600): read once, at import, since
# reading the umask means setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK

# What this process wrote: final path -> (size, mtime_ns, file_digest) as written. A file changed since
# (another size or time) is hashed again by whoever needs its digest (integrity.file_entry).
WRITTEN: dict[str, tuple[int, int, str]] = {}


def atomic_write(path: str | os.PathLike, write: Callable, *, sha256: bool = False, fsync: bool = False) -> str | None:
    """Write through `write(binary file)` into a temporary file beside `path`, then move it into place.

    Disk full (ENOSPC, EDQUOT) or any other OSError becomes a one-line UserError naming the file; the
    temporary file is removed and the previous file, if any, is left as it was. `sha256=True` returns
    the SHA-256 (hex) of the bytes written, read back from the temporary file before it is moved into
    place; `fsync=True` flushes them to the disk first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    digest = None
    try:
        os.fchmod(fd, FILE_MODE)
        with _open_binary(fd) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if sha256:
            digest = sha256_file(tmp)
        st = os.stat(tmp)
        written = (st.st_size, st.st_mtime_ns, file_digest(tmp))
        os.replace(tmp, path)
        WRITTEN[os.path.abspath(path)] = written
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    return digest


def _open_binary(fd: int):
    return os.fdopen(fd, "wb")


def write_error(path: str | os.PathLike, e: OSError) -> UserError:
    """The one-line error for an OSError while writing `path` (disk full said as such)."""
    if is_disk_full(e):
        return UserError(f"{path}: disk full while writing ({e.strerror or os.strerror(errno.ENOSPC)}); "
                         f"free space and rerun to resume")
    return UserError(f"{path}: cannot write ({e.strerror or e})")


def save_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def copy_file(source, path) -> None:
    """Copy a file (read whole, written atomically)."""
    with open(source, "rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


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
# Folders replaced whole: written beside their place, then swapped in.

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def new_folder(target: str | os.PathLike) -> Path:
    """An empty temporary sibling of `target` (`.<name>.tmp-<pid>-<random>`) to write the new contents into."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    except OSError as e:
        raise write_error(target, e) from None


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put folder `tmp` in the place of `target` with two renames: the old folder is moved aside
    (`.<name>.old-<pid>`) until the new one is in place, then deleted. On failure the old folder
    is put back and a UserError names the folder."""
    tmp, target = Path(tmp), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's folders are 0700
        if old.exists():
            shutil.rmtree(old)
        moved = False
        if target.exists():
            os.replace(target, old)
            moved = True
        try:
            os.replace(tmp, target)
        except OSError:
            if moved:
                os.replace(old, target)
            raise
    except OSError as e:
        raise write_error(target, e) from None
    shutil.rmtree(old, ignore_errors=True)
    _moved(tmp, target)


def _moved(old: Path, new: Path) -> None:
    """Files written into folder `old` now live under `new` (a rename keeps their size and time)."""
    prefix, into = os.path.abspath(old) + os.sep, os.path.abspath(new) + os.sep
    for path in [p for p in WRITTEN if p.startswith(prefix)]:
        WRITTEN[into + path[len(prefix):]] = WRITTEN.pop(path)


@contextlib.contextmanager
def replacing(target: str | os.PathLike):
    """`with replacing(folder) as tmp:` write the new contents into `tmp`; on success they replace
    `folder` whole, on any error `folder` is left as it was and `tmp` is removed. An OSError inside
    the block (disk full) becomes a one-line UserError naming the file."""
    target = Path(target)
    tmp = new_folder(target)
    try:
        try:
            yield tmp
        except OSError as e:
            raise write_error(str(e.filename or tmp).replace(str(tmp), str(target)), e) from None
        except UserError as e:
            # Name the file by its final place, not by the temporary folder it was written in.
            raise UserError(str(e).replace(str(tmp), str(target))) from None
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_folders(target: str | os.PathLike) -> int:
    """Delete the temporary siblings of `target` that killed runs left: `.<name>.tmp-*` and
    `.<name>.old-*` (only ours, by name), except those of a process still running."""
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(.+)")
    n = 0
    for p in target.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        # .<name>.tmp-<pid>-<random> and .<name>.old-<pid>; older versions wrote .<name>.tmp-<random>.
        pid = re.fullmatch(r"(\d+)-.+" if m.group(1) == "tmp" else r"(\d+)", m.group(2))
        if pid and int(pid.group(1)) != os.getpid() and _alive(int(pid.group(1))):
            continue
        shutil.rmtree(p, ignore_errors=True)
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
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
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


def file_digest(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """32 hex digits of BLAKE2b-128 over a file's bytes, read 1 MiB at a time: the digest of what a stage wrote
    and of the files it reads (integrity.py). About 1 GB/s on one core, twice SHA-256's speed."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, block: int = 1 << 24) -> str:
    """Full SHA-256 (hex) of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
