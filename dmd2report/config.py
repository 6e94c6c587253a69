"""The typed configuration every stage reads, each key declared once.

Sources, in increasing priority: the defaults declared here, a TOML file (`--config report.toml`),
command-line options. Each key is one dataclass field: its annotation is the type, and its
`setting(...)` holds the default, the help text, the allowed values or range and the command-line
flag. From those declarations come:

- the checks `load_config` runs on every value as it loads, before any stage (types, choices,
  ranges, finiteness, list items), followed by the checks between keys (layers against the
  preset's network, the headline layer among the extracted ones, ...);
- the options of `dmd2report build` and the stage commands (`cli.py`);
- the commented example `dmd2report init` writes (`example_toml`);
- the reference `docs/configuration.md` (`python -m dmd2report.pipeline --markdown`, with the stage table and each section's readers).

Every mistake is a UserError of one line naming the file (or "command line") and the key.
This module imports neither torch nor a stage module; only the checks between keys build the
preset's network on the meta device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import short_hash
from .resources import BUNDLED_CHECKPOINTS, BUNDLED_ENCODERS, BUNDLED_PREFIX

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# ---------------------------------------------------------------------------------------------
# The declaration of one key.

@dataclass(frozen=True)
class Setting:
    """What one config key means and accepts (the metadata of its dataclass field).

    `choices`: the allowed strings (of a string, or of each item of a list of strings), or a
    function returning them (looked up when checked: the presets). `pattern`: (regex, text) for a
    free-form string, the text saying what matches. `ge`/`gt`/`le`/`lt`: the inclusive / exclusive
    bounds of a number (of each item of a list of numbers). Floats are always finite.
    `nonempty` / `unique`: a list needs an item / may not repeat one. `cli`: the flag of `build`
    and the stage commands that overrides the key (a list flag takes comma-separated items).
    """

    help: str
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    pattern: tuple[str, str] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nonempty: bool = False
    unique: bool = False
    cli: str | None = None

    def allowed(self) -> list[str]:
        """The allowed strings (the lazy ones looked up), or [] when any string of the type goes."""
        if self.choices is None:
            return []
        return list(self.choices() if callable(self.choices) else self.choices)

    def allowed_text(self, lazy: bool = True) -> str:
        """The allowed values in words: `a | b | c`, a pattern's text or a range; "" when unrestricted."""
        if self.choices is not None and (lazy or not callable(self.choices)):
            return " | ".join(self.allowed())
        if self.pattern:
            return self.pattern[1]
        return self.range_text()

    def range_text(self) -> str:
        lo = f"{_num(self.ge)} <= " if self.ge is not None else f"{_num(self.gt)} < " if self.gt is not None else ""
        hi = f" <= {_num(self.le)}" if self.le is not None else f" < {_num(self.lt)}" if self.lt is not None else ""
        if not (lo or hi):
            return ""
        if lo and not hi:
            return (">= " if self.ge is not None else "> ") + _num(self.ge if self.ge is not None else self.gt)
        return f"{lo}x{hi}"


def setting(default, help: str, **rules) -> typing.Any:
    """A config key: its default, help text and rules (see `Setting`), as a dataclass field."""
    meta = {"setting": Setting(help=help, **rules)}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _preset_names() -> list[str]:
    from .models.presets import PRESETS  # imports torch: looked up only when a preset is checked

    return ["auto", *sorted(PRESETS)]


# The conditioning variants (sampling.MODES is this tuple).
VARIANTS = ("class", "uniform", "zero", "blend")
MAP_COLOURS = ("class", "variant", "trust", "covered", "distance")   # the map's colour-by choices
# umap-learn's metrics that suit standardised PCA features and have a gradient (so the atlas can
# invert the map): umap.distances.named_distances_with_gradients without those needing extra
# parameters (minkowski, seuclidean, mahalanobis, wminkowski), positive inputs (hellinger,
# symmetric_kl) or two columns (haversine). Listed here because importing umap takes seconds.
UMAP_METRICS = ("euclidean", "l2", "manhattan", "taxicab", "l1", "chebyshev", "linfinity", "linfty", "linf",
                "canberra", "cosine", "correlation", "braycurtis")


# ---------------------------------------------------------------------------------------------
# The sections. A section's docstring says what it holds and which stages read it.

@dataclass
class RunConfig:
    """Names and places of the run."""

    name: str = setting("dmd2report demo", "Run name shown on every page of the report.", cli="--name")
    workdir: str = setting("runs/demo", "Stores, fitted maps and metrics: the cache between stages.", cli="--workdir")
    site: str = setting("site", "Where the static report goes.", cli="--site")
    device: str = setting("auto", "Device the model runs on (auto: CUDA, then MPS, then CPU).",
                          pattern=(r"auto|cpu|mps|cuda(:\d+)?", "auto | cpu | cuda | cuda:N | mps"), cli="--device")
    seed: int = setting(0, "Seed of every random choice: data order, noise, subsamples, bootstrap.", ge=0, cli="--seed")


@dataclass
class ArchitectureConfig:
    """The generator's architecture set key by key: EDMPrecond's and DhariwalUNet's constructor arguments.
    Each key set here replaces the value `model.preset` gives (with `preset = "auto"`: the value read off
    the checkpoint); an unset key keeps that value. `dmd2report inspect CHECKPOINT` prints a checkpoint's
    whole table: pasted, it loads that checkpoint whatever the preset. The last four change no tensor's
    shape, so a checkpoint cannot tell them."""

    img_resolution: int | None = setting(None, "Image side in pixels (the first level's resolution).", ge=1)
    img_channels: int | None = setting(None, "Image channels.", ge=1)
    label_dim: int | None = setting(None, "Classes the generator is conditioned on; 0: unconditional.", ge=0)
    augment_dim: int | None = setting(None, "Augmentation labels of EDM's map_augment layer; 0: none (DMD2 "
                                      "removes the layer).", ge=0)
    model_channels: int | None = setting(None, "Channels of the first level.", ge=1)
    channel_mult: list[int] | None = setting(None, "Channels of each level as a multiple of model_channels, one item "
                                             "per level; the resolution halves from one level to the next.",
                                             ge=1, nonempty=True)
    channel_mult_emb: int | None = setting(None, "Embedding channels as a multiple of model_channels.", ge=1)
    num_blocks: int | None = setting(None, "Residual blocks per level in the encoder (the decoder has one more).",
                                     ge=0)
    attn_resolutions: list[int] | None = setting(None, "Resolutions of the levels whose blocks hold self-attention "
                                                 "(a block of fewer than 64 channels has no attention heads).",
                                                 ge=1, unique=True)
    use_fp16: bool | None = setting(None, "Reduced precision: with model.precision = \"auto\", the UNet runs in "
                                    "bfloat16 on CUDA.")
    sigma_data: float | None = setting(None, "EDM's preconditioning constant, the data's standard deviation (0.5 "
                                       "in EDM and DMD2).", gt=0.0)
    dropout: float | None = setting(None, "Dropout probability of the blocks (training only).", ge=0.0, lt=1.0)
    label_dropout: float | None = setting(None, "Probability of dropping the class label (training only).",
                                          ge=0.0, le=1.0)


