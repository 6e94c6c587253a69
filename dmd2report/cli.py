"""The command line: a thin Click layer over the pipeline and the libraries.

`build` and one command per stage derive from the stages' declarations (`dmd2report.stages`), which are
imported only when one of those commands, or the list of commands, is asked for: `init`, `inspect`, `layers`
and `compare` start without them. Every user mistake surfaces as a UserError and is printed as one line with
exit code 2; a traceback means a bug in dmd2report.
"""

from __future__ import annotations

import errno
import logging
import shlex
import sys
from pathlib import Path

import click

from .console import process_rank, setup_logging
from .errors import EXIT_USER_ERROR, UserError, is_disk_full
from .resources import EXAMPLE_CONFIGS, bundled_by_name


class _Group(click.Group):
    def list_commands(self, ctx):
        _add_stage_commands(self)
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        if name not in self.commands:
            _add_stage_commands(self)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except OSError as e:  # disk full, or a folder the user may not write, where no writer caught it: one line
            if not is_disk_full(e) and e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            from .files import write_error

            where = e.filename or "the work directory"
            message = write_error(where, e) if is_disk_full(e) else f"{where}: {e.strerror or e}"
            click.echo(f"error: {message}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.UsageError as e:  # a bad option value, an unknown option: one line too
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split()).rstrip('.')}{hint}", err=True)
            sys.exit(EXIT_USER_ERROR)


