"""Train the demo generator: an EDM teacher on the demo dataset, distilled to one step at sigma=80.

Phase 1 trains a class-conditional EDM denoiser (Karras et al. 2022: log-normal sigma sampling,
loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, Adam, EMA). Phase 2 runs the
teacher's deterministic Heun sampler from sigma=80 to 0 on fresh noise to get (z, class, x0)
pairs. Phase 3 trains the student, initialised from the teacher, so that G(80 z, 80, c) = x0
(knowledge distillation, Luhman & Luhman 2021) under a pseudo-Huber loss. The student is the
shipped generator: the same EDMPrecond/DhariwalUNet, used exactly as DMD2's generator is.

    python -m dmd2report.demo.train --out runs/demo --device cuda --seed 0

Every hyperparameter comes from data/demo/train_config.json (override one with
`--set section.key=VALUE`, VALUE in JSON). Each phase also stops at its `max_seconds`, so a
run on a slower machine ends in bounded time; the steps actually done are recorded in
OUT/train_config.json under "run" together with the command and seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import UserError
from ..files import atomic_write, save_bytes, save_text
from ..models.precond import EDMPrecond
from ..resources import bundled_file
from ..sampling import SIGMA_MAX

log = logging.getLogger(__name__)


def demo_file(name: str) -> Path:
    """A file of the bundled demo (data/demo/ of a checkout, dmd2report.bundled/demo installed)."""
    return bundled_file(f"demo/{name}")


def load_train_config(path: str | Path | None = None) -> dict:
    path = Path(path) if path else demo_file("train_config.json")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: training config not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    missing = [s for s in ("model", "data", "teacher", "pairs", "student") if s not in config]
    if missing:
        raise UserError(f"{path}: missing section(s) {', '.join(missing)}")
    return config


def demo_model_config(path: str | Path | None = None) -> dict:
    """EDMPrecond keywords of the demo generator (sigma_min/sigma_max keep EDMPrecond's defaults, 0 and inf)."""
    return dict(load_train_config(path)["model"])


def apply_overrides(config: dict, assignments: list[str]) -> dict:
    """`section.key=VALUE` (VALUE parsed as JSON, else taken as a string) into a copy of the config."""
    config = copy.deepcopy(config)
    for item in assignments:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in config or name not in config[section]:
            raise UserError(f"--set {item!r}: expected SECTION.KEY=VALUE with a key of the config, "
                            f"sections: {', '.join(config)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        config[section][name] = value
    return config


# ---------------------------------------------------------------------------------------------
# Training pieces.

def edm_loss(net, images, labels, P_mean, P_std, sigma_data):
    """EDM's denoising loss per sample (Karras et al. 2022, eq. 2 with their weighting)."""
    sigma = (torch.randn(images.shape[0], 1, 1, 1, device=images.device) * P_std + P_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    denoised = net(images + torch.randn_like(images) * sigma, sigma.flatten(), labels)
    return (weight * (denoised - images) ** 2).mean(dim=(1, 2, 3))


def pseudo_huber(a, b):
    """sqrt(|a-b|^2 + c^2) - c per sample, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023): L2's
    gradient near zero, L1's robustness to the few pairs the teacher got badly wrong."""
    dim = a[0].numel()
    c = 0.00054 * dim ** 0.5
    return ((a - b).flatten(1).square().sum(1) + c * c).sqrt() - c


class EMA:
    """EDM's EMA: half-life in images, ramped up to `rampup` of the images seen so far."""

    def __init__(self, net, halflife_images, rampup=0.05):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.halflife_images, self.rampup = halflife_images, rampup

    @torch.no_grad()
    def update(self, net, images_seen, batch):
        halflife = min(self.halflife_images, self.rampup * images_seen) if self.rampup else self.halflife_images
        beta = 0.5 ** (batch / max(halflife, 1e-8))
        torch._foreach_lerp_(list(self.net.parameters()), list(net.parameters()), 1 - beta)


@torch.no_grad()
def heun_sample(net, z, labels, num_steps=18, sigma_min=0.002, sigma_max=SIGMA_MAX, rho=7.0, autocast=None):
    """EDM's deterministic 2nd-order sampler (Algorithm 1, no churn) from sigma_max to 0."""
    i = torch.arange(num_steps, dtype=torch.float64, device=z.device)
    t = (sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=t.dtype, device=t.device)])
    x = z.to(torch.float64) * t[0]
    for cur, nxt in zip(t[:-1], t[1:]):
        with _autocast(z.device, autocast):
            d = (x - net(x.float(), cur.float(), labels).double()) / cur
        x_next = x + (nxt - cur) * d
        if nxt > 0:
            with _autocast(z.device, autocast):
                d2 = (x_next - net(x_next.float(), nxt.float(), labels).double()) / nxt
            x_next = x + (nxt - cur) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x.float()


def _autocast(device, enabled=None):
    # bfloat16 on CUDA: the GPU's fast path; the loss, EMA and Adam state stay in float32.
    enabled = device.type == "cuda" if enabled is None else enabled
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _one_hot(labels, num_classes):
    return torch.nn.functional.one_hot(labels, num_classes).float()


class _Log:
    """Loss records to OUT/train_log.jsonl (one JSON object a line) and the log (INFO)."""

    def __init__(self, path: Path):
        self.path, self.records = path, []
        path.write_text("")

    def __call__(self, **record):
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))


