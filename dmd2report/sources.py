"""Real images: ImageNet64 NPZ batches, a tree of class folders, or the demo data.

A source first plans which samples it will deliver (`RealSource.samples`: sample id, a
readable source reference, class id), then delivers them a range at a time as uint8 CHW
images at the model's resolution (`RealSource.load`). Planning reads only labels and file
names, so a bad file is reported before any work is done where that is possible.

Selection (`select_samples`) is class-balanced and seeded: each class's candidates are put in
a random order drawn from (seed, class id); `per_class` keeps the first N of each; `max_samples`
then takes candidates rank by rank across the classes (every class's first, then every class's
second, ...). The chosen samples are delivered in file order so that reading streams, and
sample id i is the i-th of them.

Resizing (folder images, and NPZ images of another resolution than the model's): a centred
square crop of the shorter side, then PIL's BOX filter when shrinking (the area average
ImageNet64 itself was made with) or BICUBIC when enlarging.

Decoding (folder images, `to_rgb`): every image becomes 8-bit RGB as the loaders that FID and ImageNet pipelines
use make it (`Image.convert("RGB")`: torchvision's ImageFolder, EDM's dataset_tool, clean-fid), except where that
is wrong: 16-bit samples are scaled to 8 bits (the top byte, value >> 8; PIL's own conversion clips a 16-bit
grayscale PNG to white). Grayscale is repeated into R, G and B; palette colours are expanded; CMYK is converted by
PIL's formula; an alpha channel is dropped, keeping the stored colour (no compositing on white or black: what those
loaders feed a network). Each such conversion is counted by kind (`CONVERSIONS`), in the log and the report.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import DATASET_INDEX_NAME, ClassIndex, dataset_classes
from .errors import UserError
from .files import replacing, save_text, sha256_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# What decoding did to an image that was not 8-bit RGB, by kind: the log's and the report's words (module docstring).
CONVERSIONS = {
    "16-bit": "16-bit samples scaled to 8 bits (value >> 8)",
    "grayscale": "grayscale repeated into R, G and B",
    "palette": "palette colours expanded to RGB",
    "CMYK": "CMYK converted to RGB",
    "alpha": "alpha channel dropped, the stored colour kept (as convert('RGB') in torchvision's and EDM's loaders)",
}
_DEMO_MARKER = "demo_data.json"  # how the demo data in <workdir>/demo_data was written


@dataclass
class Loaded:
    """Samples [start, stop) of a source. `images` holds only the kept ones (`kept` is a mask over the range)."""

    start: int
    stop: int
    images: np.ndarray                    # uint8 (n_kept, 3, R, R)
    kept: np.ndarray                      # bool (stop - start,)
    skipped: list[dict] = field(default_factory=list)  # {"source": ..., "error": ...} per unreadable image
    converted: dict[str, int] = field(default_factory=dict)  # kept images decoding converted, by CONVERSIONS kind


def select_samples(class_ids: np.ndarray, wanted: list[int] | None, per_class: int, max_samples: int,
                   seed: int) -> np.ndarray:
    """Indices (ascending) of the candidates chosen; see the module docstring for the rule."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    # One stable sort puts each class's candidates together in ascending order (uint16 ids: a radix
    # sort); a scan of every candidate per class cost ~0.5 s over ImageNet64's 1.28M images x 1000 classes.
    small = len(class_ids) > 0 and class_ids.min() >= 0 and class_ids.max() < 2**16
    by_class = np.argsort(class_ids.astype(np.uint16) if small else class_ids, kind="stable")
    sorted_ids = class_ids[by_class]
    classes = list(wanted) if wanted else np.unique(sorted_ids).tolist()
    starts, ends = np.searchsorted(sorted_ids, classes, "left"), np.searchsorted(sorted_ids, classes, "right")
    rank = np.full(len(class_ids), -1, dtype=np.int64)
    position = np.zeros(len(class_ids), dtype=np.int64)
    for pos, c in enumerate(classes):
        members = by_class[starts[pos]:ends[pos]]
        order = np.random.default_rng([int(seed), int(c)]).permutation(len(members))
        rank[members[order]] = np.arange(len(members))
        position[members] = pos
    chosen = np.flatnonzero(rank >= 0)
    if per_class > 0:
        chosen = chosen[rank[chosen] < per_class]
    if max_samples > 0 and len(chosen) > max_samples:
        # Only ranks up to the first at which max_samples are reached can be taken: sort just those.
        last = np.searchsorted(np.cumsum(np.bincount(rank[chosen])), max_samples)
        chosen = chosen[rank[chosen] <= last]
        by_rank = chosen[np.lexsort((position[chosen], rank[chosen]))]
        chosen = np.sort(by_rank[:max_samples])
    return chosen