@click.group(cls=_Group)
@click.version_option(package_name="dmd2report")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (no progress lines or bars).")
@click.option("-v", "--verbose", is_flag=True, help="Also debugging details.")
def cli(quiet, verbose):
    """Static reports on where a DMD2 one-step generator lands among real data.

    Progress goes to stderr: `[stage]` lines and bars (hidden with -q, and on torchrun ranks
    other than 0); a command's own output (report path, inspect, layers, compare) to stdout."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    setup_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


@cli.command()
@click.option("--preset", default="dmd2-imagenet64", show_default=True, help="Model preset.")
def layers(preset):
    """List the hookable layers of a preset with their output shapes."""
    from .models import build_preset

    _echo_layers(build_preset(preset, device="meta"), indent="")


def _echo_layers(net, indent: str) -> None:
    from .layers import block_names, layer_aliases, layer_shapes

    shapes = layer_shapes(net)
    alias_of: dict[str, list[str]] = {}
    for alias, upstream in layer_aliases(net).items():
        alias_of.setdefault(upstream, []).append(alias)
    for name in block_names(net):
        c, h, w = shapes[name]
        click.echo(f"{indent}{name:<18} {c:>5}x{h}x{w:<4} {', '.join(alias_of.get(name, []))}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def inspect(path):
    """Describe a checkpoint: format, counts, its architecture (read off the shapes), hookable layers, and the
    [model.config] table that loads it. Anything but a DhariwalUNet is a one-line error naming what could
    not be read; a network whose outputs are not finite or do not depend on its input, which every stage refuses,
    is said so (`outputs:`, and a warning)."""
    from .checkpoint import check_outputs, checkpoint_architecture, load_into, read_checkpoint
    from .models import build_network

    ckpt = read_checkpoint(path)  # every tensor: damaged weights are named here too
    kwargs, like = checkpoint_architecture(ckpt)
    net = build_network(kwargs)
    load_into(net, ckpt, "the architecture read off its shapes")
    try:   # the probe every run makes when it loads a generator: the file is described either way
        check_outputs(net.eval(), ckpt.path)
        probe = "finite, and depend on the input (two noises and classes at sigma 80)"
    except UserError as e:
        probe = f"REFUSED by every stage that loads it: {str(e).removeprefix(f'{ckpt.path}: ')}"
        logging.getLogger(__name__).warning("%s", e)
    del net
    click.echo(f"file:        {ckpt.path}")
    click.echo(f"format:      {ckpt.format}" + (f" (stripped prefix {ckpt.stripped_prefix!r})" if ckpt.stripped_prefix else ""))
    click.echo(f"tensors:     {ckpt.num_tensors:,}")
    click.echo(f"parameters:  {ckpt.num_parameters:,}")
    click.echo(f"outputs:     {probe}")
    if like:
        click.echo(f'preset:      {like} (its shapes: loads strictly with model.preset = "{like}" or "auto")')
    else:
        click.echo('preset:      none (a DhariwalUNet of its own: loads strictly with model.preset = "auto", '
                   'or with any preset and the [model.config] table below)')
    click.echo("layers:")
    _echo_layers(build_network(kwargs, device="meta"), indent="  ")
    click.echo(f"\n# The architecture read off {ckpt.path.name}; paste into your config.")
    click.echo(inspect_table(kwargs, like))


def inspect_table(kwargs: dict, like: str | None) -> str:
    """The [model.config] table `inspect` prints for an architecture read off a checkpoint (the guide shows one,
    docs/your-model-and-data.md)."""
    from .config import model_config_toml
    from .models.architecture import DEFAULTS

    source = f"preset {like}'s values, whose shapes these are" if like else "the defaults (EDM's, DMD2's)"
    return model_config_toml(kwargs, list(DEFAULTS), source)


@cli.command()
@click.argument("path", default="report.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--example", metavar="NAME", default=None,
              help=f"Write a bundled example config instead, ready to build: {', '.join(EXAMPLE_CONFIGS)} (the demo "
                   f"generator against an earlier checkpoint of its training, with a Compare page).")
def init(path, force, example):
    """Write a commented example configuration (default report.toml)."""
    from .config import example_toml
    from .files import save_text
    from .pipeline import read_by

    text = (bundled_by_name(EXAMPLE_CONFIGS, example, "example config").read_text(encoding="utf-8")
            if example is not None else example_toml(read_by()))
    if path.exists() and not force:
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    save_text(path, text)
    click.echo(f"wrote {path}")


def _config_options(f, stage=None):
    """The options of build and of the stage commands: --config, then one per config key declared with a flag
    (dmd2report/config.py), its help and choices from the declaration; each overrides the file's key. Their
    values are checked by load_config, as the file's are. A stage command's --help lists those of the keys it
    takes (`command_keys`); it accepts the others unlisted, as a config file's keys, since they still make the
    cache keys of the stages before it (`render --fit-on both` after `build --fit-on both` finds fit's key)."""
    from .config import keys

    taken = None if stage is None else command_keys(stage)
    options = [click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="TOML configuration (`dmd2report init` writes an example; docs/configuration.md).")]
    for key in keys().values():
        s = key.setting
        if not s.cli:
            continue
        hidden = taken is not None and key.dotted not in taken and key.section not in taken
        name = f"{key.section}__{key.name}"  # click parameter names can't hold dots: run__seed is run.seed
        bounds = s.range_text()
        text = f"{s.help}{' Comma-separated.' if key.item_type else ''} [{key.dotted}{'; ' + bounds if bounds else ''}]"
        if key.type is bool:
            options.append(click.option(s.cli, name, is_flag=True, default=None, help=text, hidden=hidden))
        elif key.item_type is not None:
            options.append(click.option(s.cli, name, metavar="A,B,...", help=text, hidden=hidden))
        elif s.choices is not None and not callable(s.choices):
            options.append(click.option(s.cli, name, type=click.Choice(s.allowed()), help=text, hidden=hidden))
        else:
            metavar = f"[{s.pattern[1].replace(' ', '')}]" if s.pattern else None
            options.append(click.option(s.cli, name, type=key.type, metavar=metavar, help=text, hidden=hidden))
    for option in reversed(options):
        f = option(f)
    return f


def command_keys(stage) -> set[str]:
    """The config sections and keys a stage's command lists options for, from its declaration: the work directory,
    the device (a stage that computes), what it `reads` and its `config_options`, and `[model]` (a stage that loads
    a generator). `render --help` so lists no model or data option."""
    return {"run.workdir", *(("run.device",) if stage.uses_device else ()), *stage.reads, *stage.config_options,
            *(("model",) if stage.uses_model else ())}


def _load(kwargs):
    from .config import keys, load_config

    declared = keys()
    path = kwargs.pop("config_path", None)
    overrides = {}
    for name, value in kwargs.items():
        if "__" not in name:
            continue
        key = name.replace("__", ".")
        if declared[key].item_type is not None and value is not None:
            value = [v.strip() for v in value.split(",") if v.strip()]
        overrides[key] = value
    return load_config(path, overrides)


def command_line() -> str:
    """The command as typed, for the index page ("how it was built") and the work directory's lock."""
    return " ".join(shlex.quote(a) for a in ["dmd2report", *sys.argv[1:]])


