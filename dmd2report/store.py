"""The activation store: one directory per set of samples (real, or generated per variant).

    <store>/manifest.json                 config hash and key, model checksum, versions, counts (written last)
    <store>/features/<layer>/chunk_NNNNNN.npy   reduced features (n, D), float16 by default; an encoder's
                                          (a standard feature space, named as its [[encoders]] table) float32
    <store>/logits/<encoder>/chunk_NNNNNN.npy   float32 (n, C): an encoder's logits, when it has a classifier
    <store>/meta/chunk_NNNNNN.parquet     sample_id, source, seed, class_id, synset, name, variant,
                                          label_index/label_weight (the label vector's non-zeros),
                                          has_recon, has_full
    <store>/thumbs/chunk_NNNNNN.npy       uint8 (n, T, T, 3)
    <store>/recon/chunk_NNNNNN.npy        uint8 (n_recon, R, R, 3): the model's output for the real input
    <store>/full/<layer>/chunk_NNNNNN.npy float32 (n_full, C, H, W): unreduced activations for masking
    <store>/chunks/chunk_NNNNNN.json      the chunk's done marker (rows, skipped files), written last
    <store>/pca.safetensors               the real store's PCA, when features are reduced by pca:K

Chunk i holds the planned samples [i * chunk_size, (i + 1) * chunk_size) less any skipped ones.
Every file is written to a temporary name and moved into place (os.replace), and a chunk
counts as done only once its marker exists, so a killed run leaves either whole chunks or
none; a rerun with the same configuration redoes only chunks without a marker and ends with
the same bytes as an uninterrupted run (nothing written depends on time, paths or order).
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .files import damaged, load_npy, load_parquet, remove_temporaries, save_bytes, save_json, save_npy, save_parquet, short_hash

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def chunk_name(i: int) -> str:
    return f"chunk_{i:06d}"


# ---------------------------------------------------------------------------------------------
# Label vectors as their non-zeros (a one-hot over 1000 classes is one entry, not 1000).

def sparse_labels(vectors: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row of (n, K) label vectors: its non-zeros' int32 class ids and float32 weights.

    Whole-matrix operations cut at the row ends: row by row costs ~25 ms per 4096-row chunk of
    uniform labels (1000 non-zeros a row), this ~6 ms."""
    vectors = np.asarray(vectors, np.float32)
    nz = vectors != 0
    ends = np.cumsum(np.count_nonzero(nz, axis=1)).tolist()
    index = np.broadcast_to(np.arange(vectors.shape[1], dtype=np.int32), vectors.shape)[nz]  # row-major: by row, then id
    weight = vectors[nz]
    starts = [0] + ends[:-1]
    return [index[a:b] for a, b in zip(starts, ends)], [weight[a:b] for a, b in zip(starts, ends)]


def metadata_frame(sample_id, class_id, index, *, variant: str, source, seed, seed_index, label_index,
                   label_weight, has_recon=None, has_full=None, extra: dict | None = None) -> pd.DataFrame:
    """A chunk's metadata, the same columns for every store: ids and provenance, class (id, synset,
    name from `index`, a ClassIndex; -1 for none), the label vector's non-zeros, the subsets kept.
    `extra` columns ({name: values}) follow `sample_id` (the trajectory stores' path, step, sigma)."""
    class_id = np.asarray(class_id, np.int64)
    n = len(class_id)
    classes, inverse = np.unique(class_id, return_inverse=True)  # names per class, then spread: no loop per sample
    synsets = np.array([index.synset(int(c)) for c in classes], dtype=object)[inverse]
    names = np.array([index.name(int(c)) for c in classes], dtype=object)[inverse]
    columns = {"sample_id": np.asarray(sample_id, np.int64), **(extra or {}),
               "source": np.asarray(source, dtype=object).astype(str) if not isinstance(source, str) else source,
               "seed": np.broadcast_to(np.asarray(seed, np.int64), (n,)).copy(),
               "seed_index": np.broadcast_to(np.asarray(seed_index, np.int64), (n,)).copy(),
               "class_id": class_id, "synset": synsets, "name": names, "variant": variant,
               "label_index": list(label_index), "label_weight": list(label_weight),
               "has_recon": np.zeros(n, bool) if has_recon is None else np.asarray(has_recon, bool),
               "has_full": np.zeros(n, bool) if has_full is None else np.asarray(has_full, bool)}
    return pd.DataFrame(columns)


