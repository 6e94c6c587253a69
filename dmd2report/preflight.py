"""Every check that needs no model output, run before the first stage of `dmd2report build` and of each stage command:
a mistake found here costs a second, not the minutes to hours of the stages before the one that would find it.

What is checked depends on the stages asked for: for `render`, the site folder (not a file, not the work directory
or a folder holding it, not a non-empty folder that is no dmd2report site) and every template, ours and the user's
`report.template_dir`, compiled, with each name a template reads checked against the context the pages provide
(`PAGE_CONTEXT`, and each shipped page's own names, read off its template): a Jinja syntax error or an unknown name
is one line with the template's file and line; for the model stages, each encoder's weight files (readable, of a
supported format, not recognisably another network: the header or a memory map, the weights themselves are read
once, when the stage loads them) and free disk space against the expected size of the stores (samples x stored
bytes a sample); for `measure`, each reference statistics file (`mu` and `sigma` of the encoder's dimension).
Each problem is a `UserError` of one line; the CLI prints it and exits 2 before any stage starts.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

from .config import Config, encoder_entries, generator_entries
from .errors import UserError

log = logging.getLogger(__name__)

# What every page's template is rendered with (report/render.py: `_common`, `_render_folder`, `_build_page`), and the
# macros base.html imports as `ui`; a page's own names are those its shipped template reads.
PAGE_CONTEXT = ("run", "model", "sources", "n_real", "n_gen", "nav", "root", "single", "fragment", "link", "map_link",
                "map_colour_link", "sprite_css", "thumb", "thumb_px", "inline_css", "inline_js", "inline_data", "page",
                "divs", "bokeh_script", "ui")
SINGLE_CONTEXT = ("sections", "bokeh_scripts", "inline_bokehjs")   # single.html's own (the one-file report)
MODEL_STAGES = ("extract", "generate", "trajectory", "atlas")
GIB = 2**30


def check(config: Config, stages) -> None:
    """The checks the `stages` (names) asked for need, in the order their stages would meet them."""
    stages = set(stages)
    if stages & set(MODEL_STAGES):
        check_encoder_weights(config)
    if stages & {"extract", "generate"}:
        check_disk_space(config)
    if "measure" in stages:
        check_reference_stats(config)
    if "render" in stages:
        check_site(config)
        check_templates(config.report.template_dir)


# ---------------------------------------------------------------------------------------------
# The site folder.

def check_site(config: Config) -> None:
    """run.site may be replaced whole by render: refuse a file, the work directory or a folder holding it, and a
    non-empty folder that render did not write (it marks its sites with render.SITE_MARKER)."""
    from .report.render import SITE_MARKER

    site, workdir = Path(config.run.site), Path(config.run.workdir)
    if site.exists() and not site.is_dir():
        raise UserError(f"{site}: run.site is a file, not a folder; choose another --site folder")
    if site.resolve() == workdir.resolve() or site.resolve() in workdir.resolve().parents:
        raise UserError(f"{site}: run.site would replace the work directory {workdir} (run.workdir); "
                        f"choose another --site folder")
    if site.is_dir() and not (site / SITE_MARKER).exists() and any(site.iterdir()):
        raise UserError(f"{site}: folder is not empty and is not a dmd2report site; choose another --site folder")


# ---------------------------------------------------------------------------------------------
# Templates.

def check_templates(template_dir: str) -> None:
    """Compile every template the site may render (ours, reachable as `default:NAME`, and the user's folder), and
    refuse a name a template reads that its page's context lacks; one line with the file and the line."""
    import jinja2
    from jinja2 import meta, nodes

    from .report.render import _environment
    from .resources import templates_dir, user_template_dir

    user = user_template_dir(template_dir)
    env = _environment(user)
    ours = sorted(p.name for p in templates_dir().glob("*.html"))
    own_names = {name: meta.find_undeclared_variables(env.parse(env.loader.get_source(env, f"default:{name}")[0]))
                 for name in ours}
    every_page = set(PAGE_CONTEXT) | set(env.globals)
    anywhere = every_page | set(SINGLE_CONTEXT) | set().union(*own_names.values())
    theirs = [] if user is None else sorted(p.relative_to(user).as_posix() for p in user.rglob("*.html")
                                            if "static" not in p.relative_to(user).parts[:1])
    for name in [f"default:{n}" for n in ours] + theirs:
        try:
            source, filename, _ = env.loader.get_source(env, name)
            tree = env.parse(source, name, filename)
            env.compile(tree, name, filename)   # what parsing alone lets through: unknown filters and tests
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"{e.filename or name}:{e.lineno}: template error: {' '.join(str(e.message).split())}") \
                from None
        bare = name.removeprefix("default:")
        page_like = "/" not in bare and not bare.startswith("_") and bare not in ("base.html", "macros.html",
                                                                                    "single.html")
        allowed = (every_page | own_names.get(bare, set())) if page_like else anywhere
        guarded = {t.node.name for t in tree.find_all(nodes.Test)   # `x is defined` may name what is absent
                   if t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name)}
        unknown = meta.find_undeclared_variables(tree) - allowed - guarded
        if unknown:
            line, word = min((n.lineno, n.name) for n in tree.find_all(nodes.Name) if n.name in unknown)
            offer = sorted(allowed - set(env.globals) - {"ui"})
            raise UserError(f"{filename}:{line}: template error: {word!r} is undefined: the "
                            f"{'page' if page_like else 'template'} is rendered with {', '.join(offer)}")


# ---------------------------------------------------------------------------------------------
# Encoders' files.

