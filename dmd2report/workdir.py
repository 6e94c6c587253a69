"""The work directory: where every artifact of a run lives, who may write it, and how it is read back.
WorkDir is the only owner of paths under it: stages are handed one and ask it for every path.

    <workdir>/.lock                 held by the build that owns the directory (fcntl; released on exit)
    <workdir>/stages.json           the cache key each stage last finished with (pipeline.py)
    <workdir>/checksums.json        SHA-256 of checkpoints by (path, size, mtime, inode): hashing 1 GB once
    <workdir>/fingerprints/         digests of the files stages read (images, NPZ batches), by stat (integrity.py)
    <workdir>/demo_data/            the demo data's NPZ batches, written on first use (data.source = "demo")
    <workdir>/stores/<name>/        activation stores: real, gen-<variant> (store.py); with [[generators]],
                                    generators/<generator>/gen-<variant> (real is the reference encoder's)
    <workdir>/fit/                  manifest.json, <layer>.joblib, points.parquet
    <workdir>/measure/              metrics.json, arrays.npz, headline.json
    <workdir>/atlas/                atlas.npz, atlas.json
    <workdir>/trajectory/           paths/, real/ (stores), points.parquet, metrics.json

Every write goes through `files.atomic_write`; fit/, measure/ and atlas/ are each written into a
temporary sibling and swapped in whole (`replacing`), so a failed stage leaves the previous results
as they were. Readers turn a missing or damaged file into one line that names the file and the stage
to rerun; state that is only a cache (stages.json, checksums.json) is treated as stale instead, and
the stages it describes are redone. Results made from other inputs are refused the same way: the fit
records the stores it was fitted on (their config hashes) and its id; measure, atlas and trajectory
record the fit id they used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from . import files
from .errors import UserError

log = logging.getLogger(__name__)

try:  # POSIX; on other systems a work directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def generated_sets(config, generator: str = "") -> list[tuple[str, str]]:
    """(variant, store name) of every generated set of one generator, the class-conditioned set first: `gen-<variant>`,
    or `generators/<name>/gen-<variant>` for a [[generators]] table's."""
    prefix = f"generators/{generator}/" if generator else ""
    return [(v, f"{prefix}gen-{v}") for v in ["class"] + [v for v in config.generate.variants if v != "class"]]


def set_label(generator: str, variant: str) -> str:
    """A generated set's name in fit/ and measure/ results: its variant, `<generator>/<variant>` in a comparison."""
    return f"{generator}/{variant}" if generator else variant


