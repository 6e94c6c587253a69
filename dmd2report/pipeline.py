"""`dmd2report build`: the stages in order, each rerun only when its inputs changed.

The stages are declared once each, beside their `run`, as a `context.Stage` in their module under `stages/`
(`stages.STAGES` holds them in order). Everything else about a stage derives from its declaration here: its
cache key (`stage_keys`), the dispatch (`run_stages`), and the reference's stage table and "Read by" lines
(`reference_markdown`, docs/configuration.md); the CLI's commands derive from it in cli.py.

`<workdir>/stages.json` records the key each stage last finished with. A stage whose key is unchanged is skipped;
`--force STAGE` reruns it. Keys chain (a stage's key holds the keys of the stages it reads), so a change reruns
everything after it.
"""

from __future__ import annotations

import logging
import sys
import time

from . import config as config_module
from .chunks import process_rank
from .console import in_stage
from .context import Context, Stage
from .errors import UserError
from .files import short_hash
from .stages import STAGES

log = logging.getLogger(__name__)

STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def _config_values(c: dict, stage: Stage) -> dict:
    """The config values a stage reads (whole sections or `section.key`), less those it ignores."""
    out = {}
    for dotted in stage.reads:
        section, _, key = dotted.partition(".")
        value = c[section][key] if key else c[section]
        if not key:
            value = {k: v for k, v in value.items() if f"{section}.{k}" not in stage.ignores}
        out[dotted] = value
    return out


def stage_keys(ctx: Context) -> dict[str, str]:
    """The cache key of every stage from the config and the generators' identities (nothing is loaded)."""
    c = ctx.config.to_dict()
    keys: dict[str, str] = {}
    for stage in STAGES:
        keys[stage.name] = short_hash([stage.name, [keys[a] for a in stage.after], _config_values(c, stage),
                                       stage.inputs(ctx) if stage.inputs else []])
    return keys


def run_stages(ctx: Context, stages=STAGE_NAMES, force=(), overwrite: bool | None = None) -> list[str]:
    """Run `stages` (names, in pipeline order) skipping those whose key is unchanged; returns the stages that ran.

    `overwrite=None` is `build`'s rule: it owns its work directory, so a store written under an
    older key is replaced and a forced stage starts afresh. A stage command passes the user's
    `--overwrite`: without it a store of another configuration is refused, and a store of the
    same configuration resumes (or is found complete).

    Rank 0 holds the work directory's lock for the whole run; under torchrun the other ranks
    join only the sharded stages.
    """
    unknown = [s for s in force if s not in BY_NAME]
    if unknown:
        raise UserError(f"--force {unknown[0]}: unknown stage; stages: {', '.join(STAGE_NAMES)}")
    rank = process_rank()
    if rank != 0:
        return _run(ctx, stages, force, overwrite, rank)
    with ctx.workdir.locked(ctx.command):
        return _run(ctx, stages, force, overwrite, rank)


def _run(ctx: Context, stages, force, overwrite, rank: int) -> list[str]:
    wd = ctx.workdir
    keys = stage_keys(ctx)
    recorded = wd.recorded()
    ran = []
    for stage in (BY_NAME[name] for name in STAGE_NAMES if name in stages):
        name = stage.name
        if rank != 0 and not stage.sharded:
            continue  # torchrun: the other ranks help with the sharded stages only
        previous = recorded.get(name, {}).get("key")
        log.debug("[%s] key %s, recorded %s", name, keys[name], previous)
        if previous == keys[name] and name not in force and not recorded[name].get("unfinished"):
            log.info("[%s] up to date", name)
            continue
        log.info("[%s] running%s", name, " (forced)" if name in force else "")
        t0 = time.perf_counter()
        # A store written under another key is replaced; an unfinished one with this key resumes.
        replace = (previous is not None and previous != keys[name] or name in force) if overwrite is None else overwrite
        if rank == 0:
            wd.started(name)
        with in_stage(name):   # a library's line logged while it runs names the stage too
            stage.run(ctx.for_stage(stage.run.__module__), overwrite=replace)
        seconds = time.perf_counter() - t0
        if rank == 0:
            wd.record(name, keys[name], seconds)
        log.info("[%s] done in %.1f s", name, seconds)
        ran.append(name)
    return ran


def build(config, stages=STAGE_NAMES, force=(), overwrite: bool | None = None,
          command: str = "dmd2report build") -> list[str]:
    """Run a build of `config` (the CLI's `build` and stage commands call this)."""
    ctx = Context.create(config, command=command, write_cache=process_rank() == 0)
    return run_stages(ctx, stages, force=force, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# The reference (docs/configuration.md): the stage table, then every section with the stages reading it.

def read_by() -> dict[str, str]:
    """Each config section's "Read by" sentence, from the stages' declarations: the stages whose results depend on
    it (`reads`, a whole section or some of its keys: the stage table names them; `[model]`: the stages that load a
    generator)."""
    readers: dict[str, list[str]] = {}
    for stage in STAGES:
        for section in dict.fromkeys(dotted.partition(".")[0] for dotted in stage.reads):
            readers.setdefault(section, []).append(stage.name)
    sentences = {section: f"Read by {', '.join(names)}." for section, names in readers.items()}
    sentences["model"] = f"Read by the model stages: {', '.join(s.name for s in STAGES if s.uses_model)}."
    return sentences


def stage_table() -> str:
    """The stages in order as a Markdown table: what each does, reads and writes."""
    rows = ["| stage | what it does | its results | after | config it reads |",
            "|---|---|---|---|---|"]
    for s in STAGES:
        reads = ", ".join(f"`{r}`" for r in s.reads) + (", `model` (the generators)" if s.uses_model else "")
        writes = ", ".join(f"`{w.strip()}`" for w in s.writes.split(","))
        rows.append(f"| `{s.name}` | {s.help} | {writes} | {', '.join(s.after)} | {reads} |")
    return "\n".join(rows)


def reference_markdown() -> str:
    """docs/configuration.md: the stage table and the configuration reference."""
    stages = ["## Stages", "",
              "`dmd2report build` runs these in order; each is also a command of its own (`dmd2report fit`, ...). A "
              "stage reruns when a config key it reads, a stage before it, or its other inputs (the checkpoints, for "
              "the model stages; the templates, for render) changed.", "", stage_table(), ""]
    return config_module.markdown(read_by(), stages)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dmd2report.pipeline", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print the reference (docs/configuration.md)")
    g.add_argument("--toml", action="store_true", help="print the commented example (what `dmd2report init` writes)")
    args = p.parse_args(argv)
    sys.stdout.write(reference_markdown() if args.markdown else config_module.example_toml(read_by()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
