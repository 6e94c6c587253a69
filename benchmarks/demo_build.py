"""Wall-clock of `dmd2report build` with no arguments (the demo report) on this machine.

    python benchmarks/demo_build.py [--runs 1] [--keep DIR]

Runs, side by side in one command and in fresh directories:
  1. cold: `dmd2report build` with no arguments (demo data written, every stage computed);
  2. warm: the same command again (every stage cached: the baseline cost of a no-op rebuild);
  3. render only: `dmd2report build --force render` (what a template or plot change costs).
Prints each stage's time (from the workdir's stages.json), the sample counts, the site size, and the
ratios cold/warm and cold/render against the 3-minute budget of the issue. With `--baseline REF` the
same three builds run again with the package as of git REF (e.g. f2c731b), in the same command, and the
cold builds' stage times are printed side by side. With `--example NAME` the same three builds of a bundled
example config (`dmd2report init --example NAME`, e.g. demo-compare) follow the demo's, in the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 180.0


def timed(cmd: list[str], cwd: Path, code: Path | None = None) -> float:
    env = os.environ | {"PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", "")} if code else None
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return dt


def site_bytes(site: Path) -> int:
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="cold builds to time (each in a fresh directory)")
    ap.add_argument("--keep", type=Path, help="keep the last run's directory here")
    ap.add_argument("--baseline", metavar="REF", help="also time the package as of git REF, side by side")
    ap.add_argument("--example", metavar="NAME", help="also time a bundled example config (dmd2report init --example)")
    args = ap.parse_args()
    from dmd2report.config import load_config

    cli = [sys.executable, "-m", "dmd2report.cli"]
    paths = [("current", None)]
    if args.baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from scale import checkout

        paths.append((f"baseline {args.baseline}",
                      checkout(args.baseline, Path(tempfile.mkdtemp(prefix="dmd2code-")) / args.baseline)))
    builds = [("demo", [])] + ([(f"example {args.example}", ["--config", "example.toml"])] if args.example else [])
    colds, table = [], {}
    for (what, config), (version, code) in ((b, p) for b in builds for p in paths):
        name = what if len(paths) == 1 else f"{what}, {version}"
        for i in range(args.runs):
            root = Path(tempfile.mkdtemp(prefix="dmd2demo-"))
            if config:
                timed(cli + ["init", "--example", args.example, "example.toml"], root, code)
            run = load_config(root / "example.toml" if config else None).run
            workdir, site = root / run.workdir, root / run.site
            exe = cli + ["build"] + config
            cold = timed(exe, root, code)
            stages = json.loads((workdir / "stages.json").read_text())
            warm = timed(exe, root, code)
            render = timed(exe + ["--force", "render"], root, code)
            colds.append((name, cold))
            table[name] = {k: v["seconds"] for k, v in stages.items()} | {"cold build": cold}
            counts = {str(p.parent.relative_to(workdir / "stores")): json.loads(p.read_text())["count"]
                      for p in sorted((workdir / "stores").rglob("manifest.json"))}
            print(f"{name} run {i + 1}: cold {cold:.1f} s | warm (all cached) {warm:.1f} s | render only {render:.1f} s")
            print("  stages: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in
                                           sorted(stages.items(), key=lambda kv: kv[1]["finished"])))
            print(f"  samples: {counts}")
            print(f"  site: {site_bytes(site) / 1e6:.1f} MB, pages: {len(list(site.rglob('*.html')))}")
            print(f"  ratios: cold/warm {cold / warm:.1f}x, cold/render {cold / render:.1f}x, cold/budget "
                  f"{cold / BUDGET_S:.2f} ({'within' if cold <= BUDGET_S else 'OVER'} the {BUDGET_S:.0f} s budget)")
            if args.keep and i == args.runs - 1 and code is None:
                shutil.rmtree(args.keep, ignore_errors=True)
                shutil.move(str(root), args.keep)
            else:
                shutil.rmtree(root, ignore_errors=True)
    print(f"cores: {os.cpu_count()}; cold builds: " + ", ".join(f"{n} {c:.1f} s" for n, c in colds))
    if len(table) > 1:
        names = list(table)
        print("| stage | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
        for stage in table[names[0]]:
            print(f"| {stage} | " + " | ".join(f"{table[n].get(stage, float('nan')):.1f} s" for n in names) + " |")


if __name__ == "__main__":
    main()
