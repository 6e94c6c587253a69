"""The demo dataset: twelve procedural classes of small RGB images, deterministic from a seed.

A newcomer has no ImageNet; this stands in for it. Every class is one visual concept (a shape
or a pattern) drawn with random colour jitter, size, position, rotation, a background of random
tint, lighting gradient and texture, and pixel noise. Three pairs of classes are deliberately
close (red vs. orange disc, circular vs. oval ring, horizontal vs. slightly tilted stripes) so
that a map and coverage metrics have structure to show. `write_demo_npz` stores the images as
ImageNet64-style NPZ batches, so the demo's real data takes the same reading code as a user's.

Shapes are rasterised as coverage masks on a supersampled grid and box-filtered down (that is
the anti-aliasing); smooth fields (background, lighting, noise) are computed at the output
resolution directly, which is equivalent and much cheaper.
"""

from __future__ import annotations

import colorsys
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write

NUM_CLASSES = 12
RESOLUTION = 32
DATASET_VERSION = 1  # bumped whenever the drawing changes, so caches of written data can key on it

# (synset-like id, human name) in label order; NPZ label L is class L - 1.
DEMO_CLASSES: list[tuple[str, str]] = [
    ("d00_red_disc", "red disc"),
    ("d01_orange_disc", "orange disc"),
    ("d02_round_ring", "round ring"),
    ("d03_oval_ring", "oval ring"),
    ("d04_level_stripes", "level stripes"),
    ("d05_tilted_stripes", "tilted stripes"),
    ("d06_green_triangle", "green triangle"),
    ("d07_yellow_star", "yellow star"),
    ("d08_purple_square", "purple square"),
    ("d09_checkerboard", "checkerboard"),
    ("d10_white_cross", "white cross"),
    ("d11_confetti", "confetti"),
]

# The pairs drawn to be near each other: they differ in one attribute, by a margin a good
# classifier still resolves but a weak one (or a weak generator) blurs.
CLOSE_PAIRS: list[tuple[int, int]] = [(0, 1), (2, 3), (4, 5)]

_SHUFFLE_KEY = 0x5EED  # spawn key of the NPZ shuffle stream, apart from every per-image stream


# ---------------------------------------------------------------------------------------------
# Drawing helpers. Coordinates span [-1, 1] on both axes, y pointing down; masks are boolean
# arrays on the supersampled grid.

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _local(x, y, cx, cy, theta):
    """Coordinates in the frame of a shape centred at (cx, cy) and rotated by theta."""
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = x - cx, y - cy
    return c * dx + s * dy, -s * dx + c * dy


def _centre(rng, extent):
    """A centre that keeps a shape of the given half-extent inside the frame."""
    room = max(0.92 - extent, 0.0)
    return rng.uniform(-room, room, 2)


def _vivid(rng, hue_lo, hue_hi):
    return _hsv(rng.uniform(hue_lo, hue_hi), rng.uniform(0.8, 1.0), rng.uniform(0.78, 1.0))


def _any_vivid(rng):
    return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))


# ---------------------------------------------------------------------------------------------
# The classes. Each draws its parameters from the image's own generator and returns layers
# (mask, rgb) painted in order over the background.

def _disc(hue_lo, hue_hi):
    def draw(rng, x, y):
        r = rng.uniform(0.28, 0.55)
        cx, cy = _centre(rng, r)
        return [((x - cx) ** 2 + (y - cy) ** 2 <= r * r, _vivid(rng, hue_lo, hue_hi))]
    return draw


def _ring(aspect_lo, aspect_hi):
    def draw(rng, x, y):
        a = rng.uniform(0.45, 0.68)
        b = a * rng.uniform(aspect_lo, aspect_hi)
        w = rng.uniform(0.10, 0.15)
        cx, cy = _centre(rng, a)
        u, v = _local(x, y, cx, cy, rng.uniform(0.0, np.pi))
        ring = ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & ((u / (a - w)) ** 2 + (v / (b - w)) ** 2 > 1.0)
        return [(ring, _vivid(rng, 0.47, 0.53))]
    return draw


def _stripes(tilt_lo_deg, tilt_hi_deg):
    def draw(rng, x, y):
        tilt = np.deg2rad(rng.uniform(tilt_lo_deg, tilt_hi_deg)) * rng.choice([-1.0, 1.0])
        period, duty, phase = rng.uniform(0.30, 0.45), rng.uniform(0.4, 0.6), rng.uniform(0.0, 1.0)
        v = -np.sin(tilt) * x + np.cos(tilt) * y
        return [(np.mod(v / period + phase, 1.0) < duty, _any_vivid(rng))]
    return draw


def _triangle(rng, x, y):
    r = rng.uniform(0.42, 0.72)  # circumradius; the inradius is r / 2
    cx, cy = _centre(rng, 0.8 * r)
    theta = rng.uniform(0.0, 2 * np.pi / 3)
    inside = np.ones(x.shape, bool)
    for k in range(3):
        a = theta + k * 2 * np.pi / 3
        inside &= np.cos(a) * (x - cx) + np.sin(a) * (y - cy) <= r / 2
    return [(inside, _vivid(rng, 0.29, 0.36))]