class WorkDir:
    """One run's work directory: artifact paths, atomic writes, the lock, and checked readers."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock_file = None
        self._warned: set = set()   # damaged stages.json said once

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"

    # ------------------------------------------------------------------ layout

    def store_path(self, name: str) -> Path:
        return self.root / "stores" / name

    @property
    def fit(self) -> Path:
        return self.root / "fit"

    @property
    def measure(self) -> Path:
        return self.root / "measure"

    @property
    def atlas(self) -> Path:
        return self.root / "atlas"

    @property
    def trajectory(self) -> Path:
        return self.root / "trajectory"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo_data"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    @property
    def checksums_file(self) -> Path:
        return self.root / "checksums.json"

    @property
    def fingerprints(self) -> Path:
        return self.root / "fingerprints"

    def content(self, root: Path, names, write: bool = True, selection: str = ""):
        """integrity.Content of the files `names` (or a function listing them) under `root`, through this
        directory's fingerprint tables (integrity.content_of)."""
        from .integrity import content_of

        return content_of(self.fingerprints, root, names, write=write, selection=selection)

    # ------------------------------------------------------------------ ownership

    @contextlib.contextmanager
    def locked(self, command: str):
        """Hold the directory for one build. A second process gets one line naming the holder.

        The lock is an fcntl lock on `.lock`, so the system releases it when the holder exits,
        however it exits: a killed build never leaves the directory locked. Temporary files a
        killed run left behind are removed once the lock is held (no other run can be writing them).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        f = open(path, "a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                try:
                    h = json.loads(holder)
                    who = f"`{h['command']}` (pid {h['pid']} on {h['host']}, since {h['started']})"
                except (ValueError, KeyError, TypeError):
                    who = "another dmd2report process"
                raise UserError(f"{self.root}: in use by {who}; wait for it to finish or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        self._lock_file = f
        try:
            n = files.remove_temporaries(self.root)
            n += sum(files.remove_stale_folders(self.root / name) for name in self._temporary_folders())
            if n:
                log.info("removed %d temporary file(s) or folder(s) left by an interrupted run", n)
            yield self
        finally:
            self._lock_file = None
            f.close()

    def _temporary_folders(self) -> set[str]:
        """Names of the folders under the root with temporary siblings (`.<name>.tmp-*`, `.<name>.old-*`)."""
        names = set()
        for p in self.root.iterdir():
            m = re.fullmatch(r"\.(.+)\.(?:tmp|old)-.+", p.name)
            if m and p.is_dir():
                names.add(m.group(1))
        return names

    def replacing(self, folder: Path):
        """`with wd.replacing(wd.fit) as out:` write a stage's results into `out`; they replace `folder`
        whole when the block succeeds, and the previous results stay when it fails (files.replacing)."""
        return files.replacing(folder)

    # ------------------------------------------------------------------ caches (stale when damaged)

    def recorded(self) -> dict:
        """stages.json, or {} when missing or damaged (every stage then checks its outputs again; said once)."""
        try:
            state = json.loads(self.stages_file.read_text(encoding="utf-8"))
            if isinstance(state, dict) and all(isinstance(v, dict) for v in state.values()):
                return state
            raise ValueError("not a table of stages")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as e:
            try:
                st = self.stages_file.stat()
                seen = (st.st_size, st.st_mtime_ns)
            except OSError:
                seen = None
            if seen is None or seen not in self._warned:
                self._warned.add(seen)
                log.warning("%s: damaged (%s); treating every stage as not done", self.stages_file, e)
            return {}

    def record(self, stage: str, key: str, seconds: float, **facts) -> None:
        """A stage finished with `key`; `facts`: what else the pipeline records of it (its key's parts, the content
        it read, its results' digests)."""
        state = self.recorded()
        state[stage] = {"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "seconds": round(seconds, 2), **facts}
        files.save_json(self.stages_file, state)

    def update_record(self, stage: str, **facts) -> None:
        """Add to a finished stage's record (digests of results a version without them wrote)."""
        state = self.recorded()
        if stage in state:
            state[stage].update(facts)
            files.save_json(self.stages_file, state)

    def update_outputs(self, stage: str, entries: dict) -> None:
        """Record anew results found intact whose modification time changed (copied, touched), so that the next
        check need not read them again."""
        state = self.recorded()
        outputs = state.get(stage, {}).get("outputs")
        if isinstance(outputs, dict):
            outputs.update(entries)
            files.save_json(self.stages_file, state)

    def started(self, stage: str, key: str | None = None, content: dict | None = None) -> None:
        """Mark a stage's record unfinished while it runs: a stage that dies half-way is run again by the
        next build, which resumes its stores. The record takes the `key` and `content` it now runs with (what its
        stores on disk are being written for) and loses its results' digests (they no longer describe them)."""
        state = self.recorded()
        if stage in state:
            record = state[stage]
            for name in ("outputs", "outputs_digest", "folders"):
                record.pop(name, None)
            record.update({"unfinished": True} | ({"key": key} if key else {}) |
                          ({"content": content} if content is not None else {}))
            files.save_json(self.stages_file, state)

    def checkpoint_sha256(self, path: Path, write: bool = True) -> str:
        """SHA-256 of a checkpoint file, cached by (resolved path, size, mtime, inode) in checksums.json."""
        st = path.stat()
        key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        try:
            cache = json.loads(self.checksums_file.read_text(encoding="utf-8"))
            if not isinstance(cache, dict):
                raise ValueError("not a table")
        except FileNotFoundError:
            cache = {}
        except (OSError, UnicodeDecodeError, ValueError):
            cache = {}  # a cache: recomputed
        if not isinstance(cache.get(key), str):
            cache[key] = files.sha256_file(path)
            if write:
                files.save_json(self.checksums_file, cache)
        return cache[key]

    # ------------------------------------------------------------------ readers

    def store(self, name: str, reader: str | None = None):
        """The finished store `name` (real, gen-<variant>); `reader`, the stage reading it, is named
        when its features hold non-finite values."""
        from .store import Store

        return Store(self.store_path(name), stage="extract" if name == "real" else "generate", reader=reader)

    def fit_manifest(self) -> dict:
        """fit/manifest.json, checked: readable, and fitted on the stores that are there now."""
        path = self.fit / "manifest.json"
        m = files.read_json(path, "fit")
        if not isinstance(m, dict) or not isinstance(m.get("layers"), dict):
            raise files.damaged(path, "fit", "no table of layers")
        stores = m.get("stores")
        if stores is not None:  # fits written before stores were recorded are not checked
            if not isinstance(stores, dict):
                raise files.damaged(path, "fit", "no table of stores")
            for name, config_hash in stores.items():
                if not self.store_path(name).exists():
                    raise UserError(f"{path}: fitted on the {name} store, which is gone; rerun `dmd2report fit`")
                if self.store(name).manifest.get("config_hash") != config_hash:
                    what = "extraction" if name == "real" else f"generation ({name})"
                    raise UserError(f"{path}: fitted on another {what} than the one in {self.store_path(name)}; "
                                    f"rerun `dmd2report fit`")
        return m

    @staticmethod
    def fit_id(manifest: dict) -> str | None:
        """What a fit is, as those reading it record it: the stores, the settings and the layers fitted
        (not the pickles' bytes). None for a fit from before stores were recorded."""
        if "stores" not in manifest:
            return None
        return files.short_hash([manifest["stores"], manifest.get("headline"), manifest.get("fit_on"),
                                 {k: v.get("params") for k, v in manifest["layers"].items()}])

    def check_made_on_fit(self, recorded: str | None, path: Path, stage: str) -> None:
        """Refuse results (measure, atlas, trajectory) made on another fit than fit/ holds now."""
        current = self.fit_id(self.fit_manifest())
        if recorded is not None and current is not None and recorded != current:
            raise UserError(f"{path}: made on another fit than {self.fit / 'manifest.json'}; "
                            f"rerun `dmd2report {stage}`")

    def fitted(self, layer: str):
        """The fitted reduction (and map, for the headline layer) of `layer`; hash checked before loading."""
        from .embed import load_embedding

        manifest = self.fit_manifest()
        entry = manifest["layers"].get(layer)
        if not isinstance(entry, dict) or "file" not in entry:
            raise UserError(f"{self.fit / 'manifest.json'}: no fitted reduction for layer {layer!r}; "
                            f"rerun `dmd2report fit`")
        return load_embedding(self.fit / entry["file"], entry.get("sha256"))

    def fit_real_neighbours(self, layer: str, real_reduced):
        """The fit stage's exact k-NN of the real rows among themselves in `layer`'s reduced space
        (fit/real_knn.npz: distances, indices), when it searched exactly these rows (the same digest: same
        reduction, same arithmetic); else None, and the caller searches itself. A prefix of it is what
        `knn(real_reduced, None, k, exclude_self=True)` returns for a smaller k."""
        entry = self.fit_manifest().get("real_knn")
        if not isinstance(entry, dict) or entry.get("layer") != layer \
                or entry.get("reduced_sha256") != files.array_digest(real_reduced):
            return None
        found = files.load_npz(self.fit / str(entry.get("file")), "fit")
        if set(found) != {"dist", "idx"} or found["idx"].shape != found["dist"].shape \
                or found["idx"].ndim != 2 or len(found["idx"]) != len(real_reduced):
            raise files.damaged(self.fit / str(entry.get("file")), "fit", "not the real set's neighbour table")
        log.info("%s: real radii and neighbour lists from the fit stage's search (k = %d)", layer, found["idx"].shape[1])
        return found["dist"], found["idx"]

    def points(self):
        self.fit_manifest()
        return files.load_parquet(self.fit / "points.parquet", "fit")

    def metrics(self) -> dict:
        doc = files.read_json(self.measure / "metrics.json", "measure")
        docs = doc.get("generators", {"": doc}) if isinstance(doc, dict) else None
        if not isinstance(docs, dict) or not docs or not all(
                isinstance(d, dict) and isinstance(d.get("feature_spaces"), dict) for d in docs.values()):
            raise files.damaged(self.measure / "metrics.json", "measure", "no feature_spaces")
        return doc

    def headline(self) -> dict:
        """measure/headline.json: the headline layer and feature space, and the fit measure used
        (measure/ is written whole, so this vouches for metrics.json and arrays.npz too)."""
        path = self.measure / "headline.json"
        doc = files.read_json(path, "measure")
        if not isinstance(doc, dict) or not {"feature_space", "layer"} <= set(doc):
            raise files.damaged(path, "measure", "no feature_space and layer")
        self.check_made_on_fit(doc.get("fit"), self.measure, "measure")
        return doc

    def arrays(self) -> dict:
        return files.load_npz(self.measure / "arrays.npz", "measure")