# model.checkpoint: any path, or the name of a bundled checkpoint (a `bundled:` value naming none is refused).
CHECKPOINT_VALUES = (rf"(?s)(?!{BUNDLED_PREFIX}).*|{BUNDLED_PREFIX}(?:{'|'.join(map(re.escape, BUNDLED_CHECKPOINTS))})",
                     " | ".join(["PATH", *(BUNDLED_PREFIX + n for n in BUNDLED_CHECKPOINTS)]))


@dataclass
class ModelConfig:
    """The generator."""

    preset: str = setting("demo", "Network architecture: a preset (`dmd2report layers --preset NAME` lists its "
                          "layers) or auto: read off model.checkpoint's shapes (`dmd2report inspect` shows what it "
                          "reads); [model.config] sets keys over either.", choices=_preset_names, cli="--preset")
    checkpoint: str = setting("", ".pth/.bin/.safetensors file or an Accelerate folder, or bundled:NAME, a checkpoint "
                              "that ships with dmd2report (bundled:demo: the demo generator; bundled:demo-step100: step "
                              "100 of its 1,911 training steps); empty: the preset's bundled weights.",
                              pattern=CHECKPOINT_VALUES, cli="--checkpoint")
    precision: str = setting("auto", "UNet precision; auto: bfloat16 on CUDA when the architecture's use_fp16 is true, else float32.",
                             choices=("auto", "float32", "bfloat16"), cli="--precision")
    compile: str = setting("auto", "torch.compile the whole network on CUDA (auto: for stages of 200,000+ samples); "
                           "eager fallback if compiling fails.", choices=("auto", "on", "off"), cli="--compile")
    config: ArchitectureConfig = field(default_factory=ArchitectureConfig)


def _model_key(name: str):
    """A [[generators]] key declared as [model]'s key `name` is (its default, help and rules; no option)."""
    f = next(f for f in dataclasses.fields(ModelConfig) if f.name == name)
    if "setting" not in f.metadata:   # a table ([model.config])
        return field(default_factory=f.default_factory)
    return field(default=f.default, metadata={"setting": dataclasses.replace(f.metadata["setting"], cli=None)})


GENERATOR_NAME = (r"[A-Za-z0-9_.-]+", "letters, digits, '_', '.' or '-'")


@dataclass
class GeneratorConfig:
    """One generator of a comparison, a `[[generators]]` table (several make one report comparing them: the same
    seeds, one reference encoder, one real map). Its network and weights are declared as [model]'s, its
    `[generators.config]` table as [model.config]; model.precision and model.compile apply to every generator."""

    name: str = setting("", "The generator's name in the report (required, unique).", pattern=GENERATOR_NAME)
    preset: str = _model_key("preset")
    checkpoint: str = _model_key("checkpoint")
    config: ArchitectureConfig = _model_key("config")


