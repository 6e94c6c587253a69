"""Render costs that do not grow with N but dominated the render at any N: class pages and sprite sheets.

    PYTHONPATH=. python benchmarks/report_pages.py [--classes 100] [--sheets 4]

Side by side in one process:
- class pages: `ClassFigure.components` (serialise the shared figure once, then only the properties a
  class changes: EmbeddedFigure) against `bokeh.embed.components` of the same figure refilled per
  class (the code before), for --classes classes of a 100-class synthetic report;
- sprite sheets: WebP at method 0 (now) against method 4 (before), same quality, --sheets sheets of
  2048 x 2048 px made of 32 px thumbnails (benchmarks/report_scale.py's made thumbnails).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--sheets", type=int, default=4)
    args = ap.parse_args()
    from bokeh.embed import components

    from dmd2report.report import figures, sprites
    from dmd2report.report.view import site_view
    from report_scale import MadeThumbs, make_data

    data = make_data(60000)
    view = site_view(data, 20000)
    new, old = figures.ClassFigure(view), figures.ClassFigure(view)
    classes = [c % 100 for c in range(args.classes)]
    t0 = time.perf_counter()
    for c in classes:
        new.components(c, "#1f77b4", f"cls{c}")
    t_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in classes:
        components({"plot": old.fill(c, "#1f77b4", f"cls{c}")})
    t_old = time.perf_counter() - t0
    print(f"class pages x{len(classes)}: patched {t_new:.2f} s, components() {t_old:.2f} s, ratio {t_old / t_new:.1f}x")

    n = args.sheets * 4096
    thumbs = MadeThumbs(n, 32, np.arange(n) % 100)[np.arange(n)]
    _, images = sprites.sheet_images(thumbs)
    res = {}
    for method in (0, 4):
        t0, size = time.perf_counter(), 0
        for im in images:
            buf = io.BytesIO()
            im.save(buf, "WEBP", quality=82, method=method)
            size += len(buf.getvalue())
        res[method] = (time.perf_counter() - t0, size)
    (t0_, s0), (t4, s4) = res[0], res[4]
    print(f"WebP sheets x{len(images)}: method 0 {t0_:.2f} s {s0 / 2**20:.2f} MB, method 4 {t4:.2f} s {s4 / 2**20:.2f} MB, "
          f"ratio {t4 / t0_:.1f}x faster, {s0 / s4 - 1:+.1%} size")


if __name__ == "__main__":
    main()
