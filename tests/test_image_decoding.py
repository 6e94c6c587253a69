"""Folder images decode to the 8-bit RGB a researcher expects, whatever their storage: 16-bit samples scaled (the
top byte, not clipped to white), grayscale repeated, palette expanded, CMYK converted, alpha dropped keeping the
stored colour (as convert('RGB') in torchvision's and EDM's loaders); each conversion counted by kind."""

import struct
import zlib

import numpy as np
from PIL import Image

from dmd2report.sources import CONVERSIONS, FolderSource

R = 8
GOLDFISH = "n01443537"


def write_png16(path, a: np.ndarray) -> None:
    """A 16-bit PNG of uint16 (h, w, c), c = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA): PIL cannot write them."""
    h, w, c = a.shape
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _decoded(tmp_path, write):
    """Write one image with `write(path)` into a class folder; return (its decoded HWC uint8, the conversion counts)."""
    folder = tmp_path / "images" / GOLDFISH
    folder.mkdir(parents=True)
    write(folder)
    source = FolderSource(tmp_path / "images", R, workers=1)
    loaded = source.load(0, 1)
    source.close()
    assert loaded.kept.all() and not loaded.skipped, loaded.skipped
    return loaded.images[0].transpose(1, 2, 0), loaded.converted


def _ramp(channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 65536, (R, R, channels), dtype=np.uint16)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = _ramp(1)

    def write(folder):
        write_png16(folder / "g16.png", a)
        return folder / "g16.png"
    rgb, converted = _decoded(tmp_path, write)
    want = (a[..., 0] >> 8).astype(np.uint8)
    assert Image.open(tmp_path / "images" / GOLDFISH / "g16.png").mode.startswith("I")  # PIL would clip it to white
    np.testing.assert_array_equal(rgb, np.repeat(want[..., None], 3, axis=2))
    assert converted == {"16-bit": 1, "grayscale": 1}


def test_16_bit_rgb_and_gray_alpha(tmp_path):
    a = _ramp(3)
    write = lambda folder: (write_png16(folder / "rgb16.png", a), folder / "rgb16.png")[1]
    rgb, converted = _decoded(tmp_path / "rgb", write)
    np.testing.assert_array_equal(rgb, (a >> 8).astype(np.uint8))
    assert converted == {"16-bit": 1}

    la = _ramp(2)
    write = lambda folder: (write_png16(folder / "la16.png", la), folder / "la16.png")[1]
    rgb, converted = _decoded(tmp_path / "la", write)
    np.testing.assert_array_equal(rgb, np.repeat((la[..., :1] >> 8).astype(np.uint8), 3, axis=2))  # alpha dropped
    assert converted == {"16-bit": 1, "alpha": 1}


def test_8_bit_modes(tmp_path):
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (R, R, 3), dtype=np.uint8)
    gray = colours[..., 0]
    alpha = rng.integers(0, 256, (R, R), dtype=np.uint8)
    palette_image = Image.fromarray(colours).quantize(16)
    cases = {   # name: (writer, expected RGB, expected counts)
        "rgb": (lambda p: Image.fromarray(colours).save(p), colours, {}),
        "gray": (lambda p: Image.fromarray(gray).save(p), np.repeat(gray[..., None], 3, 2), {"grayscale": 1}),
        "rgba": (lambda p: Image.fromarray(np.dstack([colours, alpha])).save(p), colours, {"alpha": 1}),
        "gray-alpha": (lambda p: Image.fromarray(np.dstack([gray, alpha]), "LA").save(p),
                       np.repeat(gray[..., None], 3, 2), {"grayscale": 1, "alpha": 1}),
        "palette": (lambda p: palette_image.save(p), np.asarray(palette_image.convert("RGB")), {"palette": 1}),
        "palette-transparent": (lambda p: palette_image.save(p, transparency=0), np.asarray(palette_image.convert("RGB")),
                                {"palette": 1, "alpha": 1}),
    }
    for name, (save, want, counts) in cases.items():
        rgb, converted = _decoded(tmp_path / name, lambda folder: (save(folder / f"{name}.png"), folder / f"{name}.png")[1])
        np.testing.assert_array_equal(rgb, want, err_msg=name)
        assert converted == counts, name
    assert not (np.asarray(palette_image.convert("RGB")) == 255).all()


def test_cmyk_jpeg(tmp_path):
    def write(folder):
        Image.new("CMYK", (R, R), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)   # pure red in ink
        return folder / "cmyk.jpg"
    rgb, converted = _decoded(tmp_path, write)
    assert converted == {"CMYK": 1}
    assert (np.abs(rgb.astype(int) - [255, 0, 0]) <= 8).all(), rgb[0, 0]


def test_conversions_are_counted_over_a_range(tmp_path):
    """A range's counts are per kind over its images (the log's one line a kind; the store's manifest sums them)."""
    folder = tmp_path / "images" / GOLDFISH
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((R, R), 40 * i, np.uint8)).save(folder / f"gray{i}.png")
    Image.fromarray(np.zeros((R, R, 3), np.uint8)).save(folder / "rgb.png")
    write_png16(folder / "g16.png", _ramp(1))
    source = FolderSource(tmp_path / "images", R, workers=2)
    loaded = source.load(0, len(source))
    source.close()
    assert loaded.converted == {"grayscale": 4, "16-bit": 1}
    assert set(loaded.converted) <= set(CONVERSIONS)
