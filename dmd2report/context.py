"""What a stage is and what it is handed: `Stage`, the one declaration of a stage (beside its `run`, in its module
under `stages/`), and `Context`: the config, the work directory, the generators (loaded on first use), the class
index, a log."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .classes import ClassIndex
from .config import Config, GeneratorConfig, encoder_entries, generator_entries, reference_encoder
from .files import short_hash
from .workdir import WorkDir

log = logging.getLogger(__name__)


def compute_identity(device: torch.device, use_fp16: bool) -> dict:
    """What the numbers depend on besides weights, data and settings: the device type and the UNet's
    dtype (EDMPrecond.unet_dtype: bf16 on CUDA when the fp16 path is on). Batch size and compilation
    change only rounding, like cuDNN's choices. Stage keys and store keys both come from here."""
    return {"device": device.type, "unet_dtype": "bfloat16" if use_fp16 and device.type == "cuda" else "float32"}


class Generator:
    """One generator of the run: its identity without loading it (for cache keys), and the network on first use.
    `entry`: its [[generators]] table (name, preset, checkpoint, config); default the reference encoder's
    ([model]'s without [[generators]])."""

    def __init__(self, config: Config, workdir: WorkDir, write_cache: bool = True, entry: GeneratorConfig | None = None):
        self.config = config
        self.entry = entry or reference_encoder(config)
        self.name = self.entry.name
        self.workdir = workdir
        self.write_cache = write_cache   # torchrun: rank 0 alone writes checksums.json
        self._net = None
        self._identity = None
        self._architecture = None

    def architecture(self):
        """checkpoint.Architecture of this generator (the preset, or read off the checkpoint; [model.config] over it)."""
        if self._architecture is None:
            from .checkpoint import model_architecture

            self._architecture = model_architecture(self.entry)
        return self._architecture

    def identity(self) -> dict:
        """Architecture (a preset's name, else "custom" and its keywords) and checkpoint checksum (cached
        by path, size and mtime in checksums.json)."""
        if self._identity is None:
            from .checkpoint import bundled_weights, resolve_checkpoint_file

            m, arch = self.entry, self.architecture()
            path = resolve_checkpoint_file(m.checkpoint) if m.checkpoint else bundled_weights(m.preset)
            sha = (f"untrained-seed{self.config.run.seed}" if path is None
                   else self.workdir.checkpoint_sha256(path, write=self.write_cache))
            self._identity = {"preset": arch.name, "checkpoint": str(path or ""), "sha256": sha,
                              "untrained": path is None}
            if arch.name == "custom":
                self._identity["architecture"] = arch.kwargs
        return self._identity

    @property
    def checksum(self) -> str:
        return self.identity()["sha256"]

    def device(self) -> torch.device:
        from .device import resolve_device

        return resolve_device(self.config.run.device)

    def compute_identity(self) -> dict:
        """`compute_identity` of the configured device and precision, without loading the network."""
        precision = self.config.model.precision
        fp16 = precision == "bfloat16" or (precision == "auto" and self.architecture().kwargs["use_fp16"])
        return compute_identity(self.device(), fp16)

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            from .checkpoint import check_outputs, load_generator
            from .runtime import auto_batch_size, prepare

            device = self.device()
            net, info = load_generator(self.architecture(), self.identity()["checkpoint"] or None, "cpu",
                                       seed=self.config.run.seed)
            log.info("model: %s from %s on %s", info.preset, info.checkpoint or "random weights (UNTRAINED)", device)
            # Once a run, eagerly on the device before `prepare` compiles anything: a checkpoint whose
            # outputs are not finite is refused here rather than giving black images.
            check_outputs(net.to(device), info.checkpoint or f"random weights of preset {info.preset}")
            net = prepare(net, device, self.config.model.precision, self.config.model.compile,
                          batch_hint=auto_batch_size(device, self.config.features.batch_size))
            assert compute_identity(device, net.use_fp16) == self.compute_identity()  # prepare's rule is the same
            self._net = net
        return self._net

    def key_identity(self) -> list:
        """What a stage's results depend on of this generator, for cache keys: its checksum, its architecture (a
        preset's name, else its keywords) and `compute_identity` (nothing is loaded)."""
        return [self.checksum, self.identity().get("architecture", self.identity()["preset"]), self.compute_identity()]

    def class_index(self) -> ClassIndex:
        """The classes this generator is conditioned on: the demo's for the demo architecture (named as a preset or
        read off a checkpoint), else ImageNet's. The one place a model's class index is chosen."""
        return ClassIndex.demo() if self.architecture().name == "demo" else ClassIndex.imagenet()

    def unload(self) -> None:
        """Drop the network (a comparison holds one generator besides the reference encoder at a time)."""
        self._net = None