def dense_labels(frame: pd.DataFrame, num_classes: int) -> np.ndarray:
    out = np.zeros((len(frame), num_classes), np.float32)
    for row, (i, w) in enumerate(zip(frame["label_index"], frame["label_weight"])):
        out[row, np.asarray(i, np.int64)] = w
    return out


# ---------------------------------------------------------------------------------------------
# Writing.

class StoreWriter:
    """Writes the chunks of one store; `key` is everything the content depends on.

    Rank 0 prepares the directory (refusing an existing store of another configuration unless
    `overwrite`); every rank then writes its own chunks; rank 0 finishes the manifest once all
    chunks are done. Call `prepare()` on rank 0 before other ranks construct their writers.
    """

    def __init__(self, path: str | Path, key: dict, kind: str):
        self.path = Path(path)
        self.key = key
        self.kind = kind
        self.hash = short_hash(key)
        self.stage = WRITING_STAGE.get(kind, kind)

    def check(self, overwrite: bool = False) -> bool:
        """Read-only: whether the directory must be cleared; a UserError if it may not be (any rank may call it)."""
        p = self.path
        if not p.exists():
            return False
        old = None
        try:
            old = json.loads((p / MANIFEST).read_text())
        except (OSError, ValueError):
            pass
        if old is not None and old.get("config_hash") == self.hash:
            return False
        if not overwrite:
            if old is None and any(p.iterdir()):
                raise UserError(f"{p}: exists and is not a dmd2report store; remove it or use --overwrite")
            if old is not None:
                raise UserError(f"{p}: holds a store made with another configuration "
                                f"({_key_diff(old.get('key', {}), self.key)}); use --overwrite to replace it")
        return old is not None or any(p.iterdir())

    def prepare(self, overwrite: bool = False, info: dict | None = None) -> None:
        """Rank 0: clear the directory if allowed and needed, remove leftovers, write the first manifest."""
        p = self.path
        manifest = p / MANIFEST
        if self.check(overwrite):
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        remove_temporaries(p)
        if not manifest.exists():
            save_json(manifest, self._manifest("incomplete", info or {}))

    def _manifest(self, status: str, info: dict) -> dict:
        return {"format": FORMAT_VERSION, "kind": self.kind, "status": status, "config_hash": self.hash,
                "key": self.key, **info}

    def done(self, i: int) -> bool:
        """Whether chunk i is complete: its marker exists and every file it lists has the size it
        was written with (a truncated or deleted file makes the chunk be computed again)."""
        try:
            marker = json.loads((self.path / "chunks" / f"{chunk_name(i)}.json").read_text())
            sizes = marker["files"]
            return all((self.path / rel).stat().st_size == size for rel, size in sizes.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def write_chunk(self, i: int, features: dict[str, np.ndarray], meta: pd.DataFrame, thumbs: np.ndarray,
                    recon: np.ndarray | None = None, full: dict[str, np.ndarray] | None = None,
                    skipped: list[dict] | None = None, first_row: int | None = None,
                    outputs_finite: np.ndarray | None = None, logits: dict[str, np.ndarray] | None = None) -> None:
        """Write chunk i's files, then its marker. On failure none of the chunk's files remain.

        Arrays may be host copies still under way (extract.HostCopy); they are waited for here, on the
        writer thread. Features and full activations holding NaN or infinity are refused (UserError
        naming the stage, the set, the layer and the first row, counted from `first_row`, the chunk's
        first row in the planned order), as are rows whose `outputs_finite` (the model's outputs,
        one flag a row) is False; nothing of the chunk is written then."""
        name = chunk_name(i)
        row0 = i * len(meta) if first_row is None else first_row
        set_name = store_set_name(self.path, self.kind)
        for layer, a in (features | {f"{name} (logits)": a for name, a in (logits or {}).items()}).items():
            bad = first_non_finite(a)
            if bad is not None:
                raise non_finite_error(self.stage, set_name, layer, row0 + bad)
        for layer, a in (full or {}).items():
            bad = first_non_finite(a)
            if bad is not None:  # rows of the kept subset: back to the chunk's rows
                row = int(np.flatnonzero(meta["has_full"].to_numpy())[bad]) if "has_full" in meta else bad
                raise non_finite_error(self.stage, set_name, f"{layer} (full activations)", row0 + row)
        if outputs_finite is not None:
            ok = np.asarray(host_array(outputs_finite), bool)
            if not ok.all():
                raise UserError(f"{self.stage}: non-finite outputs of the model in the {set_name} set, first at row "
                                f"{row0 + int(np.argmin(ok))}; the checkpoint or the settings make it produce NaN or infinity")
        features = {layer: host_array(a) for layer, a in features.items()}
        thumbs, recon = host_array(thumbs), host_array(recon)
        full = {layer: host_array(a) for layer, a in (full or {}).items()}
        logits = {encoder: host_array(a) for encoder, a in (logits or {}).items()}
        files: list[tuple[Path, Callable]] = []
        for layer, a in features.items():
            files.append((self.path / "features" / layer / f"{name}.npy", lambda p, a=a: save_npy(p, a)))
        for encoder, a in logits.items():
            files.append((self.path / "logits" / encoder / f"{name}.npy", lambda p, a=a: save_npy(p, a)))
        files.append((self.path / "meta" / f"{name}.parquet", lambda p: save_parquet(p, meta)))
        files.append((self.path / "thumbs" / f"{name}.npy", lambda p: save_npy(p, thumbs)))
        if recon is not None:
            files.append((self.path / "recon" / f"{name}.npy", lambda p: save_npy(p, recon)))
        for layer, a in (full or {}).items():
            files.append((self.path / "full" / layer / f"{name}.npy", lambda p, a=a: save_npy(p, a)))
        marker = self.path / "chunks" / f"{name}.json"
        info = {"chunk": i, "rows": int(len(meta)), "skipped": list(skipped or []),
                "recon": 0 if recon is None else int(len(recon)),
                "full": 0 if not full else int(len(next(iter(full.values()))))}
        try:
            for p, write in files:
                write(p)
            info["files"] = {p.relative_to(self.path).as_posix(): p.stat().st_size for p, _ in files}
            save_json(marker, info)
        except BaseException:
            for p, _ in files:
                p.unlink(missing_ok=True)
            raise

    def finalize(self, n_chunks: int, info: dict) -> dict:
        """Rank 0, after every chunk is done: the manifest, from the chunk markers (so it does not
        depend on how the work was split or resumed)."""
        markers = []
        for i in range(n_chunks):
            if not self.done(i):
                raise UserError(f"{self.path}: chunk {i} is missing or damaged; rerun to complete the store")
            markers.append(json.loads((self.path / "chunks" / f"{chunk_name(i)}.json").read_text()))
        manifest = self._manifest("complete", info) | {
            "chunks": n_chunks,
            "count": sum(m["rows"] for m in markers),
            "recon_count": sum(m["recon"] for m in markers),
            "full_count": sum(m["full"] for m in markers),
            "skipped": [s for m in markers for s in m["skipped"]],
        }
        save_json(self.path / MANIFEST, manifest)
        return manifest


def _key_diff(old: dict, new: dict) -> str:
    """The first few settings that differ, derived ones (the selection's fingerprint) last."""
    diffs: list[tuple[bool, str]] = []

    def walk(a, b, prefix):
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k), b.get(k)
            if x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{k}.")
            else:
                short = lambda v: json.dumps(v, default=str)[:60]
                diffs.append((prefix.startswith("selection."), f"{prefix}{k} was {short(x)}, now {short(y)}"))

    walk(old, new, "")
    diffs.sort(key=lambda d: d[0])
    return "; ".join(d for _, d in diffs[:3]) or "an older format"


