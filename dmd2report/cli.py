"""The command line: a thin Click layer over the stage functions.

Every user mistake surfaces as a UserError and is printed as one line with exit code 2;
a traceback means a bug in dmd2report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import UserError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="dmd2report")
def cli():
    """Static reports on where a DMD2 one-step generator lands among real data."""


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
    """Describe a checkpoint: format, counts, matching preset, hookable layers."""
    from .checkpoint import describe_mismatch, identify, read_checkpoint
    from .models import build_preset

    ckpt = read_checkpoint(path)
    best, _ = identify(ckpt)
    click.echo(f"file:        {ckpt.path}")
    click.echo(f"format:      {ckpt.format}" + (f" (stripped prefix {ckpt.stripped_prefix!r})" if ckpt.stripped_prefix else ""))
    click.echo(f"tensors:     {ckpt.num_tensors:,}")
    click.echo(f"parameters:  {ckpt.num_parameters:,}")
    if best.exact:
        click.echo(f"preset:      {best.preset} (exact match: loads strictly)")
    else:
        click.echo(f"preset:      none matches; nearest is {best.preset}: {describe_mismatch(best)}")
    click.echo(f"layers of {best.preset}:")
    _echo_layers(build_preset(best.preset, device="meta"), indent="  ")
    if not best.exact:
        sys.exit(1)


@cli.command()
@click.argument("path", default="report.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path, force):
    """Write a commented example configuration (default report.toml)."""
    from .config import example_toml

    if path.exists() and not force:
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    path.write_text(example_toml(), encoding="utf-8")
    click.echo(f"wrote {path}")


def main():  # console script entry point
    cli(prog_name="dmd2report")


if __name__ == "__main__":
    main()