def _lr(base, step, warmup):
    return base * min(1.0, (step + 1) / max(warmup, 1))


def _train_loop(net, cfg, device, phase: str, n_items: int, batch: int, gen_seed: int, loss_of, records, extra_record=None,
                on_snapshot=None):
    """Adam with warm-up and an EMA over `cfg["steps"]` steps of random batches of item indices, within
    `cfg["max_seconds"]`, logging the mean loss every `log_every` steps (and `extra_record(ema_net)`);
    after each step listed in `cfg["snapshot_steps"]`, `on_snapshot(step, ema_net)`."""
    snapshots = set(cfg.get("snapshot_steps", ()))
    ema = EMA(net, cfg["ema_halflife_images"], cfg["ema_rampup"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator(device).manual_seed(gen_seed)
    start, acc, seen = time.perf_counter(), torch.zeros((), device=device), 0
    step = 0
    for step in range(cfg["steps"]):
        idx = torch.randint(n_items, (batch,), device=device, generator=gen)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg["lr"], step, cfg["warmup_steps"])
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += batch
        ema.update(net, seen, batch)
        acc += loss.detach()
        elapsed = time.perf_counter() - start
        last = step + 1 == cfg["steps"] or elapsed > cfg["max_seconds"]
        if (step + 1) % cfg["log_every"] == 0 or last:
            n = (step % cfg["log_every"]) + 1
            record = dict(phase=phase, step=step + 1, loss=float(acc) / n, images=seen, seconds=round(elapsed, 2))
            records(**record, **(extra_record(ema.net) if extra_record else {}))
            acc.zero_()
        if on_snapshot and step + 1 in snapshots:
            on_snapshot(step + 1, ema.net)
        if last:
            break
    return ema.net, step + 1


def train_teacher(images, labels, model_cfg, cfg, device, records, seed):
    """EDM denoiser on `images` (N,3,R,R) in [-1,1] on `device`; returns the EMA network."""
    torch.manual_seed(seed)
    net = EDMPrecond(**model_cfg).to(device).train()
    sigma_data = model_cfg["sigma_data"]

    def loss_of(idx):
        with _autocast(device):
            return edm_loss(net, images[idx], labels[idx], cfg["P_mean"], cfg["P_std"], sigma_data).mean()

    return _train_loop(net, cfg, device, "teacher", len(images), cfg["batch"], seed, loss_of, records)


@torch.no_grad()
def make_pairs(teacher, count, num_classes, cfg, device, seed):
    """(z, one-hot labels, x0): the teacher's ODE solution from 80 z, classes balanced."""
    gen = torch.Generator(device).manual_seed(seed + 1)
    res = teacher.img_resolution
    zs, cs, xs, start = [], [], [], time.perf_counter()
    for begin in range(0, count, cfg["batch"]):
        n = min(cfg["batch"], count - begin)
        z = torch.randn(n, teacher.img_channels, res, res, device=device, generator=gen)
        c = _one_hot(torch.arange(begin, begin + n, device=device) % num_classes, num_classes)
        x0 = heun_sample(teacher, z, c, cfg["heun_steps"], cfg["sigma_min"], SIGMA_MAX, cfg["rho"])
        zs.append(z), cs.append(c), xs.append(x0.clamp(-1, 1))
        if time.perf_counter() - start > cfg["max_seconds"]:
            break
    return torch.cat(zs), torch.cat(cs), torch.cat(xs), time.perf_counter() - start


def train_student(teacher, pairs, cfg, device, records, seed, on_snapshot=None):
    """One-step student G(80 z, 80, c) -> x0, initialised from the teacher; returns its EMA.
    `on_snapshot(step, ema_net)` receives the EMA after each of `cfg["snapshot_steps"]`."""
    torch.manual_seed(seed + 2)
    z, c, x0 = pairs
    holdout = min(cfg["holdout"], len(z) // 4)
    train_n = len(z) - holdout
    net = copy.deepcopy(teacher).train().requires_grad_(True)

    def loss_of(idx):
        with _autocast(device):
            out = net(SIGMA_MAX * z[idx], torch.full((len(idx),), SIGMA_MAX, device=device), c[idx])
        return pseudo_huber(out.float(), x0[idx]).mean()

    def holdout_record(ema_net):
        return {"holdout_mse": holdout_mse(ema_net, z[train_n:], c[train_n:], x0[train_n:], device)} if holdout else {}

    return _train_loop(net, cfg, device, "student", train_n, min(cfg["batch"], train_n), seed + 3, loss_of, records,
                       holdout_record, on_snapshot)


@torch.no_grad()
def holdout_mse(net, z, c, x0, device, batch=1024):
    """Per-pixel MSE of the one-step output against the teacher's ODE solution on unseen pairs."""
    total = 0.0
    for i in range(0, len(z), batch):
        with _autocast(device):
            out = net(SIGMA_MAX * z[i:i + batch], torch.full((len(z[i:i + batch]),), SIGMA_MAX, device=device), c[i:i + batch])
        total += float((out.float() - x0[i:i + batch]).square().mean(dim=(1, 2, 3)).sum())
    return total / len(z)


# ---------------------------------------------------------------------------------------------
# Files.

def save_weights(net, path: Path, metadata: dict | None = None, dtype: torch.dtype = torch.float32) -> None:
    """safetensors with exactly EDMPrecond.state_dict()'s keys, so it loads with strict=True; float32,
    or float16 for a snapshot that ships beside the final weights at half the size."""
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_bytes(path, save(state, metadata=meta))


def load_weights(path: str | Path, model_cfg: dict, device="cpu") -> EDMPrecond:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    net = EDMPrecond(**model_cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: does not match the demo model config ({str(e).splitlines()[0]})") from None
    return net.to(device).eval().requires_grad_(False)


def plot_curves(records: list[dict], path: Path) -> bool:
    """Teacher loss and student loss/hold-out MSE against images seen; False if matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = [r for r in records if r["phase"] == "teacher"]
    s = [r for r in records if r["phase"] == "student"]
    axes[0].plot([r["images"] / 1e6 for r in t], [r["loss"] for r in t], lw=1)
    axes[0].set(title="EDM teacher", xlabel="training images (millions)", ylabel="weighted denoising loss", yscale="log")
    axes[1].plot([r["images"] / 1e6 for r in s], [r["loss"] for r in s], lw=1, label="train (pseudo-Huber)")
    if s and "holdout_mse" in s[0]:
        ax = axes[1].twinx()
        ax.plot([r["images"] / 1e6 for r in s], [r["holdout_mse"] for r in s], lw=1, color="C1", label="hold-out MSE")
        ax.set(ylabel="hold-out per-pixel MSE vs teacher ODE", yscale="log")
        ax.legend(loc="lower left")
    axes[1].set(title="one-step student at sigma=80", xlabel="training images (millions)", ylabel="pseudo-Huber loss", yscale="log")
    axes[1].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return True


def save_sample_grid(rows: list[torch.Tensor], path: Path) -> None:
    """PNG with one row per tensor (N,3,R,R) in [-1,1], for a look at teacher vs. student samples."""
    from PIL import Image

    from ..sampling import to_uint8

    tiles = [np.concatenate(list(to_uint8(r)), axis=1) for r in rows]
    image = Image.fromarray(np.concatenate(tiles, axis=0)).resize(
        (tiles[0].shape[1] * 2, len(tiles) * tiles[0].shape[0] * 2), Image.NEAREST)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


# ---------------------------------------------------------------------------------------------

def train(config: dict, out: Path, device: torch.device, seed: int, teacher_path: Path | None = None) -> dict:
    """All three phases; writes teacher.safetensors, generator.safetensors, train_log.jsonl,
    training_curves.png, samples.png and train_config.json into `out`. Returns the run record."""
    from .dataset import DATASET_VERSION, NUM_CLASSES, make_demo_images

    model_cfg, data_cfg = config["model"], config["data"]
    if model_cfg["label_dim"] != NUM_CLASSES:
        raise UserError(f"model.label_dim is {model_cfg['label_dim']} but the demo dataset has {NUM_CLASSES} classes")
    out.mkdir(parents=True, exist_ok=True)
    records = _Log(out / "train_log.jsonl")
    run: dict = {"seed": seed, "device": str(device), "torch": torch.__version__, "dataset_version": DATASET_VERSION}
    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True

    teacher_path = teacher_path or (out / "teacher.safetensors" if (out / "teacher.safetensors").is_file() else None)
    if teacher_path:
        # Resuming: a finished teacher phase is not repeated.
        teacher = load_weights(teacher_path, model_cfg, device)
        log.info("teacher: loaded %s", teacher_path)
        run["teacher"] = {"loaded": str(teacher_path)}
    else:
        # The training images use their own seed, so the report's real images (seed 0) are unseen.
        images, labels = make_demo_images(data_cfg["n_per_class"], seed=data_cfg["seed"] + seed)
        x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 127.5 - 1
        c = _one_hot(torch.as_tensor(labels, device=device), NUM_CLASSES)
        log.info("data: %d images (%.1fs)", len(x), time.perf_counter() - t0)
        teacher, steps = train_teacher(x, c, model_cfg, config["teacher"], device, records, seed)
        save_weights(teacher, out / "teacher.safetensors", {"model": model_cfg})
        run["teacher"] = {"steps": steps, "images": steps * config["teacher"]["batch"]}
        del x, c

    pairs_cfg = config["pairs"]
    z, c, x0, seconds = make_pairs(teacher, pairs_cfg["count"], NUM_CLASSES, pairs_cfg, device, seed)
    run["pairs"] = {"count": len(z), "seconds": round(seconds, 1)}
    log.info("pairs: %d teacher ODE solutions in %.1fs", len(z), seconds)

    def snapshot(step, ema_net):
        # Earlier checkpoints of this same run (a second demo generator to compare against): float16.
        path = out / f"generator-step{step}.safetensors"
        save_weights(ema_net, path, {"model": model_cfg, "step": step}, dtype=torch.float16)
        run.setdefault("snapshots", []).append({"step": step, "file": path.name})
        log.info("student: snapshot of step %d in %s", step, path)

    student, steps = train_student(teacher, (z, c, x0), config["student"], device, records, seed, snapshot)
    run["student"] = {"steps": steps, "images": steps * min(config["student"]["batch"], len(z))}
    save_weights(student, out / "generator.safetensors", {"model": model_cfg})
    run["seconds"] = round(time.perf_counter() - t0, 1)

    n = min(2 * NUM_CLASSES, len(z))
    with torch.no_grad(), _autocast(device):
        rows = [x0[:n], student(SIGMA_MAX * z[:n], torch.full((n,), SIGMA_MAX, device=device), c[:n]).float()]
    save_sample_grid([r.detach().cpu() for r in rows], out / "samples.png")
    plot_curves(records.records, out / "training_curves.png")
    record = copy.deepcopy(config) | {"run": run}
    save_text(out / "train_config.json", json.dumps(record, indent=2) + "\n")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmd2report demo-train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=None, help="training config JSON (default: the bundled one)")
    parser.add_argument("--teacher", type=Path, default=None, help="skip phase 1: use these teacher weights")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    from ..console import ensure_logging
    from ..device import resolve_device

    ensure_logging()  # progress lines; `dmd2report demo-train` has set up the handler already

    try:
        config = apply_overrides(load_train_config(args.config), args.overrides)
        config.pop("run", None)  # the record of an earlier run is no input
        device = resolve_device(args.device)
        run = train(config, args.out, device, args.seed, args.teacher)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run["command"] = "python -m dmd2report.demo.train " + shlex.join(argv if argv is not None else sys.argv[1:])
    record = json.loads((args.out / "train_config.json").read_text()) | {"run": run}
    try:
        save_text(args.out / "train_config.json", json.dumps(record, indent=2) + "\n")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {run['seconds']}s: {args.out / 'generator.safetensors'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
