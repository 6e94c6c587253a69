"""Scale benchmark (issue 20 item 6): time and peak host memory of fit, measure and render against N.

    PYTHONPATH=. nice -n 10 python benchmarks/scale.py --n-real 10000,50000 --n-gen 10000,50000 \
        --n-variant 2000,10000 --timeout 1800 --out /tmp/scale-cpu2.json

For each size, `write_synthetic_work_dir` writes a work directory without the model: a real store and
the gen-class / gen-uniform / gen-zero / gen-blend stores, written with `store.StoreWriter` as the
extract and generate stages write them (same manifests, chunk layout, metadata columns, class index),
with class-structured float16 features at the preset's layer widths (768 for `dmd2-imagenet64`'s
`encoder_bottleneck` and `midblock`: class means on a low-dimensional curved manifold, within-class
variation in a few directions plus isotropic noise), uint8 thumbnails of one colour per class, and a
few full mask-layer activations per class. The config file it writes records extract and generate as
done in `stages.json` (their keys from `pipeline.stage_keys`), so `dmd2report build` would start at fit.

Each stage then runs in a fresh process, `python -m dmd2report.cli -v <stage> --config <file>`, as a
user runs it: wall time of that process (imports included), the stage's own time (stages.json), and
its peak resident memory (VmHWM of that child, polled while it runs; see `run_stage`). A stage that does not
finish within `--timeout` is killed and recorded as "did not finish"; the stages after it at that
size are not run. atlas and trajectory need the model (generation by masking, few-step sampling) and
are not timed here: the config sets `trajectory.enabled = false` and no atlas is made, so render runs
without those pages.

Baseline: the only code path the package has is the current one (the numpy all-pairs search it
replaced is in `benchmarks/knn.py --trust`); every row here is that current path, at the sizes where
it finishes. Later fast paths are to be compared against these rows, in the same command.

Writes a JSON file of every measurement and a log-log PNG of stage time against N (drawn with Pillow;
matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from synthetic import VARIANTS, write_synthetic_work_dir  # noqa: E402  (tests/synthetic.py: the tests' writer too)

MODEL_STAGES_NOTE = ("atlas and trajectory need the generator (masking, few-step sampling): not timed; "
                     "trajectory.enabled = false and no atlas, so render runs without those pages")


# ---------------------------------------------------------------------------------------------
# One stage in a fresh process: wall time and peak resident memory.

def run_stage(stage: str, config: Path, timeout: float, workdir: Path, code: Path = REPO,
              build: tuple[str, ...] = ()) -> dict:
    """Run one stage of `config` with the package found under `code` (this checkout, or a baseline's).
    stage "build" with `build` = stages: `dmd2report build` forcing those stages, all in one process, as a
    user's build runs them (imports and the model's load paid once); its stage time is the sum over every stage
    it ran (a stage not named but not yet done, e.g. atlas after fit, runs too)."""
    # -v: the stage's step lines (no bars: its stderr is no terminal), each stamped here with the seconds
    # since the process started, so a row says where a stage's time went without a profiler's overhead
    forced = [a for s in build for a in ("--force", s)]
    before = _recorded(workdir)
    cmd = [sys.executable, "-m", "dmd2report.cli", "-v", stage, "--config", str(config), *forced]
    env = os.environ | {"PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(workdir.parent / f"{workdir.name}-{stage}.log", "w+", encoding="utf-8")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True, text=True, errors="replace")
    timeline: list[tuple[float, str]] = []

    def stamp():
        for line in p.stdout:
            t = round(time.perf_counter() - t0, 2)
            timeline.append((t, line.rstrip()[:300]))
            log.write(f"{t:9.2f} {line}")

    reader = threading.Thread(target=stamp, daemon=True)
    reader.start()
    status, rusage, finished = None, None, True
    # Peak memory: the child's own high-water mark (VmHWM), read while it runs. Its ru_maxrss from wait4
    # is no use: Linux carries the parent's peak into a child across fork + exec (exec_mmap keeps the old
    # image's high-water mark), so every stage would show this process's size after writing the stores.
    hwm_kib = 0
    while True:
        hwm_kib = max(hwm_kib, _vm_hwm_kib(p.pid))
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, rusage = os.wait4(p.pid, 0)
            finished = False
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    reader.join(timeout=10)
    p.returncode = os.waitstatus_to_exitcode(status)
    log.flush()
    log.seek(0)
    out = log.read()
    log.close()
    row = {"stage": stage, "wall_s": round(wall, 2), "peak_rss_gib": round(hwm_kib / 2**20, 3),
           "status": "ok" if finished and p.returncode == 0 else ("did not finish" if not finished else "failed"),
           "timeline": [[t, line] for t, line in timeline][:400]}
    if row["status"] == "ok":
        recorded = _recorded(workdir)
        if build:   # the stages this process ran: their records are new (not only given their results' digests)
            def ran(rec):
                return {k: (rec or {}).get(k) for k in ("key", "finished", "seconds")}
            row["stages_s"] = {s: rec["seconds"] for s, rec in recorded.items() if ran(before.get(s)) != ran(rec)}
            row["stage_s"] = round(sum(row["stages_s"].values()), 2)
        else:
            row["stage_s"] = recorded.get(stage, {}).get("seconds")
    elif row["status"] == "did not finish":
        row["timeout_s"] = timeout
    else:
        row["error"] = out[-2000:]
    return row


def _recorded(workdir: Path) -> dict:
    path = workdir / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, KiB; 0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# ---------------------------------------------------------------------------------------------
# Plot (Pillow: no matplotlib needed).

def loglog_png(path: Path, series: dict[str, list[tuple[float, float]]], title: str,
               unfinished: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """Filled dots: measured times; hollow dots: the time limit of a stage that did not finish (a lower bound)."""
    from PIL import Image, ImageDraw

    unfinished = unfinished or {}

    W, H, L, R, T, B = 900, 600, 90, 200, 50, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in [*series.values(), *unfinished.values()] for p in s if p[1] > 0]
    if not pts:
        img.save(path)
        return
    x0, x1 = math.floor(math.log10(min(p[0] for p in pts))), math.ceil(math.log10(max(p[0] for p in pts)))
    y0, y1 = math.floor(math.log10(min(p[1] for p in pts))), math.ceil(math.log10(max(p[1] for p in pts)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    X = lambda v: L + (math.log10(v) - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: H - B - (math.log10(v) - y0) / (y1 - y0) * (H - T - B)
    for e in range(x0, x1 + 1):
        for m in range(1, 10):
            v = m * 10.0 ** e
            if v > 10.0 ** x1:
                break
            d.line([(X(v), T), (X(v), H - B)], fill=(225, 225, 225) if m > 1 else (170, 170, 170))
        d.text((X(10.0 ** e) - 12, H - B + 8), f"1e{e}", fill="black")
    for e in range(y0, y1 + 1):
        for m in range(1, 10):
            v = m * 10.0 ** e
            if v > 10.0 ** y1:
                break
            d.line([(L, Y(v)), (W - R, Y(v))], fill=(225, 225, 225) if m > 1 else (170, 170, 170))
        d.text((L - 45, Y(10.0 ** e) - 6), f"1e{e} s", fill="black")
    d.rectangle([L, T, W - R, H - B], outline="black")
    d.text((L, 15), title, fill="black")
    d.text(((L + W - R) // 2 - 60, H - 30), "N real samples (log)", fill="black")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    for i, (name, s) in enumerate(series.items()):
        col = colours[i % len(colours)]
        s = sorted(p for p in s if p[1] > 0)
        xy = [(X(a), Y(b)) for a, b in s]
        if len(xy) > 1:
            d.line(xy, fill=col, width=3)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=col)
        for a, b in unfinished.get(name, []):
            d.ellipse([X(a) - 6, Y(b) - 6, X(a) + 6, Y(b) + 6], outline=col, width=2)
            d.text((X(a) + 9, Y(b) - 6), "did not finish", fill=col)
        d.line([(W - R + 15, T + 20 + 22 * i), (W - R + 40, T + 20 + 22 * i)], fill=col, width=3)
        d.text((W - R + 46, T + 14 + 22 * i), name, fill="black")
    img.save(path)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log time against log N (None for fewer than two sizes)."""
    p = [(math.log(a), math.log(b)) for a, b in points if b > 0]
    if len(p) < 2:
        return None
    x, y = np.array(p).T
    return float(np.polyfit(x, y, 1)[0])


