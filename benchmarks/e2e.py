"""End to end at ImageNet scale (issue 20 item 8): one `dmd2report build` over synthetic ImageNet64 NPZ
batches with a random-weight `dmd2-imagenet64` checkpoint, every stage's time recorded.

    PYTHONPATH=. python benchmarks/e2e.py --n 1281167 --root /tmp/e2e --timeout 560 --out $OUT

Run on the GPU machine. The data (`train_data_batch_1..10.npz`, smooth random 64x64 images, labels 1..1000,
the ImageNet64 layout) and the checkpoint are written once under --root; then `dmd2report build --compile on`
runs in a child process for at most --timeout seconds. The build is resumable (extraction and generation
resume their stores chunk by chunk, finished stages are skipped), so when one device call is not enough
the same command in the next call carries on: each call appends its record (the stages it finished, with
their own times from the work directory's stages.json) to `<out>/e2e.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from scale import random_checkpoint  # noqa: E402

IMAGENET64_TRAIN = 1_281_167
FILES = 10


def write_npz(root: Path, n: int, seed: int = 0) -> None:
    """ImageNet64-format batches: `data` uint8 (m, 3*64*64), `labels` 1..1000; written once (a file
    that exists is kept), each through a temporary name so a killed run leaves no half file."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = -(-n // FILES)
    for i in range(FILES):
        path = root / f"train_data_batch_{i + 1}.npz"
        m = min(per_file, n - i * per_file)
        if path.exists() or m <= 0:
            continue
        rng = np.random.default_rng([seed, i])
        base = rng.integers(0, 256, (m, 3, 8, 8), dtype=np.uint8)   # smooth images: 8x8 blocks
        data = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3).reshape(m, -1)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, data=data, labels=rng.integers(1, 1001, m))
        os.replace(tmp, path)


def config_text(root: Path, checkpoint: Path, n_gen: int, n_variant: int, extra: str = "") -> str:
    return f"""# written by benchmarks/e2e.py
[run]
name = "end to end at ImageNet scale (synthetic data, random weights)"
workdir = "{root / 'work'}"
site = "{root / 'site'}"

[model]
preset = "dmd2-imagenet64"
checkpoint = "{checkpoint}"

[data]
source = "imagenet64-npz"
path = "{root / 'npz'}"
max_samples = 0

[generate]
samples = {n_gen}
variant_samples = {n_variant}
{extra}"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=IMAGENET64_TRAIN, help="real images (ImageNet64 train: 1,281,167)")
    ap.add_argument("--gen", type=int, default=100_000, help="class-conditioned samples")
    ap.add_argument("--variant", type=int, default=50_000, help="samples of each other variant (3 of them)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/e2e"))
    ap.add_argument("--timeout", type=float, default=560.0, help="seconds this call may run the build")
    ap.add_argument("--compile", default="on")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--config-extra", default="", help="TOML appended to the config (other sections), e.g. for a "
                    "quick check on the CPU: '[trajectory]\\nsamples = 4'")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    write_npz(args.root / "npz", args.n)
    checkpoint = random_checkpoint(args.root / "random-dmd2-imagenet64.safetensors", "dmd2-imagenet64", 0)
    cfg = args.root / "config.toml"
    cfg.write_text(config_text(args.root, checkpoint, args.gen, args.variant,
                                       args.config_extra.replace("\\n", "\n")), encoding="utf-8")
    prepare_s = time.perf_counter() - t0
    print(f"data and checkpoint ready in {prepare_s:.0f} s", flush=True)

    cmd = [sys.executable, "-m", "dmd2report.cli", "build", "--config", str(cfg), "--compile", args.compile]
    env = os.environ | {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    t1 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        code = p.wait(timeout=max(1.0, args.timeout - prepare_s))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        code = None
    wall = time.perf_counter() - t1
    stages_file = args.root / "work" / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    record = {"n_real": args.n, "n_generated": args.gen + 3 * args.variant, "compile": args.compile,
              "prepare_s": round(prepare_s, 1), "build_wall_s": round(wall, 1),
              "finished": code == 0, "exit_code": code,
              "stages": {s: {"seconds": v.get("seconds"), "unfinished": bool(v.get("unfinished"))}
                         for s, v in stages.items()},
              "site_bytes": sum(f.stat().st_size for f in (args.root / "site").rglob("*") if f.is_file())
              if (args.root / "site").is_dir() else None}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "e2e.json"
    runs = json.loads(log.read_text()) if log.exists() else []
    runs.append(record)
    log.write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=1))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
