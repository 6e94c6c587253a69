"""How good the demo generator is, measured against real demo images only.

Class fidelity: how often the bundled demo classifier (encoders/demo_classifier.py, trained on real demo
images only, none generated: `python -m dmd2report.demo.classifier train`) assigns a generated sample
G(80 z, 80, one_hot(c)) to its conditioning class c.
Diversity: for every class, the mean pairwise pixel distance (L2 over the image in [0, 1],
flattened) between generated samples, against the same figure for real images of the class.
The same measurement on an untrained network of the same shape shows what chance looks like.

    python -m dmd2report.demo.quality                       # the shipped weights
    python -m dmd2report.demo.quality --untrained           # same shape, random weights
    python -m dmd2report.demo.quality --weights runs/demo/generator.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import pdist

from ..encoders.demo_classifier import KIND, DemoClassifier, load_demo_classifier
from ..errors import UserError
from ..files import save_text
from ..models.precond import EDMPrecond
from ..resources import BUNDLED_ENCODERS, bundled_by_name
from ..sampling import condition_vectors, generate, sample_noise, to_uint8
from .dataset import DEMO_CLASSES, make_demo_images
from .train import demo_file, demo_model_config, load_weights

REAL_EVAL_SEED = 0  # held-out real images: the classifier's own accuracy and the diversity reference


def bundled_classifier(path: Path | None = None) -> DemoClassifier:
    """The demo classifier (data/demo/classifier.safetensors unless `path`), fitted on real demo images only."""
    return load_demo_classifier(KIND, path or bundled_by_name(BUNDLED_ENCODERS, "demo-classifier", "encoder weights"))


def generate_per_class(net, n_per_class: int, seed: int = 0, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` one-step samples of every class, uint8 HWC, labels 0..K-1 (noise row i from (seed, i))."""
    labels = np.repeat(np.arange(net.label_dim), n_per_class)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    out = []
    for i in range(0, len(labels), batch):
        idx = np.arange(i, min(i + batch, len(labels)))
        out.append(to_uint8(generate(net, sample_noise(seed, idx, shape), condition_vectors("class", net.label_dim, classes=labels[idx]))))
    return np.concatenate(out), labels


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Mean L2 distance between all pairs, images as flattened vectors in [0, 1]."""
    return float(pdist(images.reshape(len(images), -1).astype(np.float64) / 255.0).mean())


def measure(net, classifier: DemoClassifier, n_per_class: int = 50, seed: int = 0) -> dict:
    """Class fidelity and per-class diversity of `net`'s samples, with the real images' figures beside them."""
    fake, fake_labels = generate_per_class(net, n_per_class, seed)
    real, real_labels = make_demo_images(n_per_class, seed=REAL_EVAL_SEED)
    fake_pred, real_pred = classifier.predict(fake), classifier.predict(real)
    per_class = []
    for c, (_, name) in enumerate(DEMO_CLASSES):
        f, r = fake_labels == c, real_labels == c
        d_fake, d_real = mean_pairwise_distance(fake[f]), mean_pairwise_distance(real[r])
        per_class.append(dict(class_id=c, name=name, fidelity=float((fake_pred[f] == c).mean()),
                              real_accuracy=float((real_pred[r] == c).mean()), diversity_generated=d_fake,
                              diversity_real=d_real, diversity_ratio=d_fake / d_real))
    return dict(n_per_class=n_per_class, seed=seed,
                class_fidelity=float((fake_pred == fake_labels).mean()),
                classifier_real_accuracy=float((real_pred == real_labels).mean()),
                min_diversity_ratio=min(p["diversity_ratio"] for p in per_class),
                per_class=per_class)


def format_report(result: dict, title: str) -> str:
    lines = [f"{title}: class fidelity {result['class_fidelity']:.3f} "
             f"(classifier on held-out real images: {result['classifier_real_accuracy']:.3f}), "
             f"min diversity ratio {result['min_diversity_ratio']:.2f}, {result['n_per_class']} samples/class, seed {result['seed']}",
             "| class | fidelity | real acc. | diversity gen. | diversity real | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in result["per_class"]:
        lines.append(f"| {p['class_id']} {p['name']} | {p['fidelity']:.2f} | {p['real_accuracy']:.2f} | "
                     f"{p['diversity_generated']:.2f} | {p['diversity_real']:.2f} | {p['diversity_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmd2report demo-quality", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="generator safetensors (default: the shipped demo generator)")
    parser.add_argument("--untrained", action="store_true", help="measure a randomly initialised network of the same shape")
    parser.add_argument("--per-class", type=int, default=50, help="generated and real samples per class")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the generated samples (and of the random weights)")
    parser.add_argument("--classifier", type=Path, default=None, help="demo classifier safetensors (default: the bundled one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    try:
        if args.per_class < 2:
            raise UserError("--per-class must be at least 2 (diversity needs pairs)")
        model_cfg = demo_model_config()
        if args.untrained:
            if args.weights:
                raise UserError("give either --weights or --untrained, not both")
            torch.manual_seed(args.seed)
            net, title = EDMPrecond(**model_cfg).eval().requires_grad_(False), "untrained (random weights)"
        else:
            path = args.weights or demo_file("generator.safetensors")
            net, title = load_weights(path, model_cfg), str(path)
        start = time.perf_counter()
        classifier = bundled_classifier(args.classifier)
        result = measure(net, classifier, args.per_class, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result, title))
    print(f"({time.perf_counter() - start:.1f}s)")
    if args.json:
        try:
            save_text(args.json, json.dumps(result | {"weights": title}, indent=2) + "\n")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