# ---------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-real", default="50000", help="real samples; a comma list for a sweep")
    ap.add_argument("--n-gen", default="50000", help="class-conditioned samples (one value, or one per --n-real)")
    ap.add_argument("--n-variant", default="10000", help="samples of each other variant (uniform, zero, blend)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768, help="width of both layers (dmd2-imagenet64: 768)")
    ap.add_argument("--preset", default="dmd2-imagenet64")
    ap.add_argument("--stages", default="fit,measure,render",
                    help="of fit, measure, atlas, trajectory, render (atlas and trajectory need a checkpoint)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per stage before it counts as not finished")
    ap.add_argument("--one-process", action="store_true",
                    help="run --stages in one `dmd2report build` process (a row named build; its wall time is what a "
                         "user waits) instead of one process per stage; --timeout then bounds the whole build")
    ap.add_argument("--baseline", metavar="REF", help="also run every stage with the package as of git REF "
                    "(e.g. f2c731b, the code before issue 20), side by side on the same stores")
    ap.add_argument("--baseline-timeout", type=float, help="--timeout of the baseline's stages (default: --timeout)")
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint of --preset: enables atlas and trajectory")
    ap.add_argument("--random-checkpoint", type=Path, metavar="FILE",
                    help="like --checkpoint, with random weights written to FILE first if it is missing")
    ap.add_argument("--device", default="auto", help="run.device of the stages (auto: CUDA when present)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, help="where the work directories go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--reuse", action="store_true", help="with --root: use the stores a --keep run left there "
                    "(complete ones only) instead of writing them again")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--plot", type=Path, help="log-log PNG (default: --out with .png)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="no run: join the sizes of earlier --out files of one machine (e.g. one size per device "
                         "call) into --out and its plot")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.plot)

    n_real = _ints(args.n_real)
    n_gen, n_var = _ints(args.n_gen), _ints(args.n_variant)
    n_gen = n_gen * len(n_real) if len(n_gen) == 1 else n_gen
    n_var = n_var * len(n_real) if len(n_var) == 1 else n_var
    if not len(n_real) == len(n_gen) == len(n_var):
        ap.error("--n-gen and --n-variant take one value or one per --n-real")
    if args.random_checkpoint:
        args.checkpoint = random_checkpoint(args.random_checkpoint, args.preset, args.seed)
    stages = [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in ("fit", "measure", "atlas", "trajectory", "render"):
            ap.error(f"--stages: {s!r}; this benchmark times fit, measure, atlas, trajectory and render")
        if s in ("atlas", "trajectory") and not args.checkpoint:
            ap.error(f"--stages: {s} needs the model: give --checkpoint or --random-checkpoint ({MODEL_STAGES_NOTE})")
    base = args.root or Path(tempfile.mkdtemp(prefix="dmd2scale-"))
    baseline_code = checkout(args.baseline, base / f"code-{args.baseline}") if args.baseline else None
    import torch

    doc = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_start": os.getloadavg()},
        "code": _git_head(), "baseline": args.baseline,
        "classes": args.classes, "dims": args.dim, "preset": args.preset, "timeout_s": args.timeout,
        "checkpoint": "random weights" if args.random_checkpoint else (str(args.checkpoint) if args.checkpoint else None),
        "note": MODEL_STAGES_NOTE if not args.checkpoint else
        "trajectory.real_references = 0: the synthetic work directory has no real images to noise", "sizes": []}
    doc["one_process"] = args.one_process
    rows = ["build"] if args.one_process and stages else stages
    build = tuple(stages) if args.one_process else ()
    for nr, ng, nv in zip(n_real, n_gen, n_var):
        root = base / f"n{nr}-g{ng}-v{nv}"
        t0 = time.perf_counter()
        if args.reuse and stores_complete(root):
            cfg, write_s = root / "config.toml", None
            for stage in stages:   # the stages run again from the written stores
                shutil.rmtree(root / "work" / stage, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            cfg = write_synthetic_work_dir(root, nr, ng, nv, classes=args.classes,
                                           dims={"encoder_bottleneck": args.dim, "midblock": args.dim}, seed=args.seed,
                                           preset=args.preset, device=args.device, checkpoint=args.checkpoint)
            write_s = round(time.perf_counter() - t0, 1)
        size = {"n_real": nr, "n_gen_class": ng, "n_variant": nv, "n_generated": ng + 3 * nv,
                "write_s": write_s, "store_bytes": _bytes(root / "work" / "stores"), "stages": []}
        print(f"N real {nr:,}, generated {ng:,} + 3 x {nv:,}: stores "
              f"{'reused' if write_s is None else f'written in {write_s:.1f} s'} "
              f"({size['store_bytes'] / 2**30:.2f} GiB)", flush=True)
        doc["sizes"].append(size)
        paths = [("current", REPO, cfg, root / "work", args.timeout)]
        if baseline_code:
            paths.append((f"baseline {args.baseline}", baseline_code, *baseline_work_dir(cfg, root),
                          args.baseline_timeout or args.timeout))
        for code_name, code, config, workdir, timeout in paths:
            stopped = None
            for stage in rows:
                if stopped:
                    size["stages"].append({"stage": stage, "code": code_name,
                                           "status": f"not run ({stopped} did not finish)"})
                    continue
                row = {"code": code_name} | run_stage(stage, config, timeout, workdir, code, build=build)
                size["stages"].append(row)
                finish(doc, rows, args.out, args.plot)
                print(f"  {code_name:18s} {stage:10s} {row['status']:14s} wall {row.get('wall_s', 0):8.1f} s  "
                      f"stage {row.get('stage_s') or 0:8.1f} s  peak RSS {row.get('peak_rss_gib', 0):6.2f} GiB", flush=True)
                if row["status"] != "ok":
                    stopped = stage
                    if row.get("error"):
                        print(row["error"], file=sys.stderr)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    finish(doc, rows, args.out, args.plot)
    print_table(doc)
    print(f"wrote {args.out} and {args.plot or args.out.with_suffix('.png')}")
    if args.root is None and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def stores_complete(root: Path) -> bool:
    """Whether `root` holds a written synthetic work directory: its config and five complete stores."""
    stores = root / "work" / "stores"
    try:
        return (root / "config.toml").is_file() and all(
            json.loads((stores / name / "manifest.json").read_text()).get("status") == "complete"
            for name in ("real", *(f"gen-{v}" for v in ("class", *VARIANTS))))
    except (OSError, ValueError):
        return False


def random_checkpoint(path: Path, preset: str, seed: int) -> Path:
    """A safetensors checkpoint of `preset` with every parameter random (benchmarks/throughput.py's
    `random_weights`), written once: timings need the real architecture, not trained weights."""
    if not path.is_file():
        from safetensors.torch import save_file

        from dmd2report.models import build_preset
        sys.path.insert(0, str(REPO / "benchmarks"))
        from throughput import random_weights

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(random_weights(build_preset(preset), seed).state_dict(), str(path))
    return path


def checkout(ref: str, dest: Path) -> Path:
    """The package as of git `ref`, unpacked into `dest` (git archive: no work tree of this checkout changes)."""
    if not (dest / "dmd2report").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def baseline_work_dir(cfg: Path, root: Path) -> tuple[Path, Path]:
    """A second work directory on the same stores (linked, read only by these stages) with the same
    config apart from its work directory and site: (config, work directory)."""
    work = root / "work-baseline"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "stores").exists():
        (work / "stores").symlink_to(root / "work" / "stores", target_is_directory=True)
    shutil.copy2(root / "work" / "stages.json", work / "stages.json")
    text = cfg.read_text(encoding="utf-8")
    text = text.replace(f'workdir = "{root / "work"}"', f'workdir = "{work}"')
    text = text.replace(f'site = "{root / "site"}"', f'site = "{root / "site-baseline"}"')
    out = root / "config-baseline.toml"
    out.write_text(text, encoding="utf-8")
    return out, work