@dataclass
class Context:
    """One stage's view of a build. Stages read inputs and write outputs through `workdir` only.
    `generator` is the reference encoder; `generators` every generator by name (the reference among them;
    one generator named "" without [[generators]])."""

    config: Config
    workdir: WorkDir
    generator: Generator
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dmd2report"))
    command: str = "dmd2report build"
    generators: dict[str, Generator] = field(default_factory=dict)

    def __post_init__(self):
        if not self.generators:
            self.generators = {g.name: (self.generator if g.name == self.generator.name
                                        else Generator(self.config, self.workdir, self.generator.write_cache, g))
                               for g in generator_entries(self.config)}

    @classmethod
    def create(cls, config: Config, command: str = "dmd2report build", write_cache: bool = True) -> Context:
        workdir = WorkDir(Path(config.run.workdir))
        return cls(config, workdir, Generator(config, workdir, write_cache), command=command)

    def for_stage(self, module_name: str) -> Context:
        """The same context with the stage module's own logger."""
        return Context(self.config, self.workdir, self.generator, logging.getLogger(module_name), self.command,
                       self.generators)

    @functools.cached_property
    def encoders(self) -> dict[str, torch.nn.Module]:
        """The standard feature spaces' encoders (encoder_entries: [[encoders]], or the demo's), by name, loaded on
        first use on the run's device; a bad weights file is refused in one line before any image is encoded."""
        from .encoders.registry import load_encoder

        return {e.name: load_encoder(e, self.generator.device(), self.workdir, self.generator.write_cache)
                for e in encoder_entries(self.config)}

    def encoder_identities(self) -> list:
        """What the standard feature spaces are, for cache keys, without loading them: each encoder's name, kind and
        weight files' checksums."""
        from .encoders.registry import encoder_identity

        return [[e.name, encoder_identity(e, self.generator.device(), self.workdir, self.generator.write_cache)]
                for e in encoder_entries(self.config)]

    @functools.cached_property
    def real_images(self) -> dict:
        """The real images by content, for the stages that read them ({"data": integrity.Content}): the files the
        source reads (a class folder tree's chosen images, the NPZ batches) and its class index file; checked by
        stat, hashed where that changed. The demo data is made from the config and the code, already in the key.
        A data folder that is not there is None: unknown, the recorded content stands (a stage that must run
        says the folder is missing)."""
        from .classes import DATASET_INDEX_NAME
        from .sources import open_source

        d = self.config.data
        if d.source == "demo":
            return {}
        if not Path(d.path).exists():   # unmounted or moved after extraction: later stages may still run
            log.warning("%s: not found; the results made from the real images are kept unchecked", d.path)
            return {"data": None}
        g = self.generator

        def listing() -> list[str]:
            with open_source(self.config, g.architecture().kwargs["img_resolution"], g.class_index(),
                             self.workdir.demo_data) as source:
                names = ([p.name for p in source.files] if d.source == "imagenet64-npz"
                         else list(source.samples["source"]))
            return names + ([DATASET_INDEX_NAME] if (Path(d.path) / DATASET_INDEX_NAME).is_file() else [])

        # The settings that choose the files: the listing is reused while they and the folders are unchanged.
        selection = short_hash([d.source, d.classes, d.per_class, d.max_samples, self.config.run.seed,
                                g.class_index().origin])
        return {"data": self.workdir.content(Path(d.path), listing, write=g.write_cache, selection=selection)}

    @functools.cached_property
    def classes(self) -> ClassIndex:
        """The class index of the real data (names of every set), from the data and the reference encoder's classes."""
        from .sources import source_class_index

        return source_class_index(self.config.data, self.generator.class_index())


# ---------------------------------------------------------------------------------------------
# A stage, declared once beside its `run`: the pipeline's order, cache keys, dispatch, the CLI's commands and
# `build --help`, and the docs' stage table and config "Read by" lines all derive from these declarations.

@dataclass(frozen=True)
class Stage:
    """One stage of `dmd2report build`: what it is called, what it reads and writes, how it runs.

    Its cache key (pipeline.stage_keys) hashes the keys of the stages `after` it, the config keys it `reads` (whole
    sections, or `section.key`) less those it `ignores`, and whatever `inputs(ctx)` returns (identities read without
    running anything: a checkpoint's checksum, the templates' files), so a stage reruns exactly when one of them changed.
    Beside the key, what it reads by content: the files `content(ctx)` names ({what: integrity.Content}, e.g. the
    real images) and the results of the stages before it (their recorded digests). Its results are the files under
    `outputs(ctx)`, whose digests are recorded when it finishes and checked before anything reads them.
    """

    name: str
    run: Callable[..., None]          # run(ctx: Context, overwrite: bool): inputs from the work directory, outputs to it
    help: str                         # one line: the stage command's help, `build --help`, the docs' stage table
    writes: str                       # where its results go (the docs' stage table), under the work directory
    after: tuple[str, ...] = ()       # the stages whose results it reads: their keys chain into its key
    reads: tuple[str, ...] = ()       # the config sections and keys its results depend on
    ignores: tuple[str, ...] = ()     # keys of the sections it reads that change no result (batch sizes)
    inputs: Callable[[Context], list] | None = None   # what else its results depend on (identities, not config)
    content: Callable[[Context], dict] | None = None  # the files it reads, by content: {what: integrity.Content}
    outputs: Callable[[Context], list[Path]] | None = None   # the folders (files) it writes: its results
    uses_model: bool = False          # loads a generator (its command takes [model] and [[generators]])
    sharded: bool = False             # splits its work across torchrun processes (the other ranks join it)
    uses_device: bool = True          # computes on `run.device` (its command takes --device; render does not)
    config_options: tuple[str, ...] = ()   # sections whose options its command takes besides those it reads