def _star(rng, x, y):
    outer = rng.uniform(0.48, 0.75)
    inner = outer * rng.uniform(0.38, 0.5)
    cx, cy = _centre(rng, 0.9 * outer)
    u, v = _local(x, y, cx, cy, rng.uniform(0.0, 2 * np.pi / 5))
    # Fold the angle onto one half-spike: tip at angle 0 (radius `outer`), notch at pi/5 (`inner`).
    half = np.pi / 5
    ang = np.abs(np.mod(np.arctan2(v, u) + half, 2 * half) - half)
    rho = np.hypot(u, v)
    px, py = rho * np.cos(ang), rho * np.sin(ang)
    bx, by = inner * np.cos(half), inner * np.sin(half)
    inside = (bx - outer) * py - by * (px - outer) >= 0  # on the centre's side of the edge tip->notch
    return [(inside, _vivid(rng, 0.125, 0.16))]


def _square(rng, x, y):
    s = rng.uniform(0.28, 0.48)
    cx, cy = _centre(rng, 1.3 * s)
    u, v = _local(x, y, cx, cy, rng.uniform(0.0, np.pi / 2))
    return [(np.maximum(np.abs(u), np.abs(v)) <= s, _vivid(rng, 0.75, 0.81))]


def _checkerboard(rng, x, y):
    cell = rng.uniform(0.26, 0.40)
    u, v = _local(x, y, *rng.uniform(-1.0, 1.0, 2), rng.uniform(0.0, np.pi / 2))
    return [((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0, _any_vivid(rng))]


def _cross(rng, x, y):
    arm, width = rng.uniform(0.45, 0.72), rng.uniform(0.09, 0.16)
    cx, cy = _centre(rng, arm)
    u, v = _local(x, y, cx, cy, rng.uniform(-np.pi / 4, np.pi / 4))
    au, av = np.abs(u), np.abs(v)
    inside = ((au <= width) & (av <= arm)) | ((av <= width) & (au <= arm))
    return [(inside, _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.12), rng.uniform(0.9, 1.0)))]


def _confetti(rng, x, y):
    layers = []
    for _ in range(rng.integers(5, 9)):
        r = rng.uniform(0.08, 0.15)
        cx, cy = rng.uniform(-0.85, 0.85, 2)
        layers.append(((x - cx) ** 2 + (y - cy) ** 2 <= r * r, _any_vivid(rng)))
    return layers


_DRAW = [
    _disc(-0.02, 0.02),              # red: hue 0 +- 7 degrees
    _disc(0.065, 0.095),             # orange: hue 23..34 degrees, a 16 degree gap to red
    _ring(1.0, 1.0),                 # circular
    _ring(0.55, 0.72),               # elliptical, otherwise the same distribution
    _stripes(0.0, 3.0),              # level (within 3 degrees)
    _stripes(9.0, 16.0),             # tilted 9..16 degrees either way
    _triangle, _star, _square, _checkerboard, _cross, _confetti,
]
assert len(_DRAW) == len(DEMO_CLASSES) == NUM_CLASSES


# ---------------------------------------------------------------------------------------------
# One image.