def resize_square(image, resolution: int):
    """PIL image -> centred square crop resized to resolution x resolution RGB (see module docstring)."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    if side == resolution and (w, h) == (side, side):
        return image
    flt = Image.Resampling.BOX if side >= resolution else Image.Resampling.BICUBIC
    return image.resize((resolution, resolution), flt, box=box)


def to_rgb(image, wide: bool = False):
    """A decoded PIL image -> (8-bit RGB PIL image, the CONVERSIONS kinds applied). `wide`: the file stores 16 bits
    a sample (PIL reads 16-bit RGB and RGBA PNGs as 8-bit modes by their top byte, and 16-bit grayscale as I;16)."""
    from PIL import Image

    mode, kinds = image.mode, []
    if wide or mode.startswith("I"):
        kinds.append("16-bit")
    if mode.startswith("I"):  # 16-bit grayscale: the top byte, not PIL's clip at 255 (a white image)
        top = (np.clip(np.asarray(image), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        image, mode = Image.fromarray(top, "L"), "L"
    if mode in ("L", "LA", "La", "1"):
        kinds.append("grayscale")
    elif mode in ("P", "PA"):
        kinds.append("palette")
    elif mode == "CMYK":
        kinds.append("CMYK")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        kinds.append("alpha")
    return (image if mode == "RGB" else image.convert("RGB")), tuple(kinds)


class RealSource:
    """Base: `samples` (DataFrame sample_id, source, class_id), `class_index`, `load(start, stop)`."""

    kind = ""

    def __init__(self, root: Path, class_index: ClassIndex, resolution: int, workers: int):
        self.root = root
        self.class_index = class_index
        self.resolution = resolution
        self.workers = max(1, int(workers))
        self.samples = pd.DataFrame({"sample_id": np.zeros(0, np.int64), "source": [], "class_id": np.zeros(0, np.int64)})

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> dict:
        """What identifies the planned samples (part of a store's configuration key)."""
        lines = (f"{s}\t{c}\n".encode() for s, c in zip(self.samples["source"], self.samples["class_id"]))
        return {"kind": self.kind, "count": len(self.samples), "samples_sha256": sha256_bytes(lines),
                "classes": len(self.class_index)}

    def load(self, start: int, stop: int) -> Loaded:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------------------------
# ImageNet64 NPZ batches.

def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _npz_error(path: Path, e: BaseException) -> UserError:
    return UserError(f"{path}: not a readable NPZ file, truncated or corrupt? ({type(e).__name__}: {e})")


_NPZ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zipfile.LargeZipFile)