def host_array(a):
    """A numpy array (or None) from an array or from a host copy under way (extract.HostCopy: its
    `numpy()` waits for the copy to arrive)."""
    return a if a is None or isinstance(a, np.ndarray) else a.numpy()


# ---------------------------------------------------------------------------------------------
# Non-finite values: found where they are written and where they are read.

WRITING_STAGE = {"real": "extract", "generated": "generate", "trajectory": "trajectory"}


def store_set_name(path: Path, kind: str | None) -> str:
    """How a store is named in messages: real, gen-<variant>, trajectory paths, trajectory real."""
    return f"trajectory {path.name}" if kind == "trajectory" else path.name


def first_non_finite(a) -> int | None:
    """The first row of an (n, ...) array holding NaN or infinity, or None. A host copy under way
    (chunks.HostCopy) carries a flag computed on the device, so that the rows are only searched on
    the host when something is wrong."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        finite = a.all_finite()
        a = a.numpy()
        if finite is True:
            return None
    if a.dtype.kind not in "fc" or len(a) == 0:
        return None
    if finite_array(a):
        return None
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return int(np.argmax(bad))


def finite_array(a: np.ndarray, block: int = 1 << 22) -> bool:
    """Whether every value is finite, in blocks (a memory-mapped store chunk is not read whole at once)."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[s:s + block]).all() for s in range(0, len(flat), block))