def _supersampling(resolution: int) -> int:
    return max(2, -(-128 // resolution))  # at least 128 samples across: 4x at 32 px, 2x at 64 px


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # pixel centres
    y, x = np.meshgrid(t, t, indexing="ij")
    x.setflags(write=False), y.setflags(write=False)
    return x, y


def _render(seed: int, label: int, index: int, resolution: int) -> np.ndarray:
    """Image `index` of class `label`: (R, R, 3) uint8, a function of (seed, label, index) only."""
    rng = np.random.default_rng([seed, label, index])
    ss = _supersampling(resolution)
    layers = _DRAW[label](rng, *_grid(resolution * ss))

    # Background: a muted tint with a low-frequency texture of two plane waves.
    x, y = _grid(resolution)
    image = np.empty((resolution, resolution, 3))
    image[:] = _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.55))
    for _ in range(2):
        ang, freq = rng.uniform(0.0, 2 * np.pi), rng.uniform(1.0, 3.5)
        wave = np.sin(np.pi * freq * (np.cos(ang) * x + np.sin(ang) * y) + rng.uniform(0.0, 2 * np.pi))
        image += (rng.uniform(0.0, 0.07) * wave)[..., None]

    for mask, rgb in layers:
        alpha = mask.reshape(resolution, ss, resolution, ss).mean(axis=(1, 3))[..., None]
        image = image * (1.0 - alpha) + rgb * alpha

    # Lighting: a linear gradient over the whole scene, then sensor noise.
    ang = rng.uniform(0.0, 2 * np.pi)
    image *= (1.0 + rng.uniform(0.0, 0.3) * 0.5 * (np.cos(ang) * x + np.sin(ang) * y))[..., None]
    image += rng.normal(0.0, rng.uniform(0.01, 0.045), image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"demo dataset: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_demo_images(n_per_class: int, seed: int = 0, resolution: int = RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` images of every class: uint8 (N, R, R, 3) HWC and int64 labels 0..K-1.

    Ordered class by class. Image i of class c depends only on (seed, c, i), so a larger
    `n_per_class` keeps the first images unchanged.
    """
    n_per_class = _check_int("n_per_class", n_per_class, 0)
    seed = _check_int("seed", seed, 0)
    resolution = _check_int("resolution", resolution, 8)
    images = np.empty((NUM_CLASSES * n_per_class, resolution, resolution, 3), np.uint8)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), n_per_class)
    for row, (label, index) in enumerate(zip(labels, np.tile(np.arange(n_per_class), NUM_CLASSES))):
        images[row] = _render(seed, int(label), int(index), resolution)
    return images, labels


# ---------------------------------------------------------------------------------------------
# ImageNet64-style NPZ batches.

def demo_class_index() -> dict[str, list[str]]:
    """The class index in the form of imagenet64_npz_class_index.json: NPZ label L is entry str(L - 1)."""
    return {str(k): [synset, name] for k, (synset, name) in enumerate(DEMO_CLASSES)}


def write_demo_npz(out_dir, n_per_class: int, seed: int = 0, batch_size: int = 1000) -> list[Path]:
    """Write the demo dataset as `train_data_batch_1.npz, ...` plus `class_index.json` in `out_dir`.

    Each batch holds `data`, uint8 (N, 3*R*R) channel-planar (all red values, then green, then
    blue, rows first: ImageNet64's layout), and `labels`, int64 1..K. Samples are shuffled with a
    permutation fixed by the seed. Batches left over from an earlier, larger run are removed so
    that the directory holds exactly this dataset. Returns the batch paths in order.
    """
    n_per_class = _check_int("n_per_class", n_per_class, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    images, labels = make_demo_images(n_per_class, seed)
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SHUFFLE_KEY,))).permutation(len(labels))
    data = images[order].transpose(0, 3, 1, 2).reshape(len(order), -1)
    npz_labels = labels[order] + 1

    paths = []
    for number, start in enumerate(range(0, len(order), batch_size), start=1):
        path = out / f"train_data_batch_{number}.npz"
        chunk = slice(start, start + batch_size)
        atomic_write(path, lambda f: np.savez(f, data=data[chunk], labels=npz_labels[chunk]))
        paths.append(path)
    for stale in out.glob("train_data_batch_*.npz"):
        m = re.fullmatch(r"train_data_batch_(\d+)\.npz", stale.name)
        if m and int(m.group(1)) > len(paths):
            stale.unlink()
    text = json.dumps(demo_class_index(), indent=2) + "\n"
    atomic_write(out / "class_index.json", lambda f: f.write(text.encode()))
    return paths


# ---------------------------------------------------------------------------------------------
# Image grid for the documentation.

GRID_GAP = 2            # white pixels between tiles
GRID_LABEL_WIDTH = 150  # the column of class names on the left

def render_grid(per_class: int = 8, seed: int = 0, scale: int = 3):
    """A PIL image: one row per class, `per_class` samples upscaled `scale`x, the class name on the left."""
    from PIL import Image, ImageDraw, ImageFont

    images, _ = make_demo_images(per_class, seed)
    tile, gap, label_w = RESOLUTION * scale, GRID_GAP, GRID_LABEL_WIDTH
    grid = Image.new("RGB", (label_w + per_class * (tile + gap), NUM_CLASSES * (tile + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=15)
    for c, (synset, name) in enumerate(DEMO_CLASSES):
        top = gap + c * (tile + gap)
        draw.text((8, top + tile // 2), f"{c}  {name}", fill="black", font=font, anchor="lm")
        for i in range(per_class):
            img = Image.fromarray(images[c * per_class + i]).resize((tile, tile), Image.NEAREST)
            grid.paste(img, (label_w + i * (tile + gap), top))
    return grid


def main(argv: list[str] | None = None) -> int:
    """`python -m dmd2report.demo.dataset grid OUT.png [--per-class 8] [--seed 0]`
    or `... npz OUT_DIR --per-class N [--seed 0] [--batch-size 1000]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="dmd2report demo-data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("grid", help="render an image grid, one row per class")
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=3, help="upscaling factor of each tile")
    p = sub.add_parser("npz", help="write ImageNet64-style NPZ batches and class_index.json")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--per-class", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.command == "grid":
            _check_int("per-class", args.per_class, 1), _check_int("scale", args.scale, 1)
            if args.out.suffix.lower() != ".png":
                raise UserError(f"{args.out}: the grid is written as PNG; give a .png path")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            grid = render_grid(args.per_class, args.seed, args.scale)
            atomic_write(args.out, lambda f: grid.save(f, format="PNG", optimize=True))
            print(f"wrote {args.out} ({grid.width}x{grid.height})")
        else:
            paths = write_demo_npz(args.out_dir, args.per_class, args.seed, args.batch_size)
            print(f"wrote {len(paths)} batch(es) and class_index.json to {args.out_dir}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