def _npz_data_header(path: Path) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the `data` member, read from its .npy header only."""
    with zipfile.ZipFile(path) as zf:
        if "data.npy" not in zf.namelist():
            raise UserError(f"{path}: no 'data' array (holds {', '.join(n[:-4] for n in zf.namelist()) or 'nothing'})")
        with zf.open("data.npy") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
    return shape, dtype


class NpzSource(RealSource):
    """A directory of ImageNet64-style NPZ batches (every `*.npz` in it, in natural name order).

    Each file holds `data`, uint8 (N, 3*r*r) channel-planar, and `labels`, 1..K. Only one file's
    `data` is held in memory at a time.
    """

    kind = "imagenet64-npz"

    def __init__(self, root, resolution: int, classes: list[str] | None = None, per_class: int = 0,
                 max_samples: int = 0, seed: int = 0, workers: int = 2):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: data directory not found" if not root.exists() else f"{root}: not a directory")
        self.files = sorted(root.glob("*.npz"), key=_natural_key)
        if not self.files:
            raise UserError(f"{root}: no NPZ files (expected ImageNet64 batches such as train_data_batch_1.npz, val_data.npz)")
        index, label_map = dataset_classes(root)
        super().__init__(root, index, resolution, workers)
        K = len(index)
        file_of, row_of, class_of = [], [], []
        self.image_side = None
        for fi, path in enumerate(self.files):
            try:
                shape, dtype = _npz_data_header(path)
                with np.load(path, allow_pickle=False) as z:
                    if "labels" not in z.files:
                        raise UserError(f"{path}: no 'labels' array")
                    labels = np.asarray(z["labels"])
            except UserError:
                raise
            except _NPZ_ERRORS as e:
                raise _npz_error(path, e) from None
            side = math.isqrt(shape[1] // 3) if len(shape) == 2 else 0
            if len(shape) != 2 or dtype != np.uint8 or shape[1] != 3 * side * side or side == 0:
                raise UserError(f"{path}: 'data' is {np.dtype(dtype).name} {shape}; expected uint8 (N, 3*R*R), "
                                f"e.g. (N, {3 * resolution * resolution}) for {resolution}x{resolution} images")
            if self.image_side not in (None, side):
                raise UserError(f"{path}: images are {side}x{side} but {self.files[0].name} holds {self.image_side}x{self.image_side}")
            self.image_side = side
            labels = labels.reshape(-1)
            if labels.shape[0] != shape[0] or not np.issubdtype(labels.dtype, np.integer):
                raise UserError(f"{path}: 'labels' is {labels.dtype} {labels.shape}; expected {shape[0]} integers")
            bad = np.flatnonzero((labels < 1) | (labels > K))
            if len(bad):
                raise UserError(f"{path}: label {int(labels[bad[0]])} at row {int(bad[0])} is outside 1..{K} "
                                f"({len(bad)} such rows; class index {index.origin})")
            file_of.append(np.full(len(labels), fi, np.int32))
            row_of.append(np.arange(len(labels), dtype=np.int64))
            class_of.append(label_map[labels.astype(np.int64)])
        file_of, row_of, class_of = (np.concatenate(a) for a in (file_of, row_of, class_of))
        wanted = index.resolve(classes) if classes else None
        chosen = select_samples(class_of, wanted, per_class, max_samples, seed)
        self._file, self._row = file_of[chosen], row_of[chosen]
        names = [p.name for p in self.files]
        self.samples = pd.DataFrame({
            "sample_id": np.arange(len(chosen), dtype=np.int64),
            "source": [f"{names[f]}#{r}" for f, r in zip(self._file, self._row)],
            "class_id": class_of[chosen].astype(np.int64),
        })
        self._cached: tuple[int, np.ndarray] | None = None

    def _data(self, fi: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != fi:
            self._cached = None  # drop the previous file before reading the next
            path = self.files[fi]
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._cached = (fi, z["data"])
            except _NPZ_ERRORS as e:
                raise _npz_error(path, e) from None
        return self._cached[1]

    def load(self, start: int, stop: int) -> Loaded:
        files, rows = self._file[start:stop], self._row[start:stop]
        side, R = self.image_side, self.resolution
        out = np.empty((len(rows), 3, side, side), np.uint8)
        for fi in np.unique(files):  # rows are in file order, so each file is read once per range
            sel = files == fi
            out[sel] = self._data(int(fi))[rows[sel]].reshape(-1, 3, side, side)
        if side != R:
            out = _resize_batch(out, R, self.workers)
        return Loaded(start, stop, out, np.ones(len(rows), bool))

    def close(self) -> None:
        self._cached = None


def _resize_batch(images: np.ndarray, resolution: int, workers: int) -> np.ndarray:
    from PIL import Image

    def one(img):
        return np.asarray(resize_square(Image.fromarray(img.transpose(1, 2, 0)), resolution)).transpose(2, 0, 1)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, images))) if len(images) else np.empty((0, 3, resolution, resolution), np.uint8)


# ---------------------------------------------------------------------------------------------
# Class folders of JPEG/PNG.

class FolderSource(RealSource):
    """`root/<synset or class name>/*.{jpg,jpeg,png}`; classes from `root/class_index.json`, else
    `default_index` (the model's: ImageNet's for the DMD2 presets, the demo's for the demo preset)."""

    kind = "folder"

    def __init__(self, root, resolution: int, classes: list[str] | None = None, per_class: int = 0,
                 max_samples: int = 0, seed: int = 0, workers: int = 2, on_bad_image: str = "skip",
                 default_index: ClassIndex | None = None):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: image directory not found" if not root.exists() else f"{root}: not a directory")
        own = root / DATASET_INDEX_NAME
        index = ClassIndex.from_json(own) if own.is_file() else (default_index or ClassIndex.imagenet())
        super().__init__(root, index, resolution, workers)
        if on_bad_image not in ("skip", "fail"):
            raise UserError(f"on_bad_image: {on_bad_image!r} is not skip or fail")
        self.on_bad_image = on_bad_image
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise UserError(f"{root}: no class folders (expected {root}/<synset or class name>/*.jpg)")
        paths, class_of = [], []
        for folder in folders:
            try:
                cid = index.lookup(folder.name)
            except UserError as e:
                raise UserError(f"{folder}: folder name is not a class: {e}") from None
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise UserError(f"{folder}: empty class folder (no .jpg, .jpeg or .png files)")
            paths += files
            class_of += [cid] * len(files)
        class_of = np.asarray(class_of, np.int64)
        wanted = index.resolve(classes) if classes else None
        chosen = select_samples(class_of, wanted, per_class, max_samples, seed)
        self._paths = [paths[i] for i in chosen]
        self.samples = pd.DataFrame({
            "sample_id": np.arange(len(chosen), dtype=np.int64),
            "source": [p.relative_to(root).as_posix() for p in self._paths],
            "class_id": class_of[chosen],
        })
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    def _decode(self, path: Path):
        """(uint8 CHW image, CONVERSIONS kinds, None), or (None, (), why it could not be read)."""
        from PIL import Image

        try:
            with Image.open(path) as img:
                wide = any(";16" in str(tile.args) for tile in img.tile)  # known only before load()
                img.load()
                rgb, kinds = to_rgb(img, wide)
                return np.asarray(resize_square(rgb, self.resolution)).transpose(2, 0, 1), kinds, None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, (), f"{type(e).__name__}: {e}"

    def load(self, start: int, stop: int) -> Loaded:
        paths = self._paths[start:stop]
        decoded = list(self._pool.map(self._decode, paths))
        kept = np.array([img is not None for img, _, _ in decoded], bool)
        skipped, converted = [], {}
        for p, (img, kinds, err) in zip(paths, decoded):
            if img is None:
                if self.on_bad_image == "fail":
                    raise UserError(f"{p}: unreadable image ({err}); use on_bad_image = skip to leave such files out")
                skipped.append({"source": p.relative_to(self.root).as_posix(), "error": err})
            for kind in kinds:
                converted[kind] = converted.get(kind, 0) + 1
        R = self.resolution
        images = np.stack([img for img, _, _ in decoded if img is not None]) if kept.any() else np.empty((0, 3, R, R), np.uint8)
        return Loaded(start, stop, images, kept, skipped, converted)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# The demo data and the dispatcher.

def demo_per_class(data) -> int:
    """Images per class of the demo data that `data` (the [data] section) selects."""
    from .demo.dataset import NUM_CLASSES

    return data.per_class if data.per_class > 0 else (math.ceil(data.max_samples / NUM_CLASSES)
                                                      if data.max_samples > 0 else 200)


def ensure_demo_data(folder: str | Path, n_per_class: int, seed: int = 0) -> Path:
    """Write the demo NPZ batches into `folder` (the work directory's demo data, WorkDir.demo_data) unless that
    exact set is already there, saying so in one line."""
    from .demo.dataset import NUM_CLASSES, write_demo_npz

    out = Path(folder)
    want = {"n_per_class": int(n_per_class), "seed": int(seed)}
    marker = out / _DEMO_MARKER
    try:
        if json.loads(marker.read_text()) == want:
            return out
    except (OSError, ValueError):
        pass
    log.info("generating the demo data: %d images per class, %d classes, into %s", n_per_class, NUM_CLASSES, out)
    # Written beside the final place, then swapped in, so a killed run leaves no half dataset.
    with replacing(out) as tmp:
        write_demo_npz(tmp, n_per_class, seed=seed)
        save_text(tmp / _DEMO_MARKER, json.dumps(want) + "\n")
    return out


def open_source(config, resolution: int, model_classes: ClassIndex, demo_data: Path) -> RealSource:
    """The real-image source `config.data` describes, at the model's resolution. `model_classes`: the classes the
    model is conditioned on (a class folder tree without its own index names them); `demo_data`: where the demo
    data is written (WorkDir.demo_data)."""
    d = config.data
    common = dict(classes=d.classes or None, per_class=d.per_class, max_samples=d.max_samples,
                  seed=config.run.seed, workers=d.workers)
    if d.source == "imagenet64-npz":
        return NpzSource(d.path, resolution, **common)
    if d.source == "folder":
        return FolderSource(d.path, resolution, on_bad_image=d.on_bad_image, default_index=model_classes, **common)
    if d.source == "demo":
        return NpzSource(ensure_demo_data(demo_data, demo_per_class(d)), resolution, **common)
    raise UserError(f"data.source: {d.source!r} is not one of demo, imagenet64-npz, folder")


def source_class_index(data, model_classes: ClassIndex) -> ClassIndex:
    """The class index of the real data `data` (the [data] section) describes, without scanning it: the demo's,
    the dataset's own `class_index.json`, else the model's for a folder tree and ImageNet's for NPZ batches."""
    if data.source == "demo":
        return ClassIndex.demo()
    own = Path(data.path) / DATASET_INDEX_NAME
    if own.is_file():
        return ClassIndex.from_json(own)
    return model_classes if data.source == "folder" else ClassIndex.imagenet()
