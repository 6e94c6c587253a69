"""Content, not names: the fingerprints of the files a stage reads and the digests of the files it wrote.

Inputs. `content_of` gives the content digest of a set of files (the real images, NPZ batches, reference
statistics) through a fingerprint table in the work directory, `fingerprints/<root>.npz`: for every file its
path, size, modification time, inode and BLAKE2b-128 digest (files.file_digest). Only files whose
(size, mtime_ns, inode) changed since the table was written are read again, and a source's listing of its files
is reused while the settings that select them and the folders holding them are unchanged, so a build with nothing
changed costs one stat a file (1.28M folder images: about 5 CPU seconds, benchmarks/fingerprint.py). The table is
written whole (atomically) when something changed; it is a cache: a damaged one is rebuilt by hashing. What
changed since the table was last written (`Content.changes`) is what the pipeline's log names when a stage reruns.

Outputs. A stage's results are recorded in stages.json as {path: [size, mtime_ns, digest]} (`outputs_of`, the
digests as files.py computed them while writing). Before a stage's results are used (by a later stage, render,
compare) `check` compares each file's size and modification time with the record and hashes only a file whose
stat differs (a copied work directory keeps both; a hand edit changes the time); `dmd2report verify` hashes
every file (`--quick`: by stat too). A file that is missing, changed, or that the stage did not write is one line naming the file and the
command that rewrites it (files.damaged).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .errors import UserError

_SKIPPED = (files.TEMP_SUFFIX,)
SITE_MANIFEST = ".dmd2report-manifest.json"   # in a rendered site: every other file's digest (report/render.py)


# ---------------------------------------------------------------------------------------------
# Inputs: content fingerprints, re-hashing only what changed.

@dataclass(frozen=True)
class Content:
    """The content digest of a set of files, and what changed in it since it was last looked at (for the log)."""

    digest: str
    changes: tuple[str, ...] = ()     # the first few changes, e.g. "data/cat/0003.png changed (content)"
    n_changes: int = 0

    def change(self) -> str:
        """The changes in a few words: the first, and how many more."""
        more = self.n_changes - 1
        return self.changes[0] + (f" and {more} more file(s)" if more > 0 else "") if self.changes else ""


def _stats(root: Path, names: list[str]) -> np.ndarray:
    """(size, mtime_ns, inode) of every file, int64 (n, 3)."""
    stat, prefix = os.stat, f"{root}{os.sep}"
    try:
        found = [stat(prefix + name) for name in names]
    except OSError as e:
        raise UserError(f"{e.filename}: cannot read ({e.strerror})") from None
    return np.array([(s.st_size, s.st_mtime_ns, s.st_ino) for s in found], np.int64).reshape(-1, 3)


def _hash_files(root: Path, names: list[str]) -> list[str]:
    """file_digest of each file, several at a time (hashlib releases the GIL; reading waits on the disk)."""
    def one(name):
        try:
            return files.file_digest(os.path.join(root, name))
        except OSError as e:
            raise UserError(f"{e.filename}: cannot read ({e.strerror})") from None

    if len(names) < 8:
        return [one(n) for n in names]
    with concurrent.futures.ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(one, names))


def _load_table(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            t = {k: z[k] for k in ("names", "stats", "digests", "selection", "dirs", "dir_stats", "written")}
        if t["stats"].shape != (len(t["digests"]), 3) or t["digests"].shape[1:] != (16,):
            return None
        return t
    except Exception:  # a cache: a damaged table is rebuilt by hashing
        return None


def _names(table: dict) -> list[str]:
    return table["names"].tobytes().decode().split("\n") if len(table["names"]) else []


def _dir_stats(root: Path, dirs: list[str]) -> np.ndarray | None:
    try:
        return np.array([(s.st_mtime_ns, s.st_ino) for s in (os.stat(os.path.join(root, d)) for d in dirs)],
                        np.int64).reshape(-1, 2)
    except OSError:
        return None


def content_of(table_dir: Path, root: str | os.PathLike, names, write: bool = True, selection: str = "") -> Content:
    """The content digest of the files `names` (paths relative to `root`, in a fixed order) with what changed
    since the table of `root` in `table_dir` was written; files whose stat is unchanged are not read.

    `names` may be a function listing them (a source's selection, which costs a scan of every folder): it is not
    called when the table was written for the same `selection` (the settings that choose the files) and no folder
    holding them changed (a file added, removed or renamed changes its folder's modification time)."""
    root = Path(root)
    table_path = Path(table_dir) / f"{files.short_hash(os.path.abspath(root))}.npz"
    old = _load_table(table_path)
    if callable(names):
        reuse = old is not None and old["selection"].tobytes() == selection.encode()
        if reuse:
            dirs = old["dirs"].tobytes().decode().split("\n")
            now = _dir_stats(root, dirs)
            # A folder changed within a second of the listing may change again within its time's resolution.
            reuse = now is not None and np.array_equal(now, old["dir_stats"]) \
                and bool((now[:, 0] < int(old["written"]) - 10**9).all())
        names = _names(old) if reuse else names()
    blob = "\n".join(names).encode()
    stats = _stats(root, names)
    digests = np.zeros((len(names), 16), np.uint8)
    if old is not None and old["names"].tobytes() == blob:
        old_index = np.arange(len(names))
    elif old is not None:
        import pandas as pd

        index = pd.Index(_names(old))
        old_index = index.get_indexer(names) if index.is_unique else np.full(len(names), -1)
    else:
        old_index = np.full(len(names), -1)
    known = old_index >= 0
    same = known.copy()
    if old is not None:
        same[known] = (old["stats"][old_index[known]] == stats[known]).all(axis=1)
        digests[same] = old["digests"][old_index[same]]
    stale = np.flatnonzero(~same)
    if len(stale):
        fresh = _hash_files(root, [names[i] for i in stale])
        digests[stale] = np.frombuffer(b"".join(bytes.fromhex(d) for d in fresh), np.uint8).reshape(-1, 16)
    changes, n = [], 0
    if old is not None:   # what changed since the table was written (a first look has nothing to compare)
        changed = stale[known[stale]]
        changed = changed[(digests[changed] != old["digests"][old_index[changed]]).any(axis=1)]
        added = stale[~known[stale]]
        gone = sorted(set(_names(old)) - set(names)) if old["names"].tobytes() != blob else []
        n = len(changed) + len(added) + len(gone)
        changes = ([f"{root / names[i]} changed (content)" for i in changed[:3]] +
                   [f"{root / names[i]} added" for i in added[:3]] + [f"{root / g} removed" for g in gone[:3]])
    if write and (len(stale) or old is None or old["names"].tobytes() != blob
                  or old["selection"].tobytes() != selection.encode()):
        dirs = [""] + sorted({n.rpartition("/")[0] for n in names} - {""})
        dir_stats, written = _dir_stats(root, dirs), time.time_ns()
        files.save_npz(table_path, names=np.frombuffer(blob, np.uint8), stats=stats, digests=digests,
                       selection=np.frombuffer(selection.encode(), np.uint8),
                       dirs=np.frombuffer("\n".join(dirs).encode(), np.uint8),
                       dir_stats=np.zeros((0, 2), np.int64) if dir_stats is None else dir_stats,
                       written=np.int64(written))
    h = hashlib.blake2b(blob, digest_size=16)
    h.update(digests.tobytes())
    return Content(h.hexdigest(), tuple(changes), n)


# ---------------------------------------------------------------------------------------------
# Outputs: the digests a stage records of what it wrote, checked before anything reads them.

def _files_under(root: Path, folders: list[Path]) -> list[str]:
    """The files under `folders` (temporaries left out) as paths from `root`, sorted: one walk, no per-file stat."""
    out = []
    for folder in map(Path, folders):
        base = relative(root, folder)
        if folder.is_file():
            out.append(base)
            continue
        for dirpath, _, filenames in os.walk(folder):
            sub = os.path.relpath(dirpath, folder).replace(os.sep, "/")
            prefix = "/".join(p for p in (base, sub) if p != ".")
            out += [f"{prefix}/{f}" if prefix else f for f in filenames if not f.endswith(_SKIPPED)]
    return sorted(out)


def place(root: Path, rel: str) -> Path:
    """Where a result recorded as `rel` lies (normalised: the site's `../site/index.html` is `site/index.html`)."""
    return Path(os.path.normpath(Path(root) / rel))


def relative(root: Path, path: Path) -> str:
    """A result's name in stages.json: its path from the work directory (the site may lie outside it)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def file_entry(path: Path, previous: list | None = None) -> list:
    """[size, mtime_ns, digest] of a file: the digest files.py computed when it wrote it, or `previous`'s when
    the stat is the recorded one, else read again."""
    st = os.stat(path)
    for known in (files.WRITTEN.get(os.path.abspath(path)), previous):
        if known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return [st.st_size, st.st_mtime_ns, known[2]]
    return [st.st_size, st.st_mtime_ns, files.file_digest(path)]


def outputs_of(root: Path, folders: list[Path], previous: dict | None = None) -> dict[str, list]:
    """{path from `root`: [size, mtime_ns, digest]} of every file under `folders` (temporaries left out)."""
    previous = previous or {}
    return {rel: file_entry(place(root, rel), previous.get(rel)) for rel in _files_under(root, folders)}


def outputs_digest(entries: dict[str, list] | None) -> str | None:
    """One digest of a stage's results (the paths and their digests): what the stages after it are keyed on."""
    return None if entries is None else files.short_hash({rel: e[2] for rel, e in entries.items()})


PROBLEMS = {"missing": "missing since {stage} wrote it", "changed": "changed since {stage} wrote it: digest mismatch",
            "extra": "not written by {stage}"}


def problem(root: Path, rel: str, why: str, stage: str, more: int = 0) -> UserError:
    """The one line for a damaged result: the file, what is wrong (and how many other files are), the commands that
    rewrite it."""
    return files.damaged(place(root, rel), stage, PROBLEMS[why].format(stage=stage) +
                         (f"; {more} more of its files too" if more else ""))


def check(root: Path, entries: dict[str, list], folders: list[Path],
          full: bool = False) -> list[tuple[str, str, list | None]]:
    """The problems of a stage's results against its record: (path, why, the entry to record when the file is
    intact but was touched), `why` one of PROBLEMS or "" (touched), for each file missing, changed, or not written
    by the stage. A file whose size and modification time are the recorded ones is intact unless `full` (then
    every file is hashed)."""
    problems = []
    present = set(_files_under(root, folders))
    for rel, (size, mtime, digest) in entries.items():
        path = place(root, rel)
        try:
            st = os.stat(path)
        except OSError:
            problems.append((rel, "missing", None))
            continue
        if not full and st.st_size == size and st.st_mtime_ns == mtime:
            continue
        if st.st_size == size and files.file_digest(path) == digest:
            if st.st_mtime_ns != mtime:
                problems.append((rel, "", [size, st.st_mtime_ns, digest]))   # touched, intact: record its time
            continue
        problems.append((rel, "changed", None))
    problems += [(rel, "extra", None) for rel in sorted(present - set(entries))]
    return sorted(problems, key=lambda p: -_mtime(Path(root) / p[0]))   # the latest change first: what was just done


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# `dmd2report verify`: a work directory and a site checked without running anything.

def site_manifest(site: Path) -> dict:
    """What a rendered site records of itself: every file but the manifest, with its digest."""
    entries = outputs_of(site, [site])
    entries.pop(SITE_MANIFEST, None)
    return {"format": 1, "files": entries}


def verify_site(site: Path, full: bool = True) -> list[str]:
    """One line per problem of a rendered site against its manifest; [] when intact."""
    site = Path(site)
    manifest = site / SITE_MANIFEST
    repair = "rerun `dmd2report render`"
    if not site.is_dir():
        return [f"{site}: no such folder"]
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        entries = doc["files"]
        if not isinstance(entries, dict):
            raise ValueError("no table of files")
    except FileNotFoundError:
        return [f"{manifest}: missing (not a site rendered by this version of dmd2report); {repair}"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        return [f"{manifest}: damaged ({e}); {repair}"]
    return [f"{site / rel}: {PROBLEMS[why].format(stage='render')}; {repair}"
            for rel, why, _ in check(site, entries, [site], full) if why and rel != SITE_MANIFEST]


def verify_workdir(root: Path, full: bool = True) -> list[str]:
    """One line per problem of a work directory: every finished stage's results (its recorded `folders`) against
    their digests."""
    root = Path(root)
    path = root / "stages.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise ValueError("not a table of stages")
    except FileNotFoundError:
        return [f"{path}: missing (nothing built in {root}); run `dmd2report build`"]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [f"{path}: damaged ({e}); run `dmd2report build`"]
    lines = []
    for stage, record in state.items():
        if record.get("unfinished"):
            lines.append(f"{root}: {stage} did not finish; run `dmd2report build`")
            continue
        entries = record.get("outputs")
        if not isinstance(entries, dict):
            lines.append(f"{root}: {stage}'s results have no digests (built by an older dmd2report); "
                         f"rerun `dmd2report build --force {stage}` to record them")
            continue
        folders = [root / f for f in record.get("folders", [])]
        lines += [str(problem(root, rel, why, stage)) for rel, why, _ in check(root, entries, folders, full) if why]
    return lines


def check_result(path: Path, stage: str) -> None:
    """Before a result is read outside a build (compare's metrics.json): when it lies in a work directory that
    recorded it, check it against its digest (by stat) and refuse a damaged or edited one in one line."""
    path = Path(path)
    root = path.parent.parent
    try:
        state = json.loads((root / "stages.json").read_text(encoding="utf-8"))
        entry = state[stage]["outputs"][relative(root, path)]
    except (OSError, ValueError, KeyError, TypeError):
        return   # not a result of a work directory that records digests
    for rel, why, _ in check(root, {relative(root, path): entry}, []):
        if why:
            raise problem(root, rel, why, stage)
