"""Report at any N (issue 20 item 4): site size, render time, peak memory and map first render against N.

    PYTHONPATH=. nice python benchmarks/report_scale.py --n 10000,60000,250000,1300000 \
        --max-points 20000,40000,60000 --baseline 60000,130000 --out /tmp/dmd2report-report-scale

For each N (points in all: 80% real in 100 classes, 20% generated over the four variants), a
`ReportData` is built directly (no k-NN: random neighbour lists and covered-by lists of the right
shapes; x/y in class clusters; 32 px thumbnails made on demand, one per row, from a class tint, a
smooth random field and noise, which compress about like small photographs) and `render_site` runs in
a fresh process (`--one`), so `ru_maxrss` is that render's peak. The map page's first render is
BokehJS's "document idle at N ms" in headless Chromium (median of 3 cold loads, as benchmarks/report.py).

`--baseline N,...`: the same data rendered by the code before this change (`git worktree` of
`--baseline-ref`, default the commit before the report-scale work), which draws and carries every point,
side by side in the same command.

`--frames N,...` (issue 32 item 4): sites of those N (the default cap, every point also in zoom tiles) and a
demo-size site (synthetic data of the demo's size, every point drawn, as benchmarks/report.py), each opened from
file:// in headless Chromium (software WebGL); per site the map's first render (median of 3 loads) and the frame
times of a scripted pan and zoom on each load, pooled (`scripted_pan_zoom`: mouse-wheel steps into a dense region, a drag, wheel
steps out, through page.mouse, so BokehJS's own tools and site.js's drawing while the view moves act as for a
person; a 300 ms hesitation every 5 steps, and after each of the three a stop until the view has settled: every
point back, the view's tiles loaded, detail layers and density images redrawn): the interval between
requestAnimationFrame callbacks after each input event (median, p95; in whole 16.7 ms frames), the time from each
input event to the end of the map's next paint (median, p95; not quantised, so sites whose frames are one or two
apart still compare), and the longest frame of the whole run (the settled view's full paint and tile loading
included),
each against the demo-size site's, measured in the same command. Sites are rendered in child processes first,
then measured one after another in one browser.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))   # tests/synthetic.py
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


class MadeThumbs:
    """(n, t, t, 3) uint8 thumbnails made on demand from the row index (deterministic), so a million rows
    need no memory until the site asks for its few thousand."""

    def __init__(self, n: int, t: int, classes: np.ndarray):
        self.shape, self.dtype, self.ndim, self.classes = (n, t, t, 3), np.dtype(np.uint8), 4, classes

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx, np.int64))
        out = np.empty((len(idx),) + self.shape[1:], np.uint8)
        for s in range(0, len(idx), 2048):  # in blocks: the temporaries stay small
            out[s:s + 2048] = self._make(idx[s:s + 2048])
        return out

    BANK = 4096

    def _make(self, idx):
        # A class tint plus one of BANK smooth noisy fields (made once): each row's image is fixed by its
        # index, and making them costs about what reading them from a memory-mapped store would.
        if not hasattr(self, "_bank"):
            t = self.shape[1]
            rng = np.random.default_rng(0)
            coarse = rng.normal(0, 35, (self.BANK, 4, 4, 3)).astype(np.float32)
            smooth = coarse.repeat(t // 4, 1).repeat(t // 4, 2)          # blocky field, then a box blur
            smooth = (smooth + np.roll(smooth, 2, 1) + np.roll(smooth, 2, 2) + np.roll(smooth, -2, 1)) / 4
            self._bank = (smooth + rng.normal(0, 6, smooth.shape)).astype(np.int16)
            self._tint = np.random.default_rng(7).uniform(40, 215, (200, 3)).astype(np.int16)
        field = self._bank[(idx * 2654435761) % self.BANK]
        tint = self._tint[self.classes[idx] % 200]
        return np.clip(field + tint[:, None, None, :], 0, 255).astype(np.uint8)

    def __array__(self, dtype=None, copy=None):
        return self[np.arange(len(self))]


def make_data(n: int, seed: int = 0, n_classes: int = 100, k: int = 8, old_format: bool = False):
    import dataclasses

    from dmd2report.report.data import Neighbours
    if old_format:   # the baseline tree's package (the code before) still carries the synthetic data
        from dmd2report.report.data import synthetic_report_data
    else:
        from synthetic import synthetic_report_data
    base = synthetic_report_data(600, 300, n_classes, seed=seed, thumb_size=32, variants_per_class=1)
    rng = np.random.default_rng(seed)
    n_real = int(n * 0.8)
    n_gen = n - n_real
    variants = np.array(["class", "uniform", "zero", "blend"])
    var = np.concatenate([np.repeat("real", n_real), variants[np.minimum(rng.integers(0, 5, n_gen), 3)]])
    cls = rng.integers(0, n_classes, n)
    cls[var == "zero"] = -1
    centres = rng.normal(0, 10, (n_classes + 1, 2))
    xy = centres[cls] + rng.normal(0, 1.2, (n, 2))
    ids = pd.Series(np.arange(n)).astype(str)
    pts = pd.DataFrame({"set": np.where(var == "real", "real", "generated"), "variant": var,
                        "sample_id": np.where(var == "real", "real-", "gen-") + ids, "class_id": cls,
                        "x": xy[:, 0], "y": xy[:, 1], "trust": rng.uniform(0.6, 1, n), "covered": False,
                        "source": np.where(var == "real", "data/train/n0144/img_", "seed 0 index ") + ids,
                        "thumb": np.arange(n)})
    pts.loc[:n_real - 1, "covered"] = rng.random(n_real) < 0.6
    ri = np.sort(rng.integers(0, n_real, (n, k)), 1)
    gi = np.sort(rng.integers(n_real, n, (n, k)), 1)
    d = np.sort(rng.uniform(0.5, 3, (n, k)).astype(np.float32), 1)
    cov = pts["covered"].to_numpy()
    counts = np.where(cov, rng.integers(1, 6, n), 0)
    cb_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cb_val = rng.integers(n_real, n, int(counts.sum())).astype(np.int64)
    n_var = min(2000, n_gen // 4)
    vrows = pd.DataFrame({"seed_index": np.tile(np.arange(n_var // 4), 4), "class_id": np.tile(cls[n_real:n_real + n_var // 4], 4),
                          "variant": np.repeat(variants, n_var // 4), "point": n_real + np.arange(n_var // 4 * 4)})
    thumbs = MadeThumbs(n + len(base.thumbnails), 32, np.concatenate([cls, np.zeros(len(base.thumbnails), np.int64)]))
    atlas = dataclasses.replace(base.atlas, grid=base.atlas.grid.assign(thumb=n + np.arange(len(base.atlas.grid))),
                                anchors=[dataclasses.replace(a, thumb=n + len(base.atlas.grid) + i) for i, a in enumerate(base.atlas.anchors)])
    extra = {}
    if old_format:  # the code before: a dict of lists, thumbnails in memory (it has no Ragged)
        covered_by = {int(i): cb_val[cb_off[i]:cb_off[i + 1]].tolist() for i in np.flatnonzero(counts)}
        thumbs = np.asarray(thumbs)
    else:
        from dmd2report.report.data import Ragged
        covered_by = Ragged(cb_off, cb_val)
        if hasattr(base, "cover_count"):   # true covering counts past the lists' cap, and the radii (issue 18)
            extra = dict(cover_count=counts + np.where(counts == 5, rng.integers(0, 20, n), 0),
                         cover_radius=np.where(var == "real", rng.uniform(1, 3, n), np.nan))
    return dataclasses.replace(base, points=pts, thumbnails=thumbs, neighbours=Neighbours(ri, d, gi, d, layer="midblock"),
                               covered_by=covered_by, nn_real_real=d[:n_real, -1], nn_gen_real=d[n_real:, -1],
                               variants=vrows, atlas=atlas, **extra, classes=pd.DataFrame(
                                   {"class_id": np.arange(n_classes), "synset": [f"n{c:08d}" for c in range(n_classes)],
                                    "name": [f"class {c}" for c in range(n_classes)]}))


def one(n: int, out: str, max_points: int, old: bool) -> dict:
    """Render in this process; print a JSON line with times, size and peak RSS (n = 0: the demo-size site)."""
    from dmd2report.config import ReportConfig
    from dmd2report.report.render import render_site
    t0 = time.time()
    if n == 0:
        from synthetic import synthetic_report_data
        data = synthetic_report_data(2400, 1200, 10, seed=0, thumb_size=32, variants_per_class=24)
        max_points = ReportConfig().max_points
    else:
        data = make_data(n, old_format=old)
    t_data = time.time() - t0
    t0 = time.time()
    if old:
        render_site(data, out)
    else:
        render_site(data, out, ReportConfig(max_points=max_points))
    t_render = time.time() - t0
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    tiles = [p for p in (Path(out) / "tiles").rglob("*.js")]
    return {"n": len(data.points), "max_points": None if old else max_points, "old": old, "data_s": round(t_data, 2),
            "render_s": round(t_render, 2), "site_mb": round(size / 2**20, 2), "n_tiles": len(tiles),
            "tiles_mb": round(sum(p.stat().st_size for p in tiles) / 2**20, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def first_render(url: str, loads: int = 3) -> float:
    """Median first render (the site's "document idle at" line) of the map page over `loads` fresh loads."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import open_map_page   # benchmarks/report.py: the one page-opening helper
    idle = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for _ in range(loads):
            ctx, _page, idle_ms, _ready = open_map_page(browser, url, 120000)
            idle.append(idle_ms)
            ctx.close()
        browser.close()
    return statistics.median(idle)


FRAME_CLOCK = """() => {   // requestAnimationFrame intervals; per input event (wheel, drag) the longer of the two after it
    const R = window.__frames = { all: [], after: [], pending: 0, worst: 0, run: true, inputs: [], latency: [] };
    const mark = e => { R.inputs.push(e.timeStamp); if (!R.pending) { R.pending = 2; R.worst = 0; } };   // the frame it lands in and the next (the paint)
    document.addEventListener("wheel", mark, { capture: true, passive: true });
    document.addEventListener("pointermove", e => { if (e.buttons) mark(e); }, { capture: true, passive: true });
    // Input to painted: from each input event to the end of the map's next paint (not in whole frames: the
    // requestAnimationFrame intervals come in 16.7 ms steps, too coarse to compare sites whose frames are one or two).
    const v = Bokeh.index[DMD2Site.resolve('map').fig.id], paint = v._actual_paint;
    v._actual_paint = function () { paint.call(this); const t = performance.now();
      for (const u of R.inputs) R.latency.push(t - u); R.inputs = []; };
    let t = performance.now();
    const tick = u => { R.all.push(u - t);
      if (R.pending) { R.worst = Math.max(R.worst, u - t); if (!--R.pending) R.after.push(R.worst); }
      t = u; if (R.run) requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
}"""
DENSE_POINT = """() => {   // viewport position of the median drawn real point (a dense region) and the plot frame's box
    const f = DMD2Site.resolve('map'), F = f.fig, P = DMD2_DATA.points, v = Bokeh.index[F.id];
    const fr = v.frame.bbox, b = v.el.getBoundingClientRect(), rx = [], ry = [];
    for (let j = 0; j < P.x.length; j++) if (!P.gen[j] && P.drawn[j]) { rx.push(P.x[j]); ry.push(P.y[j]); }
    rx.sort((a, c) => a - c); ry.sort((a, c) => a - c);
    const x = rx[rx.length >> 1], y = ry[ry.length >> 1];
    return [b.left + fr.x + (x - F.x_range.start) / (F.x_range.end - F.x_range.start) * fr.width,
            b.top + fr.y + (F.y_range.end - y) / (F.y_range.end - F.y_range.start) * fr.height, fr.width, fr.height];
}"""


SETTLED = "!(DMD2Site.lod && DMD2Site.lod.moving.map) && !(DMD2Site.tiles && DMD2Site.tiles.pending)"


def stop_to_look(page) -> None:
    """Still until the map has settled (every point back, the view's tiles loaded and drawn), then 300 ms more."""
    page.wait_for_timeout(100)
    page.wait_for_function(SETTLED, timeout=30000)
    page.wait_for_timeout(300)


def scripted_pan_zoom(page) -> dict:
    """PAN_ZOOM with real input events (page.mouse: BokehJS's wheel-zoom and pan tools and site.js's drawing while the
    view moves, as a person gets): 20 wheel steps in at a dense point, a drag of 30 moves, 20 steps out, with a 300 ms
    hesitation every 5 steps (shorter than the figure's lod_timeout: the gesture goes on) and a stop to look after
    each of the three (the view settles: every point, the view's tiles loaded, detail layers and density redrawn)."""
    page.evaluate(FRAME_CLOCK)
    x, y, w, h = page.evaluate(DENSE_POINT)
    page.mouse.move(x, y)
    for i in range(20):
        page.mouse.wheel(0, -120)
        if i % 5 == 4:
            page.wait_for_timeout(300)
    stop_to_look(page)
    page.mouse.down()
    for i in range(30):
        page.mouse.move(x - w * 0.6 * (i + 1) / 30, y - h * 0.3 * (i + 1) / 30)
        if i % 5 == 4:
            page.wait_for_timeout(300)
    page.mouse.up()
    stop_to_look(page)
    page.mouse.move(x, y)
    zoomed = page.evaluate("[DMD2Site.tiles ? DMD2Site.tiles.cache.size : 0, DMD2Site.detailCount ? DMD2Site.detailCount('map') : 0]")
    for i in range(20):
        page.mouse.wheel(0, 120)
        if i % 5 == 4:
            page.wait_for_timeout(300)
    stop_to_look(page)
    r = page.evaluate("""() => { const R = window.__frames; R.run = false;
        return { after: R.after, latency: R.latency, max_frame_ms: Math.max(...R.all), frames: R.all.length }; }""")
    return r | {"tiles_loaded": zoomed[0], "detail_points_zoomed": zoomed[1]}


def frame_stats(runs: list[dict]) -> dict:
    """Frame times of several runs of scripted_pan_zoom, pooled: median and p95 per input event."""
    q = lambda a, p: sorted(a)[min(len(a) - 1, int(p * len(a)))]
    after, latency = [x for r in runs for x in r["after"]], [x for r in runs for x in r["latency"]]
    return {"after_median_ms": q(after, 0.5), "after_p95_ms": q(after, 0.95), "input_paint_median_ms": q(latency, 0.5),
            "input_paint_p95_ms": q(latency, 0.95), "max_frame_ms": max(r["max_frame_ms"] for r in runs),
            "frames": sum(r["frames"] for r in runs), "input_frames": len(after), "runs": len(runs),
            "tiles_loaded": runs[-1]["tiles_loaded"], "detail_points_zoomed": runs[-1]["detail_points_zoomed"]}


def pan_zoom(url: str, loads: int = 3) -> dict:
    """First render (median of `loads` cold loads) and PAN_ZOOM's frame times (one scripted run per load, pooled: the
    frames come in whole 16.7 ms steps, so one run's median can flip between steps) of a map page."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import open_map_page
    idle, runs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for _ in range(loads):
            ctx, page, idle_ms, _ready = open_map_page(browser, url, 180000)
            idle.append(idle_ms)
            runs.append(scripted_pan_zoom(page))
            ctx.close()
        browser.close()
    r = frame_stats(runs)
    return {"first_render_ms": statistics.median(idle), **{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}}


def frames(sizes: list[int], out: Path, reuse: bool = False) -> dict:
    """--frames: render the demo-size site and one site per size at the default cap (each in a child process), then
    measure each."""
    from dmd2report.config import ReportConfig
    max_points = ReportConfig().max_points
    rows = []
    for n in [0] + sizes:
        site = out / (f"frames-{n}" if n else "frames-demo")
        row = site.with_suffix(".json")
        if reuse and row.exists():   # measure again (the current site.js) without rendering again
            r = json.loads(row.read_text())
            shutil.copyfile(REPO / "templates" / "static" / "site.js", site / "static" / "site.js")
        else:
            t0 = time.time()
            r = run_child(REPO, n, site, max_points, False)
            r["child_s"] = round(time.time() - t0, 1)
            row.write_text(json.dumps(r))
        print(json.dumps(r), flush=True)
        rows.append((site, r))
    results = []
    for site, r in rows:
        t0 = time.time()
        r.update(pan_zoom((site / "map.html").as_uri()))
        r["browser_s"] = round(time.time() - t0, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    demo = results[0]
    for r in results[1:]:
        r["vs_demo"] = {k: round(r[k] / demo[k], 2) for k in ("first_render_ms", "after_median_ms", "after_p95_ms",
                                                                "input_paint_median_ms", "input_paint_p95_ms", "max_frame_ms")}
    return {"cores": os.cpu_count(), "load": round(os.getloadavg()[0], 2), "max_points": max_points, "demo": demo,
            "sites": results[1:]}


def run_child(root: Path, n: int, out: Path, max_points: int, old: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--site", str(out), "--max-points", str(max_points)]
    if old:
        cmd.append("--old")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    if r.returncode:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="10000,60000,250000")
    ap.add_argument("--max-points", default="60000")
    ap.add_argument("--baseline", default="", help="N values to render with the code before this change too")
    ap.add_argument("--baseline-ref", default="f2c731b")
    ap.add_argument("--out", default="/tmp/dmd2report-report-scale")
    ap.add_argument("--json", default="")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--one", type=int)
    ap.add_argument("--site")
    ap.add_argument("--old", action="store_true")
    ap.add_argument("--frames", default="", help="N values: first render and pan/zoom frame times of sites of "
                                                   "those sizes against a demo-size site (see the module docstring)")
    ap.add_argument("--reuse", action="store_true", help="--frames: measure sites rendered before (their site.js "
                                                              "replaced by the current one)")
    ap.add_argument("--compare-sites", default="", help="site folders: map first render of each, loads alternating "
                                                          "between them (side by side), nothing rendered")
    args = ap.parse_args()
    if args.compare_sites:
        sites = args.compare_sites.split(",")
        times = {s: [] for s in sites}
        for _ in range(3):
            for s in sites:
                times[s].append(first_render((Path(s) / "map.html").resolve().as_uri(), loads=1))
        for s, t in times.items():
            print(json.dumps({"site": s, "first_render_ms": statistics.median(t), "loads": t}))
        return
    if args.one is not None:
        print(json.dumps(one(args.one, args.site, int(args.max_points.split(",")[0]), args.old)))
        return
    if args.frames:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        r = frames([int(v) for v in args.frames.split(",")], out, args.reuse)
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    old_root = None
    if args.baseline:
        old_root = out / "baseline-tree"
        if not old_root.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_root), args.baseline_ref], check=True,
                           capture_output=True)
    jobs = [(n, mp, False) for n in map(int, args.n.split(",")) for mp in map(int, args.max_points.split(","))]
    jobs += [(n, 0, True) for n in map(int, filter(None, args.baseline.split(",")))]
    for n, mp, old in jobs:
        site = out / (f"old-{n}" if old else f"new-{n}-{mp}")
        r = run_child(old_root if old else REPO, n, site, mp or 1, old)
        if not args.no_browser:
            r["first_render_ms"] = first_render((site / "map.html").as_uri())
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