# The pretrained encoders of the standard feature spaces (dmd2report/encoders/).
ENCODER_KINDS = ("inception", "inception-tf1", "dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "dinov2-vitg14", "demo-classifier")
WEIGHTS_VALUES = (rf"(?s)(?!{BUNDLED_PREFIX}).*|{BUNDLED_PREFIX}(?:{'|'.join(map(re.escape, BUNDLED_ENCODERS))})",
                  "PATH | " + " | ".join(BUNDLED_PREFIX + name for name in BUNDLED_ENCODERS))


@dataclass
class EncoderConfig:
    """A pretrained encoder, an `[[encoders]]` table: a standard feature space (FID's Inception-v3, DINOv2, the demo
    classifier). The real images and every generated image are encoded by it too, and every metric is computed in its
    features beside the generator's layers. Its weights come from a file you give, never from a download. Without
    `[[encoders]]`, a report on the demo data (`data.source = "demo"`) uses the bundled demo classifier."""

    name: str = setting("", "The feature space's name in the report and metrics.json (required, unique, no layer's "
                            "name).", pattern=GENERATOR_NAME)
    kind: str = setting("inception", "The network: inception (FID's Inception-v3 as pytorch-fid preprocesses: 2048-D "
                                     "pool features, and its logits for the Inception Score), inception-tf1 (the same "
                                     "weights as the TensorFlow graph EDM's and DMD2's FIDs come from preprocesses), "
                                     "dinov2-vit{s,b,l,g}14 (DINOv2's CLS embedding: FD_DINOv2, as EDM2 "
                                     "preprocesses), demo-classifier (the demo's).", choices=ENCODER_KINDS)
    weights: str = setting("", "Its weights (required): pytorch-fid's pt_inception-2015-12-05-6726825d.pth, the "
                               "official dinov2_vit*14_pretrain.pth, a .safetensors of either, or "
                               "bundled:demo-classifier.", pattern=WEIGHTS_VALUES)
    head: str = setting("", "dinov2 only: the official linear classification head (dinov2_vit*14_linear_head.pth), "
                            "for the classification accuracy of generated samples; empty: none.")
    precision: str = setting("auto", "The network's precision; auto: bfloat16 for DINOv2 on CUDA (EDM2's speed; "
                                     "benchmarks/encoders.py measures the drift it adds to FD_DINOv2), float32 "
                                     "otherwise (Inception's protocol).",
                             choices=("auto", "float32", "bfloat16"))
    reference_stats: str = setting("", "An .npz of `mu` and `sigma` of a reference set in this space (as the "
                                       "community's ImageNet reference batches ship): the Frechet distance against "
                                       "it is reported beside the real set's; empty: none.")


@dataclass
class DataConfig:
    """The real images (render names their source)."""

    source: str = setting("demo", "Where the real images come from: the bundled demo data, ImageNet64 NPZ batches "
                          "or a tree of class folders.", choices=("demo", "imagenet64-npz", "folder"), cli="--source")
    path: str = setting("", "Directory of NPZ batches or class folders (required unless source is demo).", cli="--data")
    classes: list[str] = setting([], "Classes kept: ids, synsets or names; empty: all.", cli="--classes")
    per_class: int = setting(0, "Real samples kept per class; 0: no cap.", ge=0, cli="--per-class")
    max_samples: int = setting(2400, "Real samples kept in all; 0: no cap.", ge=0, cli="--max-samples")
    on_bad_image: str = setting("skip", "An unreadable image in a folder: skip it (listed in the report) or fail.",
                                choices=("skip", "fail"), cli="--on-bad-image")
    workers: int = setting(2, "Threads decoding and resizing images.", ge=1)


@dataclass
class FeaturesConfig:
    """The activations captured and how they are stored (atlas and trajectory capture the same layers the same
    way)."""

    layers: list[str] = setting(["encoder_bottleneck", "midblock"], "Layers captured, upstream names or aliases "
                                "(`dmd2report layers` lists them); each block once.", nonempty=True, unique=True,
                                cli="--layers")
    reduce: str = setting("mean", "Stored features: full activations, the per-channel spatial mean, or K >= 1 "
                          "PCA components fitted on real samples.", pattern=(r"full|mean|pca:[1-9]\d*", "full | mean | pca:K"),
                          cli="--reduce")
    pca_fit_samples: int = setting(10000, "M: real samples the on-device PCA (reduce = pca:K) is fitted on.", ge=1)
    dtype: str = setting("float16", "Stored feature dtype.", choices=("float16", "float32"))
    batch_size: int = setting(0, "Images per forward pass; 0: automatic, on CUDA by GPU memory (1024 from 48 GiB, "
                              "512 from 24), else 256.", ge=0, cli="--batch-size")
    chunk_size: int = setting(4096, "Samples per stored chunk (the unit of atomic writes and resume).", ge=1)
    generated: str = setting("reencode", "Features of generated images: reencode (the image fed back as real ones are) "
                             "or generation (the generating pass's own).", choices=("reencode", "generation"))
    encoder: str = setting("", "With [[generators]]: the reference encoder, the generator whose network extracts the real "
                           "images and re-encodes every generator's samples (one feature space, one real map); empty: "
                           "the first generator.", pattern=(r"|[A-Za-z0-9_.-]+", "a generator's name"))
    full_per_class: int = setting(8, "Real samples per class whose full atlas.mask_layer activations are kept (masking).",
                                  ge=0)
    recon_per_class: int = setting(4, "Real samples per class whose reconstruction (model output) is kept.", ge=0)


@dataclass
class GenerateConfig:
    """The generated sets (fit, measure and render read them)."""

    samples: int = setting(1200, "Class-conditioned samples, spread evenly over the classes.", ge=1, cli="--samples")
    variants: list[str] = setting(list(VARIANTS), "Conditioning variants generated from the shared seeds "
                                  "(the class-conditioned set is always made).", choices=VARIANTS, unique=True)
    variant_samples: int = setting(240, "Seeds shared by every variant: the first of the class-conditioned set "
                                   "(at most generate.samples).", ge=1)
    blend_neighbours: int = setting(10, "k real neighbours whose classes make a sample's blend.", ge=1)


@dataclass
class EmbeddingConfig:
    """The reductions and the 2-D map."""

    pca_components: int = setting(50, "PCA components after standardisation: the space the metrics use.", ge=1)
    n_neighbors: int = setting(15, "UMAP n_neighbors.", ge=2)
    min_dist: float = setting(0.1, "UMAP min_dist (at most UMAP's spread, 1.0).", ge=0.0, le=1.0)
    metric: str = setting("euclidean", "UMAP metric.", choices=UMAP_METRICS)
    init: str = setting("pca", "UMAP's starting layout: pca (the first two principal components, instant; as good or "
                        "better a map on the demo and the scale benchmark's data) or spectral (umap-learn's default, "
                        "an eigendecomposition of the graph: 18 s of a 50,000-point fit on 2 cores).",
                        choices=("pca", "spectral"))
    fit_on: str = setting("real", "The set the reductions and the map are fitted on.",
                          choices=("real", "generated", "both"), cli="--fit-on")
    fit_subsample: int = setting(50000, "Class-balanced subsample the UMAP is fitted on; the rest is projected.", ge=4)
    trust_k: int = setting(10, "Real neighbours behind each point's trust score.", ge=1)
    projection: str = setting("fast", "How points outside the UMAP's fit subsample are placed: fast (their exact "
                              "nearest fitted points in PCA space, UMAP's membership-weighted start, then "
                              "projection_epochs of UMAP's layout with the map fixed; metric euclidean only) or "
                              "umap (umap-learn's transform, with its search index).", choices=("fast", "umap"))
    projection_epochs: int = setting(100, "Layout epochs of the fast projection (as umap-learn's transform runs for "
                                     "batches up to 10,000 points; 30 measured 0.02-0.05 lower trust on the demo).",
                                     ge=0)
    reproducible: bool = setting(False, "false: umap-learn fits the map on every core, unseeded: at 50,000 points "
                                 "1.4x faster than true on 2 cores, 9x on 16 (benchmarks/README.md), but the map's layout differs from run to run. "
                                 "true: seeded with run.seed, on one thread: the same inputs give the same map (for "
                                 "byte-identical CI snapshots). Either way the reductions, the subsample, every metric "
                                 "and the projection of the other points onto a given map are deterministic.")


@dataclass
class MetricsConfig:
    """Precision, recall, density, coverage, FD and neighbours (metrics.layer is also the layer drawn on the map)."""

    layer: str = setting("midblock", "The headline space, drawn on the map, whose neighbours the map's panel lists: "
                         "one of features.layers, or an [[encoders]] table's name (every space is measured).")
    k_pr: int = setting(3, "k of precision/recall (Kynkaanniemi et al. 2019).", ge=1)
    k_dc: int = setting(5, "k of density/coverage (Naeem et al. 2020).", ge=1)
    k_fidelity: int = setting(10, "k of the per-sample fidelity.", ge=1)
    k_neighbours: int = setting(8, "Neighbours kept per sample for the report.", ge=1)
    bootstrap: int = setting(200, "Bootstrap resamples behind each confidence interval; 0: none.", ge=0)


@dataclass
class AtlasConfig:
    """Generation from points of the map by masking a layer (extract keeps the mask layer's full activations)."""

    mask_layer: str = setting("midblock", "Layer whose output is replaced to generate from a map point.")
    anchors_per_class: int = setting(3, "Generations from real anchors per class (the class medoid first).", ge=1)
    atlas_grid: int = setting(12, "Points per side of the even grid over the map (empty cells dropped).", ge=1)


@dataclass
class ReportConfig:
    """The site (the stores' thumbnails are report.thumb_size)."""

    single_file: bool = setting(False, "One self-contained HTML file (for mail).", cli="--single-file")
    single_file_limit_mb: float = setting(25.0, "Largest single-file report, in MB.", gt=0.0)
    color_by: str = setting("class", "What colours the map's points at first (the map's colour-by control changes "
                                     "it): class, conditioning variant, map trust, covered or not (real points), "
                                     "distance to the nearest real sample (generated points).", choices=MAP_COLOURS)
    max_classes_pages: int = setting(100, "Per-class pages, for the most populous classes.", ge=0)
    max_points: int = setting(20000, "Points drawn on the map (with hover, click and selection), a class-balanced "
                                     "sample past this; every point is in the density layer beneath. Bounds the "
                                     "site's size and first render at any number of samples. The default keeps the "
                                     "map's first render under 2.5 s in headless Chromium (benchmarks/README.md, "
                                     "'Report at any N': 1.9 s at 20,000, 2.5 s at 30,000 on a loaded 2-core machine).",
                              ge=1)
    thumb_size: int = setting(32, "Thumbnail side in pixels (at most the model's resolution).", ge=1)
    template_dir: str = setting("", "Folder of your own Jinja templates, searched before the defaults (which stay "
                                "reachable as default:NAME, e.g. {% extends \"default:base.html\" %}); its other "
                                "*.html files (not starting with _) become extra pages, its static/ files are copied "
                                "to the site's static/. Empty: the defaults only. Relative to the working directory.",
                                cli="--template-dir")
    png_fallback: bool = setting(False, "Also write PNG thumbnail sheets for browsers without WebP (every current "
                                        "browser reads WebP; the PNGs more than double the sheets' size).")


@dataclass
class TrajectoryConfig:
    """Few-step sampling paths on the map."""

    enabled: bool = setting(True, "Run the trajectory stage.")
    sigmas: list[float] = setting([80.0, 14.0, 1.0, 0.05], "Noise level of each step, positive and strictly "
                                  "decreasing; [80.0]: the one-step sample.")
    samples: int = setting(48, "Class-conditioned samples followed through every step (the first seeds of [generate]).",
                           ge=0)
    conditioning: str = setting("class", "Conditioning of the paths (blend: the generate stage's blend of each seed).",
                                choices=VARIANTS)
    paths_per_class: int = setting(2, "Paths drawn on the map per class (every sample is measured).", ge=0)
    real_references: int = setting(48, "Real images noised to each sigma and passed through the model; 0: none.", ge=0)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    atlas: AtlasConfig = field(default_factory=AtlasConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    generators: list[GeneratorConfig] = field(default_factory=list)   # [[generators]]; empty: the one [model] declares
    encoders: list[EncoderConfig] = field(default_factory=list)       # [[encoders]]; empty: see encoder_entries

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ARRAYS:
            if not d[name]:
                del d[name]   # a config without the array hashes as before the array existed
        return d

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all when none): the cache key of the stages reading them."""
        d = self.to_dict()
        chosen = {s: d[s] for s in (sections or d)}
        return short_hash(chosen)


# The arrays of tables: name -> (the dataclass of one table, what its own tables take, an example for the docs).
GENERATORS_EXAMPLE = """[[generators]]
name = "step-190k"
preset = "dmd2-imagenet64"
checkpoint = "checkpoints/step_190000"

[[generators]]
name = "step-200k"
preset = "auto"
checkpoint = "checkpoints/step_200000"
"""

ENCODERS_EXAMPLE = """[[encoders]]
name = "inception"
kind = "inception"
weights = "weights/pt_inception-2015-12-05-6726825d.pth"
reference_stats = "weights/VIRTUAL_imagenet64_labeled.npz"

[[encoders]]
name = "dinov2"
kind = "dinov2-vitl14"
weights = "weights/dinov2_vitl14_pretrain.pth"
head = "weights/dinov2_vitl14_linear_head.pth"
"""

ARRAYS = {
    "generators": (GeneratorConfig, "`[generators.config]` (after its `[[generators]]` table) takes the keys of "
                                    "`[model.config]`.", GENERATORS_EXAMPLE),
    "encoders": (EncoderConfig, "", ENCODERS_EXAMPLE),
}


# Keys that moved to another section: a file using the old name gets an error naming the new one.
MOVED = {"metrics.mask_layer": "atlas.mask_layer", "metrics.anchors_per_class": "atlas.anchors_per_class",
         "metrics.atlas_grid": "atlas.atlas_grid"}


@dataclass(frozen=True)
class Key:
    """One declared key: `section.name`, its type (the field annotation), default and Setting."""

    section: str
    name: str
    type: typing.Any
    default: typing.Any
    setting: Setting

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def optional(self) -> bool:
        """Unset (None) by default, as the keys of [model.config]: None says "from elsewhere"."""
        return type(None) in typing.get_args(self.type)

    @property
    def value_type(self):
        """The type of a set value: the annotation without its `| None`."""
        return next(t for t in typing.get_args(self.type) if t is not type(None)) if self.optional else self.type

    @property
    def item_type(self):
        return typing.get_args(self.value_type)[0] if typing.get_origin(self.value_type) is list else None

    def allowed_text(self) -> str:
        """The allowed values in words, a list's own rules after its items'."""
        s = self.setting
        rules = [s.allowed_text()]
        if self.item_type is not None:
            rules += [rule for rule, on in (("non-empty", s.nonempty), ("no repeats", s.unique)) if on]
        return "; ".join(r for r in rules if r)

    def type_text(self) -> str:
        item = self.item_type
        name = {str: "string", int: "integer", float: "number", bool: "boolean"}
        return f"list of {name[item]}s" if item else name[self.value_type]


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in file order; a table inside a section follows it as
    `section.name` ([model.config]). Arrays of tables are apart (`ARRAYS`, `array_keys`)."""
    out = {}
    for section, cls in typing.get_type_hints(Config).items():
        if section not in ARRAYS:
            out[section] = cls
            out |= _tables_of(section, cls)
    return out


def _tables_of(section: str, cls) -> dict[str, type]:
    return {f"{section}.{name}": t for name, t in typing.get_type_hints(cls).items() if dataclasses.is_dataclass(t)}


def keys() -> dict[str, Key]:
    """Every declared key, `section.name` -> Key, in file order."""
    out = {}
    for section, cls in sections().items():
        out |= _keys_of(section, cls)
    return out


def _keys_of(section: str, cls) -> dict[str, Key]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out[f"{section}.{f.name}"] = Key(section, f.name, hints[f.name], default, f.metadata["setting"])
    return out


def array_keys(array: str) -> dict[str, Key]:
    """The keys of one table of an array of tables and of its own tables ([generators.config]), `generators.name` ->
    Key."""
    cls = ARRAYS[array][0]
    out = _keys_of(array, cls)
    for table, table_cls in _tables_of(array, cls).items():
        out |= _keys_of(table, table_cls)
    return out


def generator_entries(c: Config) -> list[GeneratorConfig]:
    """The generators of a run: the [[generators]] tables, or the one [model] declares (named "": the layout and
    outputs of a one-generator run)."""
    return c.generators or [GeneratorConfig(name="", preset=c.model.preset, checkpoint=c.model.checkpoint,
                                            config=c.model.config)]


def encoder_entries(c: Config) -> list[EncoderConfig]:
    """The pretrained encoders of a run: the [[encoders]] tables, else the bundled demo classifier for the demo data."""
    if c.encoders or c.data.source != "demo":
        return c.encoders
    return [EncoderConfig(name="classifier", kind="demo-classifier", weights=f"{BUNDLED_PREFIX}demo-classifier")]


def reference_encoder(c: Config) -> GeneratorConfig:
    """The generator whose network extracts the real images and re-encodes every generated one (features.encoder)."""
    entries = generator_entries(c)
    return next((g for g in entries if g.name == c.features.encoder), entries[0])


def section_of(config: Config, section: str):
    """The dataclass instance holding a section's values (`model.config`: config.model.config)."""
    return functools.reduce(getattr, section.split("."), config)


def section_help(section: str, read_by: Mapping[str, str] | None = None) -> str:
    """A section's docstring in one line, then the sentence `read_by` gives it (which stages read it: the pipeline
    derives these from the stages' declarations)."""
    text = " ".join((sections()[section].__doc__ or "").split())
    return f"{text} {read_by[section]}" if read_by and section in read_by else text


# ---------------------------------------------------------------------------------------------
# Checking one value against its declaration.

def check_value(key: Key, value, where: str):
    """`value` as the key holds it (ints widen to floats), or a UserError `where: section.key: ...`."""
    w = f"{where}: {key.dotted}"
    if value is None and key.optional:  # unset (only a default can be: TOML has no null)
        return None
    item = key.item_type
    if item is None:
        return _check_scalar(key, key.value_type, value, w)
    if not isinstance(value, list):
        raise UserError(f"{w}: expected a list, got {value!r}")
    s = key.setting
    if s.nonempty and not value:
        raise UserError(f"{w}: the list is empty; give at least one item")
    if item is str:  # class lists accept ids as numbers too
        value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    out = [_check_scalar(key, item, v, w) for v in value]
    if s.unique:
        for i, v in enumerate(out):
            if v in out[:i]:
                raise UserError(f"{w}: {v!r} is repeated; give each item once")
    return out


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_scalar(key: Key, type_, value, w: str):
    ok = isinstance(value, type_) and (type_ is bool or not isinstance(value, bool))
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{w}: expected {_TYPE_WORDS[type_]}, got {value!r}")
    s = key.setting
    if type_ is str:
        if key.item_type is str and not value.strip():
            raise UserError(f"{w}: an item is empty; remove it")
        allowed = s.allowed()
        if allowed and value not in allowed:
            raise UserError(f"{w}: {value!r} is not one of {', '.join(allowed)}")
        if s.pattern and not re.fullmatch(s.pattern[0], value):
            raise UserError(f"{w}: {value!r} is not one of {s.pattern[1].replace(' | ', ', ')}")
    if type_ in (int, float):
        if type_ is float and not math.isfinite(value):
            raise UserError(f"{w}: expected a finite number, got {value!r}")
        if ((s.ge is not None and value < s.ge) or (s.gt is not None and value <= s.gt)
                or (s.le is not None and value > s.le) or (s.lt is not None and value >= s.lt)):
            raise UserError(f"{w}: must be {s.range_text()}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Loading.

def load_config(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, then the TOML file, then `overrides` ({"section.key": value}, None values ignored);
    every value checked, then the keys against each other. Any mistake is a one-line UserError."""
    config = Config()
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        _apply(config, _read_toml(path), str(path), origins)
    nested: dict[str, dict] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    _apply(config, nested, "command line", origins)
    check_config(config, origins)
    return config


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"save the config file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({' '.join(str(e).split())})") from None


def _apply(config: Config, data: dict, origin: str, origins: dict[str, str]) -> None:
    names = [s for s in sections() if "." not in s]
    for section, values in data.items():
        if section in ARRAYS:
            setattr(config, section, _tables(section, values, origin, origins))
            continue
        if section not in names:
            raise UserError(f"{origin}: unknown section [{section}]; valid: {', '.join(names)}")
        _apply_section(config, section, values, origin, origins)


def _apply_section(config: Config, section: str, values, origin: str, origins: dict[str, str]) -> None:
    if not isinstance(values, dict):
        raise UserError(f"{origin}: [{section}] must be a table")
    declared = keys()
    tables = [s for s in sections() if s.startswith(section + ".")]
    target = section_of(config, section)
    for name, value in values.items():
        dotted = f"{section}.{name}"
        if dotted in tables:
            _apply_section(config, dotted, value, origin, origins)
            continue
        if dotted in MOVED:
            raise UserError(f"{origin}: {dotted} moved to {MOVED[dotted]}")
        if dotted not in declared:
            valid = ", ".join([k.name for k in declared.values() if k.section == section] + [f"[{t}]" for t in tables])
            raise UserError(f"{origin}: unknown key {dotted}; valid keys of [{section}]: {valid}")
        setattr(target, name, check_value(declared[dotted], value, origin))
        origins[dotted] = origin


def _tables(array: str, tables, origin: str, origins: dict[str, str]) -> list:
    """The tables of an array (`[[generators]]`, `[[encoders]]`), each key (and each of its own tables, such as
    [generators.config]) checked against its declaration."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UserError(f"{origin}: {array} must be an array of tables, written [[{array}]]")
    cls, declared = ARRAYS[array][0], array_keys(array)
    subtables = {dotted.split(".", 1)[1] for dotted in _tables_of(array, cls)}
    out = []
    for i, table in enumerate(tables, 1):
        where = f"{origin}: [[{array}]] #{i}"
        entry = cls()
        items = [(array, entry, k, v) for k, v in table.items() if k not in subtables]
        for sub in subtables & set(table):
            if not isinstance(table[sub], dict):
                raise UserError(f"{where}: [{array}.{sub}] must be a table")
            items += [(f"{array}.{sub}", getattr(entry, sub), k, v) for k, v in table[sub].items()]
        for section, target, name, value in items:
            dotted = f"{section}.{name}"
            if dotted not in declared:
                raise UserError(f"{where}: unknown key {dotted}; valid keys of [{section}]: "
                                f"{', '.join(k.name for k in declared.values() if k.section == section)}")
            setattr(target, name, check_value(declared[dotted], value, where))
        if "name" not in table:
            raise UserError(f"{where}: {array}.name: required; name each of the {array}")
        out.append(entry)
    origins[array] = origin
    return out


def check_config(c: Config, origins: dict[str, str] | None = None) -> None:
    """Every value against its declaration, then the keys against each other (`BETWEEN_KEYS`); a
    UserError naming where the key was set: the file, "command line" or "defaults"."""
    origins = origins or {}

    def where(*dotted: str) -> str:  # the first of the keys the user set, else the defaults
        return next((origins[k] for k in dotted if k in origins), "defaults")

    for dotted, key in keys().items():
        check_value(key, getattr(section_of(c, key.section), key.name), where(dotted))
    for array in ARRAYS:
        for i, entry in enumerate(getattr(c, array), 1):
            for key in array_keys(array).values():
                target = section_of(entry, key.section.partition(".")[2]) if "." in key.section else entry
                check_value(key, getattr(target, key.name), f"{where(array)}: [[{array}]] #{i}")
    for check in BETWEEN_KEYS:
        check(c, where)


BETWEEN_KEYS: list[Callable[[Config, Callable[..., str]], None]] = []


def _between_keys(check):
    """Register a check between keys; its docstring is its line in docs/configuration.md."""
    BETWEEN_KEYS.append(check)
    return check


@_between_keys
def _data_path(c: Config, where) -> None:
    """`data.path` is required unless `data.source` is `demo`."""
    if c.data.source != "demo" and not c.data.path:
        raise UserError(f"{where('data.source', 'data.path')}: data.path: required for data.source = {c.data.source!r}")


@_between_keys
def _encoders(c: Config, where) -> None:
    """With `[[encoders]]`: their names are unique and none is one of `features.layers`; each gives its `weights`; a
    `head` and `precision = "bfloat16"` only with a dinov2 kind; the files named exist."""
    w = where("encoders")
    names = [e.name for e in c.encoders]
    for i, e in enumerate(c.encoders):
        at = f"{w}: [[encoders]] {e.name!r}"
        if e.name in names[:i]:
            raise UserError(f"{w}: encoders.name: {e.name!r} is repeated; name each encoder once")
        if e.name in c.features.layers:
            raise UserError(f"{at}: encoders.name: {e.name!r} is also a layer of features.layers; name it otherwise")
        if not e.weights:
            raise UserError(f"{at}: encoders.weights: required; give the {e.kind} weights file")
        if e.head and not e.kind.startswith("dinov2-"):
            raise UserError(f"{at}: encoders.head: a classification head is read for dinov2 kinds only, not {e.kind}")
        if e.precision == "bfloat16" and not e.kind.startswith("dinov2-"):
            raise UserError(f"{at}: encoders.precision: bfloat16 is for dinov2 kinds; {e.kind} runs in float32, as "
                            f"its protocol does")
        for key in ("weights", "head", "reference_stats"):
            value = getattr(e, key)
            if value and not value.startswith(BUNDLED_PREFIX) and not Path(value).is_file():
                raise UserError(f"{at}: encoders.{key}: {value}: " + ("not a file" if Path(value).exists()
                                                                      else "no such file"))


@_between_keys
def _variant_samples(c: Config, where) -> None:
    """`generate.variant_samples` is at most `generate.samples` (the variants share the class-conditioned set's first seeds)."""
    if c.generate.variant_samples > c.generate.samples:
        raise UserError(f"{where('generate.variant_samples', 'generate.samples')}: generate.variant_samples: "
                        f"{c.generate.variant_samples} exceeds generate.samples ({c.generate.samples}); the variants "
                        f"share the first seeds of the class-conditioned set")


@_between_keys
def _trajectory(c: Config, where) -> None:
    """With `trajectory.enabled`: `trajectory.sigmas` is non-empty, positive and strictly decreasing; with
    `trajectory.conditioning = "blend"`, `generate.variants` holds `blend` and `trajectory.samples` is at
    most `generate.variant_samples`."""
    t = c.trajectory
    if not t.enabled:
        return
    check_schedule(t.sigmas, "trajectory.sigmas", where("trajectory.sigmas"))
    if t.conditioning == "blend":
        if "blend" not in c.generate.variants:
            raise UserError(f"{where('trajectory.conditioning', 'generate.variants')}: trajectory.conditioning: "
                            f"'blend' needs 'blend' in generate.variants")
        if t.samples > c.generate.variant_samples:
            raise UserError(f"{where('trajectory.samples', 'generate.variant_samples')}: trajectory.samples: "
                            f"{t.samples} exceeds generate.variant_samples ({c.generate.variant_samples}), "
                            f"the blend set a path's blend comes from")


@_between_keys
def _architecture(c: Config, where) -> None:
    """With `model.preset = "auto"`, `model.checkpoint` is set and is a DhariwalUNet whose shapes tell its
    architecture. The architecture (with `[model.config]` over it) halves `img_resolution` to a whole
    number at every level of `channel_mult`, and each of `attn_resolutions` is one of those levels'
    resolutions. The same for each `[[generators]]` table (its preset, checkpoint and [generators.config])."""
    for g in generator_entries(c):
        # a [[generators]] table's keys are named as `generators.KEY` after its name; [model]'s as they are
        section = "generators" if g.name else "model"
        where_of = (lambda *k, g=g: f"{where('generators')}: [[generators]] {g.name!r}") if g.name else where
        w = where_of("model.preset", "model.checkpoint")
        if g.preset == "auto" and not g.checkpoint:
            raise UserError(f'{w}: {section}.preset = "auto" reads the architecture off {section}.checkpoint, '
                            f'which is not set')
        try:
            kwargs = _architecture_of(g).kwargs
        except UserError as e:  # the checkpoint's: unreadable, or not a DhariwalUNet
            raise UserError(f'{w}: {section}.preset = "auto": {e}') from None
        res, levels = kwargs["img_resolution"], len(kwargs["channel_mult"])
        w = where_of("model.config.img_resolution", "model.config.channel_mult", "model.config.attn_resolutions",
                     "model.preset")
        if res % 2 ** (levels - 1):
            raise UserError(f"{w}: {section}.config: img_resolution {res} does not halve to a whole number at each "
                            f"of the {levels} levels of channel_mult {kwargs['channel_mult']}")
        resolutions = [res >> i for i in range(levels)]
        stray = [r for r in kwargs["attn_resolutions"] if r not in resolutions]
        if stray:
            raise UserError(f"{w}: {section}.config.attn_resolutions: "
                            f"{stray[0]} is not the resolution of a level; the levels are {resolutions}")


@_between_keys
def _generators_between(c: Config, where) -> None:
    """With `[[generators]]`: their names are unique; each names its own preset, checkpoint and config (`model.preset`,
    `model.checkpoint` and `[model.config]` stay unset); `features.encoder` is empty or one of the names; every
    generator makes images of the reference encoder's resolution and classes; several generators need
    `features.generated = "reencode"` and `embedding.fit_on = "real"` (one feature space, one real map).
    Without them, `features.encoder` is empty."""
    names = [g.name for g in c.generators]
    w = where("generators")
    if not names:
        if c.features.encoder:
            raise UserError(f"{where('features.encoder')}: features.encoder: {c.features.encoder!r} names no generator; "
                            f"list the generators as [[generators]] tables")
        return
    for i, n in enumerate(names):
        if n in names[:i]:
            raise UserError(f"{w}: generators.name: {n!r} is repeated; name each generator once")
    model_keys = ["model.preset", "model.checkpoint"] + [k for k in keys() if k.startswith("model.config.")]
    for dotted in model_keys:
        if where(dotted) != "defaults":
            raise UserError(f"{where(dotted)}: {dotted}: set per generator with [[generators]]; "
                            f"give it in each [[generators]] table instead")
    if c.features.encoder and c.features.encoder not in names:
        raise UserError(f"{where('features.encoder')}: features.encoder: {c.features.encoder!r} is not one of the "
                        f"generators ({', '.join(names)})")
    encoder = reference_encoder(c)
    enc = _architecture_of(encoder)
    reads = (enc.kwargs["img_resolution"], enc.kwargs["label_dim"])
    for g in c.generators:
        arch = _architecture_of(g)
        makes = (arch.kwargs["img_resolution"], arch.kwargs["label_dim"])
        if makes != reads:
            raise UserError(f"{w}: generators.preset: {g.name!r} ({arch.name}) makes {makes[0]}px images of {makes[1]} "
                            f"classes, the reference encoder {encoder.name!r} ({enc.name}) reads {reads[0]}px "
                            f"images of {reads[1]} classes; compare generators of one resolution and class set")
    if len(names) > 1:
        for dotted, value, want in (("features.generated", c.features.generated, "reencode"),
                                    ("embedding.fit_on", c.embedding.fit_on, "real")):
            if value != want:
                raise UserError(f"{where(dotted)}: {dotted}: {value!r} with several generators; use {want!r}, "
                                f"so that every generator is measured in one feature space against one real map")


@_between_keys
def _layers(c: Config, where) -> None:
    """`features.layers`, `metrics.layer` and `atlas.mask_layer` are layers of the reference encoder's network
    ([model]'s, or that of the `[[generators]]` table `features.encoder` names; upstream names or aliases); no two
    of `features.layers` name the same block; `metrics.layer` is one of `features.layers`, spelt the same, or the
    name of an `[[encoders]]` table (the map and the neighbour panel in that standard space; then without
    `trajectory`)."""
    from .layers import resolve_layer

    arch = _architecture_of(reference_encoder(c))
    net = _meta_net(json.dumps(arch.kwargs, sort_keys=True))
    layers = c.features.layers

    def resolve(name: str, dotted: str, w: str) -> str:
        try:
            return resolve_layer(net, name)
        except UserError as e:
            raise UserError(f"{w}: {dotted} (preset {arch.name}): {e}") from None

    w = where("features.layers", "model.preset")
    upstream: dict[str, str] = {}
    for name in layers:
        block = resolve(name, "features.layers", w)
        if block in upstream:
            raise UserError(f"{w}: features.layers: {upstream[block]!r} and {name!r} are the same layer ({block}); "
                            f"give each block once")
        upstream[block] = name
    w = where("metrics.layer", "features.layers")
    if c.metrics.layer in {e.name for e in encoder_entries(c)}:   # the map drawn in a standard space
        if c.trajectory.enabled:
            raise UserError(f"{where('metrics.layer', 'trajectory.enabled')}: metrics.layer: {c.metrics.layer!r} is "
                            f"an encoder's space, where the few-step paths (UNet activations) cannot be drawn; set "
                            f"trajectory.enabled = false or pick one of features.layers")
        resolve(c.atlas.mask_layer, "atlas.mask_layer", where("atlas.mask_layer", "model.preset"))
        return
    block = resolve(c.metrics.layer, "metrics.layer", w)
    if c.metrics.layer not in layers:
        hint = (f"; write it as in features.layers: {upstream[block]!r}" if block in upstream
                else "; add it to features.layers or pick one of them")
        raise UserError(f"{w}: metrics.layer: {c.metrics.layer!r} is not one of features.layers "
                        f"({', '.join(layers)}){hint}")
    resolve(c.atlas.mask_layer, "atlas.mask_layer", where("atlas.mask_layer", "model.preset"))


def _architecture_of(generator: GeneratorConfig):
    """checkpoint.Architecture of a generator ([model]'s is `generator_entries(c)[0]` without [[generators]])."""
    from .checkpoint import model_architecture  # imports torch: only the checks between keys need it

    return model_architecture(generator)


@functools.lru_cache(maxsize=8)
def _meta_net(kwargs_json: str):
    """The network of these EDMPrecond keywords (JSON) on the meta device (no memory, no weights): its layer names."""
    from .models import build_network

    return build_network(json.loads(kwargs_json), device="meta")


def check_schedule(sigmas: Sequence[float], key: str = "trajectory.sigmas", where: str = "") -> list[float]:
    """The schedule as floats; a UserError naming `key` unless it is non-empty, finite, positive
    and strictly decreasing."""
    w = f"{where}: {key}" if where else key
    try:
        s = [float(v) for v in sigmas]
    except (TypeError, ValueError):
        raise UserError(f"{w}: expected a list of numbers, got {sigmas!r}") from None
    if not s:
        raise UserError(f"{w}: the schedule is empty; give at least one noise level, e.g. [80.0]")
    bad = [v for v in s if not math.isfinite(v) or v <= 0]
    if bad:
        raise UserError(f"{w}: every sigma must be positive and finite, got {bad[0]!r} in {s}")
    for a, b in zip(s, s[1:]):
        if b >= a:
            raise UserError(f"{w}: sigmas must be strictly decreasing, but {b:g} follows {a:g} in {s}")
    return s


# ---------------------------------------------------------------------------------------------
# Documents derived from the declarations.



def example_toml(read_by: Mapping[str, str] | None = None) -> str:
    """A commented example config (what `dmd2report init` writes): every key at its default; `read_by`: each
    section's "Read by" sentence (pipeline.read_by)."""
    lines = ["# dmd2report configuration. Every key is optional; command-line options override it.",
             "# Reference: docs/configuration.md (python -m dmd2report.pipeline --markdown).", ""]
    declared = keys()
    for section in sections():
        lines += [f"# {section_help(section, read_by)}", f"[{section}]"]
        for key in (k for k in declared.values() if k.section == section):
            s = key.setting
            allowed = key.allowed_text()
            note = s.help + (f" [{allowed}]" if allowed else "") + (f" (option {s.cli})" if s.cli else "")
            value = f"<{key.type_text()}>" if key.default is None else _toml_value(key.default)
            lines += [f"# {note}", f"{'# ' if key.default is None else ''}{key.name} = {value}"]
        lines.append("")
    for cls, _, example in ARRAYS.values():
        lines += [f"# {' '.join(cls.__doc__.split())}"] + [f"# {line}".rstrip() for line in example.splitlines()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def markdown(read_by: Mapping[str, str] | None = None, preface: Sequence[str] = ()) -> str:
    """The configuration reference (docs/configuration.md) from the declarations; `read_by` as in `example_toml`,
    `preface`: lines before the sections (the pipeline's stage table)."""
    out = ["# Configuration", "",
           "<!-- Generated by `python -m dmd2report.pipeline --markdown > docs/configuration.md`; "
           "edit the declarations in dmd2report/config.py and the stages' in dmd2report/stages/, not this file. -->",
           "", *preface,
           "`dmd2report build --config report.toml` reads a TOML file of the sections below; every key is "
           "optional, and the command-line options listed override the file. `dmd2report init` writes "
           "every key at its default. Every value is checked when the configuration loads, before any "
           "stage runs (numbers must be finite: `nan` and `inf` are refused); a mistake is a one-line error "
           "naming the file (or `command line`) and the key. Each section says which stages read it.", ""]
    declared = keys()
    for section in sections():
        out += [f"## [{section}]", "", section_help(section, read_by), "",
                "| key | type | default | allowed | option | meaning |", "|---|---|---|---|---|---|"]
        for key in (k for k in declared.values() if k.section == section):
            s = key.setting
            cells = [f"`{key.name}`", key.type_text(), "unset" if key.default is None else f"`{_toml_value(key.default)}`",
                     key.allowed_text().replace("|", "\\|"), f"`{s.cli}`" if s.cli else "", s.help.replace("|", "\\|")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for array, (cls, subtables, example) in ARRAYS.items():
        out += [f"## [[{array}]]", "", " ".join(cls.__doc__.split()), "",
                "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for key in (k for k in array_keys(array).values() if k.section == array):
            out.append(f"| `{key.name}` | {key.type_text()} | `{_toml_value(key.default)}` | "
                       f"{key.allowed_text().replace('|', chr(92) + '|')} | {key.setting.help.replace('|', chr(92) + '|')} |")
        out += [""] + ([subtables, ""] if subtables else []) + ["```toml", example.rstrip(), "```", ""]
    out += ["## Checks between keys", "", "After every value passes its own check above:", ""]
    out += [f"- {' '.join(check.__doc__.split())}" for check in BETWEEN_KEYS] + [""]
    moved = ", ".join(f"`{a}` is now `{b}`" for a, b in MOVED.items())
    out += ["## Moved keys", "", f"A file using an old key name is refused with the new one: {moved}.", ""]
    return "\n".join(out)


def model_config_toml(kwargs: dict, not_in_shapes: Sequence[str], their_source: str) -> str:
    """The [model.config] table of an architecture (EDMPrecond's keywords), as `dmd2report inspect` prints it
    for a user to paste: every key read off the shapes, then those in `not_in_shapes` after a comment
    saying they come from `their_source`, each with its help."""
    table = [k for k in keys().values() if k.section == "model.config"]
    lines = ["[model.config]"] + [f"{k.name} = {_toml_value(kwargs[k.name])}" for k in table if k.name not in not_in_shapes]
    lines += [f"# Not in the shapes (no tensor depends on them): {their_source}."]
    lines += [f"{k.name} = {_toml_value(kwargs[k.name])}  # {k.setting.help}" for k in table if k.name in not_in_shapes]
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)