def finish(doc: dict, stages: list[str], out: Path, plot: Path | None) -> None:
    """Slopes, the JSON file and the plot, from what is measured so far (written after every stage, so
    that a run stopped part-way keeps its rows). One series per stage and code path."""
    doc["machine"]["load_avg_end"] = os.getloadavg()
    rows = [(z, r) for z in doc["sizes"] for r in z["stages"]]
    codes = list(dict.fromkeys(r.get("code", "current") for _, r in rows)) or ["current"]

    def name(stage, code):
        return stage if code == "current" else f"{stage} ({code})"

    def pick(stage, code, status):
        return [(z, r) for z, r in rows if r["stage"] == stage and r.get("code", "current") == code
                and r["status"] == status]

    series = {name(s, c): [(z["n_real"], r["wall_s"]) for z, r in pick(s, c, "ok")] for c in codes for s in stages}
    doc["loglog_slope_wall"] = {k: slope(p) for k, p in series.items()}
    rss = {name(s, c): [(z["n_real"] + z["n_generated"], r["peak_rss_gib"]) for z, r in pick(s, c, "ok")]
           for c in codes for s in stages}
    doc["loglog_slope_peak_rss"] = {k: slope(p) for k, p in rss.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    dnf = {name(s, c): [(z["n_real"], r["wall_s"]) for z, r in pick(s, c, "did not finish")]
           for c in codes for s in stages}
    loglog_png(plot or out.with_suffix(".png"), {k: v for k, v in series.items() if v or dnf.get(k)},
               f"dmd2report stage wall time against N real ({doc['machine']['cpus']} cores); hollow: did not finish",
               unfinished=dnf)


def merge(paths: list[Path], out: Path, plot: Path | None) -> int:
    """One document (and plot) from several runs' files: their sizes in order of N, each run's command
    and code kept under "runs" (a size's rows say which run they come from)."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    merged = {k: v for k, v in docs[0].items() if k not in ("sizes", "command", "code")}
    merged["runs"] = [{"file": p.name, "command": d["command"], "code": d["code"], "machine": d["machine"]}
                      for p, d in zip(paths, docs)]
    merged["sizes"] = sorted(({**z, "run": i} for i, d in enumerate(docs) for z in d["sizes"]), key=lambda z: z["n_real"])
    stages = list(dict.fromkeys(r["stage"] for z in merged["sizes"] for r in z["stages"]))
    finish(merged, stages, out, plot)
    print_table(merged)
    print(f"wrote {out} and {plot or out.with_suffix('.png')}")
    return 0


def print_table(doc: dict) -> None:
    print("\n| N real | generated | code | stage | status | wall s | stage s | peak RSS GiB | GiB per M samples |")
    print("|---:|---:|---|---|---|---:|---:|---:|---:|")
    for z in doc["sizes"]:
        total = z["n_real"] + z["n_generated"]
        for r in z["stages"]:
            ok = r["status"] == "ok"
            per_m = f"{r['peak_rss_gib'] / total * 1e6:.1f}" if ok else "-"
            print(f"| {z['n_real']:,} | {z['n_gen_class']:,} + 3 x {z['n_variant']:,} | {r.get('code', 'current')} | "
                  f"{r['stage']} | {r['status']} | {r.get('wall_s', '-')} | {r.get('stage_s', '-') if ok else '-'} | "
                  f"{r.get('peak_rss_gib', '-')} | {per_m} |")
    print("log-log slope of wall time against N real: " + ", ".join(
        f"{s} {v:.2f}" if v is not None else f"{s} -" for s, v in doc["loglog_slope_wall"].items()))
    print("log-log slope of peak RSS against N (real + generated): " + ", ".join(
        f"{s} {v:.2f}" if v is not None else f"{s} -" for s, v in doc["loglog_slope_peak_rss"].items()))


def _bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _git_head() -> str:
    """The checkout's commit, with "+changes" when its tracked files differ from it (a device copy may carry
    a working tree whose git HEAD is older than its files: then the commit alone would mislead)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" +changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
