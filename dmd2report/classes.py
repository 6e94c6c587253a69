"""Class indices: ids, synsets and names, and the label orders datasets store them in.

A class index is a JSON object {"0": [synset, name], "1": [...], ...} with ids 0..K-1; the
id is the position in the model's one-hot label. `imagenet_class_index.json` is the
standard ImageNet order the DMD2 ImageNet-64 model was trained on.
`imagenet64_npz_class_index.json` is the order of the labels 1..1000 in the downsampled
ImageNet64 NPZ batches: NPZ label L is entry str(L - 1) of that file, whose synset gives the
standard id. A dataset directory holding its own `class_index.json` (the demo data) stores
labels 1..K in the order of that file instead.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .resources import package_json

DATASET_INDEX_NAME = "class_index.json"  # a dataset's own index, next to its NPZ files or class folders


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class ClassIndex:
    """K classes: id i has synset `synsets[i]` and name `names[i]`."""

    synsets: tuple[str, ...]
    names: tuple[str, ...]
    origin: str = "?"  # where the index came from, for messages
    _by_synset: dict = field(init=False, repr=False, compare=False)
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.synsets) != len(self.names):
            raise ValueError("synsets and names differ in length")
        by_name: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            by_name.setdefault(_normalise(n), []).append(i)
        object.__setattr__(self, "_by_synset", {s: i for i, s in enumerate(self.synsets)})
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def from_json(cls, path: str | Path) -> ClassIndex:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: class index not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not a valid class index JSON ({e})") from None
        return cls.from_mapping(raw, str(path))

    @classmethod
    def from_mapping(cls, raw, origin: str) -> ClassIndex:
        ok = isinstance(raw, dict) and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in raw.values())
        if not ok:
            raise UserError(f'{origin}: a class index must map "0".."K-1" to [synset, name]')
        if sorted(raw, key=lambda k: int(k) if k.isdigit() else -1) != [str(i) for i in range(len(raw))]:
            raise UserError(f"{origin}: class ids must be exactly 0..{len(raw) - 1}")
        entries = [raw[str(i)] for i in range(len(raw))]
        return cls(tuple(e[0] for e in entries), tuple(e[1] for e in entries), origin)

    @classmethod
    def imagenet(cls) -> ClassIndex:
        """The standard ImageNet-1k order (what the DMD2 ImageNet-64 model's labels mean)."""
        return cls.from_mapping(package_json("imagenet_class_index.json"), "imagenet_class_index.json")

    @classmethod
    def demo(cls) -> ClassIndex:
        """The demo dataset's 12 classes (what the demo generator's labels mean)."""
        return cls.from_mapping(package_json("demo_class_index.json"), "demo class index")

    def __len__(self) -> int:
        return len(self.synsets)

    def synset(self, class_id: int) -> str:
        return self.synsets[class_id] if 0 <= class_id < len(self) else ""

    def name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self) else ""

    def to_mapping(self) -> dict[str, list[str]]:
        return {str(i): [s, n] for i, (s, n) in enumerate(zip(self.synsets, self.names))}

    def lookup(self, token: str | int) -> int:
        """One class id for an id ("207"), a synset ("n01443537") or a name ("goldfish", "Golden Retriever")."""
        text = str(token).strip()
        if text.lstrip("-").isdigit():
            i = int(text)
            if not 0 <= i < len(self):
                raise UserError(f"class id {i} is out of range 0..{len(self) - 1} ({self.origin})")
            return i
        if text in self._by_synset:
            return self._by_synset[text]
        ids = self._by_name.get(_normalise(text), [])
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            which = ", ".join(f"{i} ({self.synsets[i]})" for i in ids)
            raise UserError(f"class name {text!r} is ambiguous: {which}; give the id or the synset")
        candidates = list(self._by_synset) + [_normalise(n) for n in self.names]
        close = difflib.get_close_matches(_normalise(text), candidates, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UserError(f"unknown class {text!r} (not an id, synset or name in {self.origin}){hint}")

    def resolve(self, tokens: Iterable[str | int]) -> list[int]:
        """Class ids for ids, synsets or names, in the given order, duplicates dropped."""
        out: list[int] = []
        for t in tokens:
            i = self.lookup(t)
            if i not in out:
                out.append(i)
        return out


def imagenet64_npz_label_map(standard: ClassIndex | None = None) -> np.ndarray:
    """int64 array m of length 1001 with m[L] = standard id of ImageNet64 NPZ label L (m[0] = -1)."""
    standard = standard or ClassIndex.imagenet()
    npz = ClassIndex.from_mapping(package_json("imagenet64_npz_class_index.json"), "imagenet64_npz_class_index.json")
    return np.array([-1] + [standard.lookup(s) for s in npz.synsets], dtype=np.int64)


def dataset_classes(directory: str | Path) -> tuple[ClassIndex, np.ndarray]:
    """The class index of a dataset directory and its NPZ label map (label L -> class id).

    With a `class_index.json` in the directory (the demo data) that index is used and labels
    1..K mean ids 0..K-1; otherwise the labels are ImageNet64 NPZ labels, mapped to the
    standard ImageNet order.
    """
    own = Path(directory) / DATASET_INDEX_NAME
    if own.is_file():
        index = ClassIndex.from_json(own)
        return index, np.arange(-1, len(index), dtype=np.int64)
    standard = ClassIndex.imagenet()
    return standard, imagenet64_npz_label_map(standard)