def _add_stage_commands(group: click.Group) -> None:
    """`build` and one command per stage, from the stages' declarations (once)."""
    if "build" in group.commands:
        return
    from . import preflight
    from .pipeline import STAGE_NAMES, STAGES, build as run_build

    @click.option("--force", "force", multiple=True, metavar="STAGE",
                  help=f"Rerun a stage ({', '.join(STAGE_NAMES)}) even if its inputs are unchanged (repeatable).")
    @_config_options
    def build(force, **kwargs):
        config = _load(kwargs)
        preflight.check(config, STAGE_NAMES)   # every check that needs no model output, before the first stage
        run_build(config, STAGE_NAMES, force=force, command=command_line())
        if process_rank() == 0:   # under torchrun, once
            click.echo(f"report: {Path(config.run.site) / 'index.html'}")

    build.__doc__ = f"Run every stage ({', '.join(STAGE_NAMES)}), skipping unchanged ones."
    group.command("build")(build)
    for stage in STAGES:
        group.command(stage.name, help=stage.help)(_stage_command(stage, run_build))


def _stage_command(stage, run_build):
    name = stage.name

    @click.option("--overwrite", is_flag=True, help="Replace results made with another configuration.")
    def command(overwrite, **kwargs):
        # Explicit: the stage runs even if recorded as done. Its store resumes an interrupted run of
        # the same configuration and refuses another one unless --overwrite.
        from . import preflight

        config = _load(kwargs)
        preflight.check(config, (name,))
        run_build(config, (name,), force=(name,), overwrite=overwrite, command=command_line())
    return _config_options(command, stage)


@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, help="Metric to watch (repeatable; default: all headline metrics).")
@click.option("--threshold", default=0.02, show_default=True, help="Largest allowed move in the bad direction.")
@click.option("--generator", default=None, help="The generator compared, of a file holding several ([[generators]]).")
def compare(a, b, metrics, threshold, generator):
    """What changed between two metrics.json files; exit 1 when a watched metric regressed."""
    from .compare import compare_metrics

    lines, regressed = compare_metrics(a, b, list(metrics) or None, threshold, generator)
    for line in lines:
        click.echo(line)
    sys.exit(1 if regressed else 0)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML configuration: its run.workdir and run.site are checked.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="A work directory to check.")
@click.option("--site", type=click.Path(path_type=Path), default=None, help="A rendered site to check.")
@click.option("--quick", is_flag=True,
              help="Trust files whose size and modification time are the recorded ones, as build does "
                   "(default: hash every file).")
def verify(config_path, workdir, site, quick):
    """Check a work directory's results and a site against the digests recorded when they were written, running
    nothing (for CI): exit 0 when intact, 1 with one line per problem. Without --workdir or --site, the config's
    (default: the demo's) work directory and site."""
    from .integrity import verify_site, verify_workdir

    if workdir is None and site is None:
        from .config import load_config

        run = load_config(config_path).run
        workdir, site = Path(run.workdir), Path(run.site)
    problems = (verify_workdir(workdir, full=not quick) if workdir is not None else []) + \
               (verify_site(site, full=not quick) if site is not None else [])
    for line in problems:
        click.echo(f"error: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"intact: {', '.join(str(p) for p in (workdir, site) if p is not None)}")


def _passthrough(name: str, module: str, doc: str) -> None:
    """A subcommand that hands its arguments to a module's own argparse `main` (the demo scripts)."""
    @click.pass_context
    def command(ctx):
        import importlib

        sys.exit(importlib.import_module(module).main(list(ctx.args)))
    command.__doc__ = doc
    cli.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                        "help_option_names": []}, add_help_option=False)(command)


_passthrough("demo-data", "dmd2report.demo.dataset",
             "The demo dataset: `grid OUT.png` or `npz OUT_DIR --per-class N` (see --help).")
_passthrough("demo-train", "dmd2report.demo.train", "Train the demo generator (EDM teacher, one-step student); --help.")
_passthrough("demo-classifier", "dmd2report.demo.classifier",
             "Train or evaluate the demo classifier (the demo's classifier feature space); --help.")
_passthrough("demo-quality", "dmd2report.demo.quality", "Class fidelity and diversity of a demo generator; --help.")


def main():  # console script entry point
    cli(prog_name="dmd2report")


if __name__ == "__main__":
    main()
