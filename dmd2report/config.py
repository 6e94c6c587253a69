"""The typed configuration every stage reads.

Sources, in increasing priority: defaults here, a TOML file (`--config report.toml`),
command-line options. An unknown key or a value of the wrong type is a UserError naming
the key and the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class RunConfig:
    name: str = "dmd2report demo"
    workdir: str = "runs/demo"      # stores, fitted maps and metrics (the cache between stages)
    site: str = "site"              # where the static report goes
    device: str = "auto"            # auto | cpu | cuda | cuda:N | mps
    seed: int = 0


@dataclass
class ModelConfig:
    preset: str = "demo"            # demo | dmd2-imagenet64 | tiny
    checkpoint: str = ""            # .pth/.bin/.safetensors or an Accelerate folder; "" = the preset's bundled weights
    precision: str = "auto"         # auto (bf16 on CUDA when the preset uses fp16) | float32 | bfloat16
    compile: str = "auto"           # auto | on | off: torch.compile the whole network on CUDA (auto: for stages of 200,000+ samples), eager fallback


@dataclass
class DataConfig:
    source: str = "demo"            # demo | imagenet64-npz | folder
    path: str = ""                  # directory of NPZ batches or class folders
    classes: list[str] = field(default_factory=list)  # ids, synsets or names; [] = all
    per_class: int = 0              # 0 = no per-class cap
    max_samples: int = 2400
    on_bad_image: str = "skip"      # skip | fail
    workers: int = 2


@dataclass
class FeaturesConfig:
    layers: list[str] = field(default_factory=lambda: ["encoder_bottleneck", "midblock"])
    reduce: str = "mean"            # full | mean | pca:K
    pca_fit_samples: int = 10000    # M: real samples the on-device PCA is fitted on
    dtype: str = "float16"          # stored feature dtype: float16 | float32
    batch_size: int = 0             # images per forward pass; 0 = auto (runtime.auto_batch_size): on CUDA by GPU memory (1024 from 48 GiB, 512 from 24), else 256
    chunk_size: int = 4096          # samples per stored chunk (the unit of atomic writes and resume)
    generated: str = "reencode"     # generated features: reencode (image fed back as real ones are) | generation
    full_per_class: int = 8         # real samples per class whose full mask-layer activations are kept (masking)
    recon_per_class: int = 4        # real samples per class whose reconstruction (model output) is kept


@dataclass
class GenerateConfig:
    samples: int = 1200             # class-conditioned samples, spread evenly over the classes
    variants: list[str] = field(default_factory=lambda: ["class", "uniform", "zero", "blend"])
    variant_samples: int = 240      # seeds shared by every variant
    blend_neighbours: int = 10      # k real neighbours whose classes make a point's blend


@dataclass
class EmbeddingConfig:
    pca_components: int = 50
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    fit_on: str = "real"            # real | generated | both
    fit_subsample: int = 50000
    trust_k: int = 10


@dataclass
class MetricsConfig:
    layer: str = "midblock"         # the headline layer; every layer is measured
    k_pr: int = 3                   # precision/recall (Kynkaanniemi et al. 2019)
    k_dc: int = 5                   # density/coverage (Naeem et al. 2020)
    k_fidelity: int = 10
    k_neighbours: int = 8           # neighbours kept per sample for the report
    bootstrap: int = 200
    mask_layer: str = "midblock"
    anchors_per_class: int = 3
    atlas_grid: int = 12


@dataclass
class ReportConfig:
    single_file: bool = False
    single_file_limit_mb: float = 25.0
    color_by: str = "class"         # class | variant
    max_classes_pages: int = 100
    thumb_size: int = 32


@dataclass
class TrajectoryConfig:
    enabled: bool = True            # few-step sampling paths on the map (the trajectory stage)
    sigmas: list[float] = field(default_factory=lambda: [80.0, 14.0, 1.0, 0.05])  # noise level of each step, strictly decreasing; [80.0] = the one-step sample
    samples: int = 48               # class-conditioned samples followed through every step (the first seeds of [generate])
    conditioning: str = "class"     # class | uniform | zero | blend (the generate stage's blend of each seed)
    paths_per_class: int = 2        # paths drawn on the map per class (every sample is measured)
    real_references: int = 48       # real images noised to each sigma and passed through the model; 0 = none


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all when none): the cache key of the stages reading them."""
        d = self.to_dict()
        chosen = {s: d[s] for s in (sections or d)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _check(value, annotation, where: str):
    """Validate `value` against a dataclass field annotation; returns the value (ints widen to float)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {type(value).__name__}")
        # Class lists accept ids as numbers too.
        if item is str:
            return [str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else _bad(where, "a list of strings", v) for v in value]
        return [_check(v, item, where) for v in value]
    if annotation is bool:
        return value if isinstance(value, bool) else _bad(where, "true or false", value)
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _bad(where, "an integer", value)
    if annotation is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _bad(where, "a number", value)
    if annotation is str:
        return value if isinstance(value, str) else _bad(where, "a string", value)
    raise TypeError(annotation)


def _bad(where, expected, value):
    raise UserError(f"{where}: expected {expected}, got {value!r}")


def _apply(config: Config, data: dict, origin: str) -> None:
    hints = typing.get_type_hints(Config)
    for section, values in data.items():
        if section not in hints:
            raise UserError(f"{origin}: unknown section [{section}]; valid: {', '.join(hints)}")
        if not isinstance(values, dict):
            raise UserError(f"{origin}: [{section}] must be a table")
        target = getattr(config, section)
        fields = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in fields:
                raise UserError(f"{origin}: unknown key {section}.{key}; valid keys of [{section}]: {', '.join(fields)}")
            if (section, key) == ("model", "compile") and isinstance(value, bool):
                value = "on" if value else "off"  # the boolean this key was before auto existed
            setattr(target, key, _check(value, fields[key], f"{origin}: {section}.{key}"))


def load_config(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, then the TOML file, then `overrides` ({"section.key": value}, None values ignored)."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
        _apply(config, data, str(path))
    nested: dict[str, dict] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    _apply(config, nested, "command line")
    _validate(config)
    return config


def _validate(c: Config) -> None:
    choices = {
        "data.source": (c.data.source, ("demo", "imagenet64-npz", "folder")),
        "data.on_bad_image": (c.data.on_bad_image, ("skip", "fail")),
        "features.dtype": (c.features.dtype, ("float16", "float32")),
        "features.generated": (c.features.generated, ("reencode", "generation")),
        "embedding.fit_on": (c.embedding.fit_on, ("real", "generated", "both")),
        "report.color_by": (c.report.color_by, ("class", "variant")),
        "model.precision": (c.model.precision, ("auto", "float32", "bfloat16")),
        "model.compile": (c.model.compile, ("auto", "on", "off")),
        "trajectory.conditioning": (c.trajectory.conditioning, ("class", "uniform", "zero", "blend")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise UserError(f"{key}: {value!r} is not one of {', '.join(valid)}")
    r = c.features.reduce
    if not (r in ("full", "mean") or (r.startswith("pca:") and r[4:].isdigit() and int(r[4:]) > 0)):
        raise UserError(f"features.reduce: {r!r} is not full, mean or pca:K")
    if c.trajectory.enabled:
        from .trajectory import check_schedule

        check_schedule(c.trajectory.sigmas)
    if c.features.batch_size < 0:
        raise UserError(f"features.batch_size: must be 0 (automatic) or more, got {c.features.batch_size}")
    for key in ("samples", "paths_per_class", "real_references"):
        if getattr(c.trajectory, key) < 0:
            raise UserError(f"trajectory.{key}: must be 0 or more, got {getattr(c.trajectory, key)}")
    if c.data.source != "demo" and not c.data.path:
        raise UserError(f"data.path: required for data.source = {c.data.source!r}")


def example_toml() -> str:
    """A commented example config (what `dmd2report init` writes), generated from the defaults."""
    comments = _field_comments()
    lines = ["# dmd2report configuration. Every key is optional; command-line options override it.", ""]
    for section, values in Config().to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            note = comments.get(f"{section}.{key}")
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {note}" if note else ""))
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


def _field_comments() -> dict[str, str]:
    """Trailing `# ...` comments of the dataclass fields above, keyed section.key."""
    import inspect
    import re

    out = {}
    for section, cls in typing.get_type_hints(Config).items():
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
            if m:
                out[f"{section}.{m.group(1)}"] = m.group(2)
    return out
