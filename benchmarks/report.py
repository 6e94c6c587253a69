"""Report budgets: demo-sized site size, and first render + hover latency of a 50k + 10k map.

    python benchmarks/report.py [--out /tmp/dmd2report-bench] [--real 50000] [--generated 10000]

Measured in headless Debian Chromium (/usr/bin/chromium, --disable-gpu: WebGL runs on the
software rasteriser, as on a CI runner), from file://, with a cold browser context per load.
- size: bytes of every file in a site rendered from synthetic data of the demo's size
  (2,400 real, 1,200 class-conditioned, 240 seeds x 4 variants, 32 px thumbnails).
- first render: BokehJS's own "document idle at N ms" console message (N = ms since navigation
  start, logged once every view of the document has painted); median of 3 loads.
- hover: for 40 pointer moves onto points (page.mouse.move), the time from the pointermove
  event's timeStamp to the hover card filled with that point (DMD2Site.lastHover.at), both on
  the page's performance.now() clock; median and 95th percentile. Plus the same to the next
  animation frame (when the card is on screen).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dmd2report.config import ReportConfig
from dmd2report.report.render import render_site

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import synthetic_report_data  # noqa: E402  (tests/synthetic.py)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def site_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def open_map_page(browser, url: str, timeout_ms: int = 60000):
    """Open `url` in a fresh 1400 x 900 context and wait for the site's "document idle at N ms" console line:
    (context, page, that N = first render in ms, performance.now() when the page said it was ready)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    logs = []
    page.on("console", lambda m: logs.append(m.text))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=timeout_ms)
    ready = page.evaluate("performance.now()")
    deadline = time.time() + timeout_ms / 1000
    while not any("document idle at" in t for t in logs) and time.time() < deadline:
        page.wait_for_timeout(20)
    m = next(re.search(r"document idle at (\d+) ms", t) for t in logs if "document idle at" in t)
    return ctx, page, float(m.group(1)), ready


def measure_map(browser, url: str, n_points: int, loads: int = 3, moves: int = 40) -> dict:
    idle, ready, hover, paint = [], [], [], []
    for i in range(loads):
        ctx, page, idle_ms, ready_ms = open_map_page(browser, url, 60000)
        idle.append(idle_ms)
        ready.append(ready_ms)
        assert page.evaluate("DMD2Site.pointCount('map')") == n_points
        if i == 0:
            page.evaluate("""() => { window.__moves = [];
                document.addEventListener('pointermove', e => window.__moves.push(e.timeStamp), {capture: true}); }""")
            rows = page.evaluate("""(n) => { const P = DMD2_DATA.points, out = [];
                for (let i = 0; i < n; i++) out.push(Math.floor(i * P.x.length / n)); return out; }""", moves)
            for row in rows:
                x, y = page.evaluate("""(row) => { const F = DMD2Site.resolve('map').fig, P = DMD2_DATA.points;
                    const v = Bokeh.index[F.id], fr = v.frame.bbox, b = v.el.getBoundingClientRect();
                    return [b.left + fr.x + (P.x[row] - F.x_range.start) / (F.x_range.end - F.x_range.start) * fr.width,
                            b.top + fr.y + (F.y_range.end - P.y[row]) / (F.y_range.end - F.y_range.start) * fr.height]; }""", row)
                page.mouse.move(x, y)
                dt, dframe = page.evaluate("""() => new Promise(res => { const t0 = window.__moves[window.__moves.length - 1];
                    const h = DMD2Site.lastHover.at; requestAnimationFrame(() => res([h - t0, performance.now() - t0])); })""")
                hover.append(dt)
                paint.append(dframe)
        ctx.close()
    return {"first_render_ms": statistics.median(idle), "first_render_all_ms": idle, "ready_ms": statistics.median(ready),
            "hover_median_ms": statistics.median(hover), "hover_p95_ms": float(np.percentile(hover, 95)),
            "hover_to_frame_median_ms": statistics.median(paint)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/dmd2report-bench")
    ap.add_argument("--real", type=int, default=50000)
    ap.add_argument("--generated", type=int, default=10000)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    t = time.time()
    demo = synthetic_report_data(2400, 1200, 10, seed=0, thumb_size=32, variants_per_class=24)
    t_build = time.time() - t
    t = time.time()
    render_site(demo, out / "demo")
    t_render = time.time() - t
    demo_mb = site_size(out / "demo") / 2**20
    print(f"demo site: {len(demo.points):,} points, {demo_mb:.2f} MB (budget 15 MB), rendered in {t_render:.1f} s "
          f"(synthetic data built in {t_build:.1f} s)")

    # 10,000 generated = class-conditioned + 4 variants x seeds per class.
    n_classes, per_class = 100, 5
    n_gen = args.generated - n_classes * per_class * 4
    big = synthetic_report_data(args.real, n_gen, n_classes, seed=1, thumb_size=16, variants_per_class=per_class)
    t = time.time()
    render_site(big, out / "big", ReportConfig(max_points=len(big.points)))   # every point drawn: the 60,000-point budget
    t_big = time.time() - t
    print(f"large site: {len(big.points):,} points ({args.real:,} real), {site_size(out / 'big') / 2**20:.1f} MB, rendered in {t_big:.1f} s")

    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        r = measure_map(browser, (out / "big" / "map.html").as_uri(), len(big.points))
        d = measure_map(browser, (out / "demo" / "map.html").as_uri(), len(demo.points), loads=1, moves=10)
        browser.close()
    print(f"large map first render (BokehJS document idle): median {r['first_render_ms']:.0f} ms "
          f"(loads: {', '.join(f'{v:.0f}' for v in r['first_render_all_ms'])}; budget 3000 ms); site JS ready {r['ready_ms']:.0f} ms")
    print(f"large map hover: pointermove -> card filled median {r['hover_median_ms']:.2f} ms, p95 {r['hover_p95_ms']:.2f} ms; "
          f"-> next frame median {r['hover_to_frame_median_ms']:.1f} ms")
    print(f"demo map first render: {d['first_render_ms']:.0f} ms; hover median {d['hover_median_ms']:.2f} ms")


if __name__ == "__main__":
    main()