def non_finite_error(stage: str, set_name: str, layer: str, row: int) -> UserError:
    return UserError(f"{stage}: non-finite values in {set_name} features of layer {layer}, first at row {row}")


class BackgroundWriter:
    """Runs `StoreWriter.write_chunk` calls on a thread so that writing overlaps compute.

    At most `depth` chunks wait in the queue (bounding memory); an error on the thread is
    raised again at the next `submit` or at `close`.
    """

    def __init__(self, writer: StoreWriter, depth: int = 2):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failed = False  # after a failure nothing more is written
        self.thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            if not self.failed:
                try:
                    self.writer.write_chunk(*job[0], **job[1])
                except BaseException as e:  # handed to the main thread
                    self.error, self.failed = e, True

    def submit(self, *args, **kwargs):
        self._raise()
        self.queue.put((args, kwargs))

    def _raise(self):
        if self.error is not None:
            e, self.error = self.error, None
            raise e

    def close(self, raise_errors: bool = True):
        self.queue.put(None)
        self.thread.join()
        if raise_errors:
            self._raise()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(raise_errors=exc_type is None)
        return False


# ---------------------------------------------------------------------------------------------
# Reading.

class Store:
    """A finished store. Arrays of every chunk are concatenated in sample order.

    `stage` is the stage that writes it, named in the one-line error for a missing or damaged file."""

    def __init__(self, path: str | Path, stage: str = "extract", reader: str | None = None):
        self.path = Path(path)
        self.stage = stage
        self.reader = reader or stage
        manifest = self.path / MANIFEST
        try:
            self.manifest = json.loads(manifest.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: no store here (no {MANIFEST}); run `dmd2report {stage}` first") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise damaged(manifest, stage, e) from None
        if not isinstance(self.manifest, dict):
            raise damaged(manifest, stage, "not a store manifest")
        if self.manifest.get("status") != "complete":
            raise UserError(f"{self.path}: the store is incomplete (interrupted run); rerun `dmd2report {stage}` to finish it")
        if not isinstance(self.manifest.get("chunks"), int) or not isinstance(self.manifest.get("layers"), (list, dict)):
            raise damaged(manifest, stage, "not a store manifest")
        self.chunks = [chunk_name(i) for i in range(self.manifest["chunks"])]

    @property
    def layers(self) -> list[str]:
        """The UNet layers whose features are stored (the encoders' are apart: `encoders`)."""
        return list(self.manifest["layers"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def _concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _arrays(self, sub: str) -> list[np.ndarray]:
        return [load_npy(self.path / sub / f"{c}.npy", self.stage) for c in self.chunks]

    def features(self, layer: str) -> np.ndarray:
        """(N, D) features of a layer: memory-mapped when the store is one chunk, else concatenated.
        NaN or infinity is a UserError naming the reading stage, the set, the layer and the first row."""
        return self._concat(list(self.iter_features(layer)))

    def iter_features(self, layer: str):
        """Memory-mapped (n, D) arrays chunk by chunk, for data larger than memory; each checked finite. `layer`: a
        UNet layer, or an encoder's name (a standard feature space)."""
        if layer not in self.manifest["layers"] and layer not in self.encoders:
            raise UserError(f"{self.path}: no features of layer {layer!r}; stored: "
                            f"{', '.join([*self.layers, *self.encoders])}")
        row = 0
        for a in self._arrays(f"features/{layer}"):
            bad = first_non_finite(a)
            if bad is not None:
                e = non_finite_error(self.reader, store_set_name(self.path, self.manifest.get("kind")), layer, row + bad)
                raise UserError(f"{e} ({self.path}); remove that store and rerun `dmd2report {self.stage}`")
            row += len(a)
            yield a

    @property
    def encoders(self) -> dict[str, dict]:
        """The standard feature spaces among the layers: {name: what the encoder is (kind, feature_dim, num_classes,
        class_order, protocol)}."""
        return dict(self.manifest.get("encoders", {}))

    def logits(self, encoder: str) -> np.ndarray:
        """(N, C) float32 logits of an encoder with a classifier, checked finite."""
        if not self.encoders.get(encoder, {}).get("num_classes"):
            raise UserError(f"{self.path}: no logits of {encoder!r} stored")
        parts = self._arrays(f"logits/{encoder}")
        for row, a in zip(np.cumsum([0] + [len(a) for a in parts]), parts):
            bad = first_non_finite(a)
            if bad is not None:
                e = non_finite_error(self.reader, store_set_name(self.path, self.manifest.get("kind")),
                                     f"{encoder} (logits)", int(row) + bad)
                raise UserError(f"{e} ({self.path}); remove that store and rerun `dmd2report {self.stage}`")
        return self._concat(parts)

    def metadata(self) -> pd.DataFrame:
        frames = [load_parquet(self.path / "meta" / f"{c}.parquet", self.stage) for c in self.chunks]
        return pd.concat(frames, ignore_index=True) if len(frames) != 1 else frames[0]

    def label_vectors(self, num_classes: int | None = None) -> np.ndarray:
        return dense_labels(self.metadata(), num_classes or int(self.manifest["num_classes"]))

    def thumbnails(self) -> np.ndarray:
        return self._concat(self._arrays("thumbs"))

    def thumbnail_chunks(self) -> list[np.ndarray]:
        """The thumbnails chunk by chunk, memory-mapped (the report reads only the rows it shows)."""
        return self._arrays("thumbs")

    def reconstructions(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample_ids, uint8 (n, R, R, 3)) of the samples whose reconstruction was kept."""
        meta = self.metadata()
        return meta["sample_id"].to_numpy()[meta["has_recon"].to_numpy()], self._concat(self._arrays("recon"))

    def full_activations(self, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sample_ids, float32 (n, C, H, W)) of the masking layer for the samples that kept them."""
        layer = layer or self.manifest.get("full_layer")
        if not layer or layer != self.manifest.get("full_layer"):
            raise UserError(f"{self.path}: full activations are stored for {self.manifest.get('full_layer')!r} only, not {layer!r}")
        meta = self.metadata()
        return meta["sample_id"].to_numpy()[meta["has_full"].to_numpy()], self._concat(self._arrays(f"full/{layer}"))

    def pca(self) -> dict | None:
        """{layer: {"mean", "components", "explained_variance"}} (torch tensors), or None."""
        return load_pca(self.path / "pca.safetensors") if (self.path / "pca.safetensors").exists() else None


def load_pca(path: Path) -> dict:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    out: dict[str, dict] = {}
    for k, v in flat.items():
        layer, what = k.rsplit(".", 1)
        out.setdefault(layer, {})[what] = v
    return out


def save_pca(path: Path, pca: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    flat = {f"{layer}.{what}": t.detach().cpu().contiguous() for layer, d in pca.items() for what, t in d.items()}
    # One metadata entry: safetensors writes several in hash order, which would differ from run to run.
    data = save(flat, metadata={"dmd2report": json.dumps(metadata, sort_keys=True)})
    save_bytes(path, data)
