"""`dmd2report build`: the stages in order, each rerun only when its inputs changed.

Stages and what each one's cache key covers (keys chain, so a change reruns everything after it):

  extract   real images -> features         model checksum, [data], [features], run.seed
  generate  samples of every variant        extract key, [generate]
  fit       reductions + 2-D map, trust     generate key, [embedding], metrics.layer
  measure   metrics.json, neighbour arrays  fit key, [metrics] k's and bootstrap
  atlas     generation from map points      fit key, [atlas]
  trajectory few-step paths, real at each   fit key, [trajectory], metrics k's and bootstrap, report.thumb_size
            sigma, projected and measured
  render    the site                        measure + atlas + trajectory keys, [report], run.name/site

`<workdir>/stages.json` records the key each stage last finished with. A stage whose key is
unchanged is skipped; `--force STAGE` reruns it (and, through the keys, nothing else unless its
outputs changed). Every stage reads its inputs from disk and writes its outputs atomically, so
each can also run alone (`dmd2report extract|generate|fit|measure|render`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .config import Config
from .errors import UserError

STAGES = ("extract", "generate", "fit", "measure", "atlas", "trajectory", "render")
SHARDED_STAGES = {"extract", "generate"}  # the stages that split work across torchrun processes
MODEL_STAGES = {"extract", "generate", "atlas", "trajectory"}


def process_rank() -> int:
    """Rank under torchrun (RANK), 0 otherwise: only rank 0 writes the stage records and runs the
    stages that are not sharded."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def renderer_fingerprint() -> str:
    """Hash of the templates and the report code: a new dmd2report version re-renders old results."""
    from importlib.resources import files

    h = hashlib.sha256()
    roots = [Path(str(files("dmd2report.templates"))), Path(__file__).parent / "report"]
    for root in roots:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css", ".py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@dataclass
