"""What the generate stage costs around the network: its set-up, its per-chunk work and its end, on the CPU.

    PYTHONPATH=. python benchmarks/stage_overhead.py [--samples 50000] [--variants class,uniform,zero,blend]

On a GPU the network runs asynchronously, so the stage's CPU work between chunks is hidden behind it,
but whatever the CPU does before the first chunk's forward pass (store set-up, label vectors, the
first chunk's noise) and after the last one (the writer draining, the manifest) is GPU idle time
(`throughput.py --busy`: `idle_outside_gpu_span_s`). This runs the real `generate_set` of the full
`dmd2-imagenet64` preset (1,000 classes, chunks of 4,096) with the forward passes replaced by a
stand-in that returns results of the right shapes at once, and reports per variant:

- head: from the call to the first chunk's forward pass;
- between chunks: the main thread's time from one chunk's forward passes to the next one's (on a GPU
  it must stay below a chunk's compute, ~2 s at 2,000 img/s);
- tail: from the last chunk's forward passes to the return (store written, manifest).

The first variant also pays one-time costs of the process (imports, layer shapes); compare the others.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmd2report.stages.generate as generate_stage  # noqa: E402
from dmd2report.classes import ClassIndex  # noqa: E402
from dmd2report.config import Config  # noqa: E402
from dmd2report.workdir import WorkDir  # noqa: E402
from dmd2report.features import feature_dims  # noqa: E402
from dmd2report.models import build_preset  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--variants", default="class,uniform,zero,blend")
    args = ap.parse_args()
    net = build_preset("dmd2-imagenet64").eval()
    marks: list[tuple[str, float]] = []

    def stand_in(net_, z, c, layers, reducer, device, batch_size, thumb_size, bar, reencode_labels=None):
        marks.append(("start", time.perf_counter()))
        n = len(z)
        dims = feature_dims(net, layers, config.features.reduce)
        feats = {l: [torch.zeros(n, dims[l], dtype=reducer.dtype)] for l in layers}
        thumbs = [torch.zeros(n, thumb_size, thumb_size, 3, dtype=torch.uint8)]
        bar.update(n)
        marks.append(("end", time.perf_counter()))
        return feats, thumbs, [torch.ones(n, dtype=torch.bool)]

    generate_stage._generate_chunk = stand_in
    work = Path(tempfile.mkdtemp(prefix="dmd2-overhead-"))
    config = Config()
    config.run.workdir, config.run.device = str(work), "cpu"
    config.model.preset = "dmd2-imagenet64"
    config.features.generated = "generation"
    config.report.thumb_size = 32
    n = args.samples
    classes = np.arange(n) % 1000
    print(f"{n} samples, chunks of {config.features.chunk_size}, {torch.get_num_threads()} torch threads")
    for variant in args.variants.split(","):
        vectors = None
        if variant == "blend":  # five classes per sample, as throughput.py's blend rows
            rng = np.random.default_rng(0)
            vectors = np.zeros((n, 1000), np.float32)
            for _ in range(5):
                vectors[np.arange(n), rng.integers(0, 1000, n)] += 0.2
        marks.clear()
        t0 = time.perf_counter()
        generate_stage.generate_set(config, WorkDir(config.run.workdir), net, "overhead", variant, classes,
                                    np.arange(n), label_vectors=vectors, classes=ClassIndex.imagenet(),
                                    overwrite=True, progress=False)
        t1 = time.perf_counter()
        starts = [t for k, t in marks if k == "start"]
        ends = [t for k, t in marks if k == "end"]
        between = [a - b for a, b in zip(starts[1:], ends[:-1])]
        print(f"{variant:<8} head {starts[0] - t0:6.3f} s   between chunks mean {np.mean(between):.3f} s "
              f"max {max(between):.3f} s   tail {t1 - ends[-1]:.3f} s   ({len(starts)} chunks, total {t1 - t0:.2f} s)",
              flush=True)


if __name__ == "__main__":
    main()