def check_encoder_weights(config: Config) -> None:
    """Each encoder's weights (and head): a readable file of a supported format, its shapes read from the header (or
    a memory map), refused when its layout is recognisably another network than its kind."""
    from .checkpoint import read_shapes
    from .encoders.registry import weight_file
    from .encoders.weights import DINOV2_SIZES, guess_kind

    for e in encoder_entries(config):
        files = [(weight_file(e.weights), "weights")] + ([(Path(e.head), "head")] if e.head else [])
        for path, role in files:
            if not path.is_file():
                raise UserError(f"{path}: no such file (encoders {e.name!r}: {role}, kind {e.kind})")
            got = guess_kind({k: tuple(t.shape) for k, t in read_shapes(path).state_dict.items()})
            if role == "head":
                want = "a linear classification head"
            elif e.kind.startswith("inception"):
                want = "an Inception-v3"
            elif e.kind.startswith("dinov2-"):
                from .encoders.dinov2 import VARIANTS

                want = f"a DINOv2 {DINOV2_SIZES[VARIANTS[e.kind]['embed_dim']]} backbone"
            else:
                want = None   # the demo classifier's layout has no name; its load checks every shape
            if got is not None and (want is None or not got.startswith(want)):
                raise UserError(f"{path}: holds {got}, not the {role} of an encoder of kind {e.kind} "
                                f"(encoders {e.name!r}; wrong kind of weights file?)")


def feature_dim(kind: str) -> int | None:
    """An encoder kind's feature dimension, known without its weights (None: the demo classifier's, set by them)."""
    if kind.startswith("inception"):
        from .encoders.inception import FIDInceptionV3

        return FIDInceptionV3.feature_dim
    if kind.startswith("dinov2-"):
        from .encoders.dinov2 import VARIANTS

        return VARIANTS[kind]["embed_dim"]
    return None


def check_reference_stats(config: Config) -> None:
    """Each encoder's reference statistics: a readable .npz of `mu` (D,) and `sigma` (D, D), D its features'."""
    from .encoders.stats import load_stats

    for e in encoder_entries(config):
        if e.reference_stats:
            load_stats(Path(e.reference_stats), feature_dim(e.kind))


# ---------------------------------------------------------------------------------------------
# Disk space.

def expected_samples(config: Config) -> tuple[int, int]:
    """(real, generated) sample counts the run's stores will hold, from the config and the data's headers: an upper
    bound where the data holds fewer images than the caps."""
    from .sources import demo_per_class

    d = config.data
    root = Path(d.path)
    if d.source == "demo":
        from .demo.dataset import NUM_CLASSES

        available, n_classes = demo_per_class(d) * NUM_CLASSES, NUM_CLASSES
    elif d.source == "imagenet64-npz":
        from .classes import ClassIndex
        from .sources import _npz_data_header, source_class_index

        available, n_classes = 0, len(source_class_index(d, ClassIndex.imagenet()))
        for f in sorted(root.glob("*.npz")) if root.is_dir() else []:
            try:
                available += _npz_data_header(f)[0][0]
            except Exception:   # an unreadable file: extract names it in one line
                pass
    else:
        folders = [e for e in os.scandir(root) if e.is_dir()] if root.is_dir() else []
        n_classes = len(folders)
        available = sum(1 for folder in folders for _ in os.scandir(folder.path)) \
            if d.per_class == 0 and d.max_samples == 0 else math.inf   # only counted when nothing caps it
    real = available
    if d.per_class > 0:
        real = min(real, d.per_class * (len(d.classes) or n_classes))
    if d.max_samples > 0:
        real = min(real, d.max_samples)
    real = int(min(real, 10**12))
    g = config.generate
    generated = (g.samples + g.variant_samples * (len(g.variants) - 1)) * len(generator_entries(config))
    return real, generated


def expected_bytes(config: Config) -> tuple[int, int]:
    """(bytes the stores of the run will hold, bytes a sample): the features of every layer (at features.dtype) and
    encoder (float32, and its logits), a thumbnail, and the sample's metadata row."""
    import numpy as np

    from .checkpoint import model_architecture
    from .features import feature_dims
    from .models import build_network

    f = config.features
    net = build_network(model_architecture(generator_entries(config)[0]).kwargs, device="meta")
    per_sample = sum(feature_dims(net, list(f.layers), f.reduce).values()) * np.dtype(f.dtype).itemsize
    for e in encoder_entries(config):
        per_sample += 4 * ((feature_dim(e.kind) or 256) + 1000)
    per_sample += 3 * config.report.thumb_size ** 2 + 200
    real, generated = expected_samples(config)
    return (real + generated) * per_sample, per_sample


def _size(folder: Path) -> int:
    return sum(e.stat().st_size for e in folder.rglob("*") if e.is_file()) if folder.is_dir() else 0


def check_disk_space(config: Config) -> None:
    """Refuse a run whose stores would not fit in the free space of the work directory's file system (what the stores
    hold already counts as written)."""
    workdir = Path(config.run.workdir)
    need, per_sample = expected_bytes(config)
    need -= _size(workdir / "stores")
    existing = next(p for p in [workdir, *workdir.absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    log.debug("preflight: the stores need about %.2f GiB (%d bytes a sample), %.2f GiB free", need / GIB, per_sample,
              free / GIB)
    if need > free:
        raise UserError(f"{workdir}: not enough disk space: the run's stores need about {_gib(need)} "
                        f"({per_sample:,} bytes a sample), {_gib(free)} free on {existing}; free space or choose "
                        f"another run.workdir")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