class Run:
    """One build: the config, where things go, and the generator (loaded on first use)."""

    config: Config
    command: str = "dmd2report build"
    log: Callable[[str], None] = print
    _net: torch.nn.Module | None = None
    _info: object = None
    _model_id: dict | None = None
    timings: dict = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return Path(self.config.run.workdir)

    # ------------------------------------------------------------------ model

    def model_identity(self) -> dict:
        """Preset + checkpoint checksum, without loading the model (cached by path, size and mtime)."""
        if self._model_id is None:
            from .checkpoint import bundled_weights, resolve_checkpoint_file, sha256_file

            m = self.config.model
            path = resolve_checkpoint_file(m.checkpoint) if m.checkpoint else bundled_weights(m.preset)
            if path is None:
                sha = f"untrained-seed{self.config.run.seed}"
            else:
                st = path.stat()
                cache_file = self.workdir / "checksums.json"
                cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
                key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
                if key not in cache:
                    cache[key] = sha256_file(path)
                    if process_rank() == 0:
                        _write_json(cache_file, cache)
                sha = cache[key]
            self._model_id = {"preset": m.preset, "checkpoint": str(path or ""), "sha256": sha,
                              "untrained": path is None}
        return self._model_id

    @property
    def net(self):
        if self._net is None:
            from .checkpoint import load_generator
            from .device import resolve_device
            from .runtime import auto_batch_size, prepare

            device = resolve_device(self.config.run.device)
            net, info = load_generator(self.config.model.preset, self.config.model.checkpoint or None, "cpu",
                                       seed=self.config.run.seed)
            self.log(f"model: {info.preset} from {info.checkpoint or 'random weights (UNTRAINED)'} on {device}")
            self._net = prepare(net, device, self.config.model.precision, self.config.model.compile,
                                batch_hint=auto_batch_size(device, self.config.features.batch_size))
            self._info = info
        return self._net

    @property
    def checksum(self) -> str:
        return self.model_identity()["sha256"]

    # ------------------------------------------------------------------ cache keys

    def stage_keys(self) -> dict[str, str]:
        c = self.config.to_dict()
        keys = {}
        # batch_size changes no result; features.generated only what generate stores.
        features = {k: v for k, v in c["features"].items() if k not in ("batch_size", "generated")}
        keys["extract"] = _hash([self.model_identity()["sha256"], self.config.model.preset, c["data"], features,
                                 c["run"]["seed"], c["atlas"]["mask_layer"], c["report"]["thumb_size"],
                                 self.compute_identity()])
        keys["generate"] = _hash([keys["extract"], c["generate"], c["features"]["generated"]])
        keys["fit"] = _hash([keys["generate"], c["embedding"], c["metrics"]["layer"]])
        keys["measure"] = _hash([keys["fit"], c["metrics"]])
        keys["atlas"] = _hash([keys["fit"], c["atlas"]])
        keys["trajectory"] = _hash([keys["fit"], c["trajectory"], c["report"]["thumb_size"],
                                    {k: c["metrics"][k] for k in ("layer", "k_pr", "k_dc", "k_fidelity", "bootstrap")}])
        keys["render"] = _hash([keys["measure"], keys["atlas"], keys["trajectory"], c["report"], c["run"]["name"],
                                c["run"]["site"], renderer_fingerprint()])
        return keys

    def compute_identity(self) -> dict:
        """What the numbers depend on besides weights, data and settings: the device type and the
        UNet's dtype (bf16 on CUDA for an fp16 preset, or as model.precision says), as the stores'
        keys record them. Batch size and compilation change only rounding, like cuDNN's choices."""
        from .device import resolve_device
        from .models.presets import preset_config

        device = resolve_device(self.config.run.device)
        precision = self.config.model.precision
        bf16 = device.type == "cuda" and (precision == "bfloat16" or
                                          (precision == "auto" and preset_config(self.config.model.preset)["use_fp16"]))
        return {"device": device.type, "unet_dtype": "bfloat16" if bf16 else "float32"}

    def _state_file(self) -> Path:
        return self.workdir / "stages.json"

    def recorded(self) -> dict:
        f = self._state_file()
        return json.loads(f.read_text()) if f.exists() else {}

    def _record(self, stage: str, key: str) -> None:
        state = self.recorded()
        state[stage] = {"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "seconds": round(self.timings.get(stage, 0.0), 2)}
        _write_json(self._state_file(), state)

    # ------------------------------------------------------------------ running

    def run_stages(self, stages=STAGES, force=(), overwrite: bool | None = None) -> list[str]:
        """Run `stages` in order, skipping those whose key is unchanged; returns the stages that ran.

        `overwrite=None` is `build`'s rule: it owns its work directory, so a store written under an
        older key is replaced and a forced stage starts afresh. A stage command passes the user's
        `--overwrite`: without it a store of another configuration is refused, and a store of the
        same configuration resumes (or is found complete).
        """
        unknown = [s for s in force if s not in STAGES]
        if unknown:
            raise UserError(f"--force {unknown[0]}: unknown stage; stages: {', '.join(STAGES)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys = self.stage_keys()
        recorded = self.recorded()
        ran = []
        for stage in stages:
            if process_rank() != 0 and stage not in SHARDED_STAGES:
                continue  # torchrun: the other ranks help with extraction and generation only
            previous = recorded.get(stage, {}).get("key")
            if previous == keys[stage] and stage not in force:
                self.log(f"[{stage}] up to date")
                continue
            self.log(f"[{stage}] running" + (" (forced)" if stage in force else ""))
            t0 = time.perf_counter()
            # A store written under another key is replaced; an unfinished one with this key resumes.
            replace = (previous is not None and previous != keys[stage] or stage in force) if overwrite is None else overwrite
            STAGE_FUNCTIONS[stage](self, overwrite=replace)
            self.timings[stage] = time.perf_counter() - t0
            if process_rank() == 0:
                self._record(stage, keys[stage])
            self.log(f"[{stage}] done in {self.timings[stage]:.1f} s")
            ran.append(stage)
        return ran


# ---------------------------------------------------------------------- stage: extract


def stage_extract(run: Run, overwrite: bool = False) -> None:
    from .extract import extract_real

    extract_real(run.config, run.net, run.checksum, overwrite=overwrite)


# ---------------------------------------------------------------------- stage: generate


def open_store(run: Run, name: str):
    from .extract import store_dir
    from .store import Store

    return Store(store_dir(run.config, name))


def generation_plan(config: Config, real_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and seed indices of the class-conditioned set: the real set's classes in turn,
    so every class gets the same number of samples and the first `variant_samples` span them all."""
    classes = np.unique(real_classes)
    n = config.generate.samples
    return classes[np.arange(n) % len(classes)], np.arange(n)


def blend_weights(real_feats: np.ndarray, real_classes: np.ndarray, query_feats: np.ndarray, k: int,
                  num_classes: int) -> np.ndarray:
    """Each query's blend: the mean one-hot of its k nearest real samples (standardised features)."""
    from .knn import knn

    mu, sd = real_feats.mean(0), real_feats.std(0) + 1e-6
    _, idx = knn((query_feats - mu) / sd, (real_feats - mu) / sd, min(k, len(real_feats)))
    weights = np.zeros((len(query_feats), num_classes), np.float32)
    for j in range(idx.shape[1]):
        np.add.at(weights, (np.arange(len(idx)), real_classes[idx[:, j]]), 1.0)
    return weights / idx.shape[1]


def stage_generate(run: Run, overwrite: bool = False) -> None:
    from .generate import generate_set

    cfg = run.config
    real = open_store(run, "real")
    real_classes = real.metadata()["class_id"].to_numpy()
    class_ids, seeds = generation_plan(cfg, real_classes)
    net = run.net
    generate_set(cfg, net, run.checksum, "class", class_ids, seeds, overwrite=overwrite)
    n_var = min(cfg.generate.variant_samples, len(seeds))
    for variant in cfg.generate.variants:
        if variant == "class":
            continue  # the first n_var samples of the class set are the class variant
        vectors = None
        shown = class_ids[:n_var]
        if variant == "blend":
            layer = cfg.metrics.layer
            gen = open_store(run, "gen-class")
            vectors = blend_weights(real.features(layer).astype(np.float32), real_classes,
                                    gen.features(layer)[:n_var].astype(np.float32), cfg.generate.blend_neighbours,
                                    net.label_dim)
        elif variant not in ("uniform", "zero"):
            raise UserError(f"generate.variants: unknown variant {variant!r}; valid: class, uniform, zero, blend")
        generate_set(cfg, net, run.checksum, variant, shown, seeds[:n_var], label_vectors=vectors, overwrite=overwrite)


# ---------------------------------------------------------------------- stage: fit


def generated_sets(run: Run) -> list[tuple[str, str]]:
    """(variant, store name) of every generated set, the class-conditioned set first."""
    return [("class", "gen-class")] + [(v, f"gen-{v}") for v in run.config.generate.variants if v != "class"]


def fit_dir(run: Run) -> Path:
    return run.workdir / "fit"


def stage_fit(run: Run, overwrite: bool = False) -> None:
    from .embed import fit_embedding, save_embedding, trust_scores, trust_summary

    cfg, e = run.config, run.config.embedding
    real = open_store(run, "real")
    real_meta = real.metadata()
    gens = {v: open_store(run, name) for v, name in generated_sets(run)}
    headline = cfg.metrics.layer
    if headline not in real.layers:
        raise UserError(f"metrics.layer: {headline!r} is not among the extracted layers ({', '.join(real.layers)})")
    out = fit_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"layers": {}, "headline": headline, "fit_on": e.fit_on}
    frames = []
    for layer in real.layers:
        real_x = real.features(layer)
        gen_x = gens["class"].features(layer)
        gen_classes = gens["class"].metadata()["class_id"].to_numpy()
        fit_x, fit_c = {"real": (real_x, real_meta["class_id"].to_numpy()),
                        "generated": (gen_x, gen_classes),
                        "both": (np.concatenate([real_x, gen_x]),
                                 np.concatenate([real_meta["class_id"].to_numpy(), gen_classes]))}[e.fit_on]
        run.log(f"[fit] {layer}: standardise + PCA {e.pca_components}" + (" + UMAP" if layer == headline else ""))
        emb = fit_embedding(fit_x, fit_c, pca_components=e.pca_components, n_neighbors=e.n_neighbors,
                            min_dist=e.min_dist, metric=e.metric, seed=cfg.run.seed, fit_subsample=e.fit_subsample,
                            with_map=layer == headline)
        sha = save_embedding(emb, out / f"{layer}.joblib")
        manifest["layers"][layer] = {"file": f"{layer}.joblib", "sha256": sha, "params": emb.params}
        if layer != headline:
            continue
        # Sets that were part of the fitted set already have coordinates; the others are projected.
        fitted = {"real": {"real": emb.coords}, "generated": {"class": emb.coords},
                  "both": {"real": emb.coords[: len(real_x)], "class": emb.coords[len(real_x):]}}[e.fit_on]
        real_red = emb.reduce(real_x)
        real_2d = fitted["real"] if "real" in fitted else emb.transform(real_x)
        real_trust = trust_scores(real_red, real_2d, real_red, real_2d, k=min(e.trust_k, len(real_x) - 1),
                                  exclude_self=True)
        frames.append(_points_frame("real", "real", real_meta, real_2d, real_trust))
        summaries = {"real": trust_summary(real_trust)}
        for variant, store in gens.items():
            g = store.features(layer)
            g2d = fitted[variant] if variant in fitted else emb.transform(g)
            trust = trust_scores(emb.reduce(g), g2d, real_red, real_2d, k=min(e.trust_k, len(real_x)))
            frames.append(_points_frame("generated", variant, store.metadata(), g2d, trust))
            summaries[variant] = trust_summary(trust)
        manifest["trust"] = summaries
    points = pd.concat(frames, ignore_index=True)
    tmp = out / "points.parquet.tmp"
    points.to_parquet(tmp, index=False)
    os.replace(tmp, out / "points.parquet")
    # The SHA-256 of every fitted file: the only files `load_embedding` will ever unpickle.
    _write_json(out / "manifest.json", manifest)


def _points_frame(set_name: str, variant: str, meta: pd.DataFrame, coords: np.ndarray, trust: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"set": set_name, "variant": variant, "row": np.arange(len(meta)),
                         "sample_id": meta["sample_id"].astype(str).to_numpy(),
                         "class_id": meta["class_id"].to_numpy().astype(np.int64),
                         "source": meta["source"].astype(str).to_numpy() if "source" in meta else "",
                         "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32),
                         "trust": trust.astype(np.float32)})


def load_fitted(run: Run, layer: str):
    from .embed import load_embedding

    manifest_file = fit_dir(run) / "manifest.json"
    if not manifest_file.exists():
        raise UserError(f"{manifest_file}: no fitted map; run `dmd2report fit` first")
    manifest = json.loads(manifest_file.read_text())
    if layer not in manifest["layers"]:
        raise UserError(f"{manifest_file}: no fitted reduction for layer {layer!r}")
    entry = manifest["layers"][layer]
    return load_embedding(fit_dir(run) / entry["file"], entry["sha256"])


# ---------------------------------------------------------------------- stage: measure


def measure_dir(run: Run) -> Path:
    return run.workdir / "measure"


def variant_classes(variant: str, meta: pd.DataFrame) -> np.ndarray:
    """Conditioning class of each sample for class fidelity: the class for one-hot and blend
    conditioning (a blend's heaviest class), none for uniform and zero."""
    from .metrics import NO_CLASS

    if variant in ("uniform", "zero"):
        return np.full(len(meta), NO_CLASS, np.int64)
    return meta["class_id"].to_numpy().astype(np.int64)


def stage_measure(run: Run, overwrite: bool = False) -> None:
    from .metrics import measure, write_metrics_json

    cfg, m = run.config, run.config.metrics
    real = open_store(run, "real")
    real_classes = real.metadata()["class_id"].to_numpy()
    gens = {v: open_store(run, name) for v, name in generated_sets(run)}
    out = measure_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for layer in real.layers:
        emb = load_fitted(run, layer)
        real_red = emb.reduce(real.features(layer))
        generated = {v: (emb.reduce(s.features(layer)), variant_classes(v, s.metadata())) for v, s in gens.items()}
        space = f"{layer}:{cfg.features.reduce}+standardise+pca{emb.n_components}"
        run.log(f"[measure] {space}: {len(real_red)} real, " +
                ", ".join(f"{len(g[0])} {v}" for v, g in generated.items()))
        r = measure(real_red, real_classes, generated, feature_space=space, k_pr=m.k_pr, k_dc=m.k_dc,
                    k_fidelity=m.k_fidelity, k_neighbours=m.k_neighbours, bootstrap=m.bootstrap, seed=cfg.run.seed,
                    log=lambda s: None)
        if layer == m.layer:
            _save_arrays(out / "arrays.npz", r["arrays"])
            (out / "headline.json").write_text(json.dumps({"feature_space": space, "layer": layer}))
        results.append(r)
    ident = run.model_identity()
    provenance = {"model_checksum": ident["sha256"], "model_preset": ident["preset"],
                  "checkpoint": Path(ident["checkpoint"]).name if ident["checkpoint"] else "",
                  "data": {"source": cfg.data.source, "path": cfg.data.path, "n_real": len(real_classes)},
                  "config_hash": cfg.section_hash(), "headline_layer": m.layer,
                  "fit": json.loads((fit_dir(run) / "manifest.json").read_text()).get("trust", {})}
    write_metrics_json(out / "metrics.json", results, provenance)


def _save_arrays(path: Path, arrays: dict) -> None:
    """The per-point arrays of the headline layer, flattened to `real.x` / `variant.name.x` keys."""
    flat = {}
    for k, v in arrays["real"].items():
        flat[f"real.{k}"] = np.asarray(v)
    for variant, d in arrays["variants"].items():
        for k, v in d.items():
            if k == "real_covered_by":  # ragged: store as offsets + values
                lengths = np.array([len(x) for x in v], np.int64)
                flat[f"variant.{variant}.{k}.offsets"] = np.concatenate([[0], np.cumsum(lengths)])
                flat[f"variant.{variant}.{k}.values"] = np.concatenate([np.asarray(x, np.int64) for x in v]) \
                    if len(v) else np.zeros(0, np.int64)
            else:
                flat[f"variant.{variant}.{k}"] = np.asarray(v)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, path)


def load_arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------- stage: atlas


def atlas_dir(run: Run) -> Path:
    return run.workdir / "atlas"


def stage_atlas(run: Run, overwrite: bool = False) -> None:
    from .atlas import build_atlas

    build_atlas(run)


# ---------------------------------------------------------------------- stage: trajectory


def stage_trajectory(run: Run, overwrite: bool = False) -> None:
    from .trajectory import build_trajectories

    build_trajectories(run, overwrite=overwrite)


# ---------------------------------------------------------------------- stage: render


def stage_render(run: Run, overwrite: bool = False) -> None:
    from .assemble import assemble_report
    from .report.render import render_site

    r = run.config.report
    data = assemble_report(run)
    pages = render_site(data, run.config.run.site, single_file=r.single_file,
                        single_file_limit_mb=r.single_file_limit_mb, color_by=r.color_by)
    run.log(f"[render] wrote {len(pages)} page(s) to {run.config.run.site}")


STAGE_FUNCTIONS = {"extract": stage_extract, "generate": stage_generate, "fit": stage_fit,
                   "measure": stage_measure, "atlas": stage_atlas, "trajectory": stage_trajectory,
                   "render": stage_render}
