"""Train the demo classifier (data/demo/classifier.safetensors) on real demo images, deterministic from its seed.

The images are drawn in memory (`make_demo_images`, seed TRAIN_SEED, apart from the generator's training images at
seed 1000 and the report's real images at seed 0); the held-out accuracy is measured on the report's own real images
(seed 0), which training never sees. Adam with a one-cycle schedule, batch 128, random horizontal and vertical flips
(every demo class is closed under both; a 90 degree turn is not, it would make level stripes vertical). The same
seed, torch version and thread count give the same bytes.

    python -m dmd2report.demo.classifier train data/demo/classifier.safetensors --seed 0 --epochs 10
    python -m dmd2report.demo.classifier eval data/demo/classifier.safetensors
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..encoders.demo_classifier import KIND, DemoClassifier, load_demo_classifier
from ..errors import UserError
from ..files import save_bytes
from .dataset import DATASET_VERSION, DEMO_CLASSES, NUM_CLASSES, make_demo_images

TRAIN_SEED = 2000   # the classifier's training images (the generator trained on seed 1000)
HELDOUT_SEED = 0    # the report's real images: the held-out set
DEFAULTS = dict(seed=0, epochs=10, per_class=500, width=32, batch=128, lr=3e-3, heldout_per_class=200)


def train_classifier(seed: int = 0, epochs: int = 10, per_class: int = 500, width: int = 32, batch: int = 128,
                     lr: float = 3e-3, log=None) -> DemoClassifier:
    """A DemoClassifier fitted on `per_class` real images a class, deterministic from `seed` (weights init, batch
    order, flips)."""
    images, labels = make_demo_images(per_class, seed=TRAIN_SEED)
    x = DemoClassifier.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
    y = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DemoClassifier(width).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            xb = x[idx]
            flip = torch.rand(2, generator=gen) < 0.5
            xb = xb.flip(3) if flip[0] else xb
            xb = xb.flip(2) if flip[1] else xb
            loss = F.cross_entropy(net.embed(xb)[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    return net.eval().requires_grad_(False)


def heldout_accuracy(net: DemoClassifier, per_class: int = 200) -> tuple[float, list[float]]:
    """Accuracy on `per_class` real images a class of the held-out seed: overall and per class."""
    images, labels = make_demo_images(per_class, seed=HELDOUT_SEED)
    right = net.predict(images) == labels
    return float(right.mean()), [float(right[labels == c].mean()) for c in range(NUM_CLASSES)]


def save_classifier(net: DemoClassifier, path: Path, metadata: dict) -> None:
    """safetensors of exactly DemoClassifier.state_dict() (float32), the training record as JSON-valued metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_bytes(path, save(state, metadata={k: json.dumps(v) for k, v in metadata.items()}))


def read_metadata(path: Path) -> dict:
    """The training record of a classifier file (values decoded from JSON)."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: no readable classifier metadata ({e})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmd2report demo-classifier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on real demo images and write a safetensors file")
    p.add_argument("out", type=Path)
    for name in ("seed", "epochs", "per_class", "width", "batch", "heldout_per_class"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the bytes depend on it)")
    p = sub.add_parser("eval", help="held-out accuracy of a classifier file, per class")
    p.add_argument("weights", type=Path)
    p.add_argument("--heldout-per-class", type=int, default=DEFAULTS["heldout_per_class"])
    args = parser.parse_args(argv)
    try:
        for name in ("epochs", "per_class", "width", "batch", "heldout_per_class", "threads"):
            if getattr(args, name, 1) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if args.command == "eval":
            net = load_demo_classifier(KIND, args.weights)
            acc, per_class = heldout_accuracy(net, args.heldout_per_class)
        else:
            if args.out.suffix != ".safetensors":
                raise UserError(f"{args.out}: the classifier is written as safetensors; give a .safetensors path")
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            net = train_classifier(args.seed, args.epochs, args.per_class, args.width, args.batch, args.lr,
                                   log=lambda line: print(line, flush=True))
            seconds = time.perf_counter() - start
            acc, per_class = heldout_accuracy(net, args.heldout_per_class)
            command = "python -m dmd2report.demo.classifier " + shlex.join(argv if argv is not None else sys.argv[1:])
            save_classifier(net, args.out, dict(
                kind=KIND, seed=args.seed, epochs=args.epochs, per_class=args.per_class, width=args.width,
                batch=args.batch, lr=args.lr, train_seed=TRAIN_SEED, heldout_seed=HELDOUT_SEED,
                heldout_per_class=args.heldout_per_class, heldout_accuracy=round(acc, 4),
                heldout_accuracy_per_class=[round(a, 4) for a in per_class], dataset_version=DATASET_VERSION,
                torch=torch.__version__, threads=args.threads, command=command))
            print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {seconds:.0f}s")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"held-out accuracy {acc:.4f} ({args.heldout_per_class} real images a class, seed {HELDOUT_SEED})")
    for (_, name), a in zip(DEMO_CLASSES, per_class):
        print(f"  {name:<16} {a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
