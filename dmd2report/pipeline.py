"""`dmd2report build`: the stages in order, each rerun only when its inputs changed.

Stages and what each one's cache key covers (keys chain, so a change reruns everything after it):

  extract    real images -> features          model checksum, [data], [features], run.seed (the reference encoder's)
  generate   samples of every variant         extract key, [generate], every [[generators]] table's checksum
  fit        reductions + 2-D map, trust      generate key, [embedding], metrics.layer
  measure    metrics.json, neighbour arrays   fit key, [metrics]
  atlas      generation from map points       fit key, [atlas]
  trajectory few-step paths, real at each     fit key, [trajectory], metrics k's and bootstrap, report.thumb_size
             sigma, projected and measured
  render     the site                         measure + atlas + trajectory keys, [report], run.name/site,
                                              the files of report.template_dir

`<workdir>/stages.json` records the key each stage last finished with. A stage whose key is
unchanged is skipped; `--force STAGE` reruns it. The stages themselves live in `stages/`, one
module each with one entry point `run(ctx, overwrite)`; this module holds only their order, their
keys and the dispatch, and no stage imports it.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import time

from .chunks import process_rank
from .context import Context
from .errors import UserError
from .files import bytes_digest, short_hash
from .resources import report_code_paths, user_template_dir, user_template_files

log = logging.getLogger(__name__)

STAGES = ("extract", "generate", "fit", "measure", "atlas", "trajectory", "render")
SHARDED_STAGES = {"extract", "generate"}  # the stages that split work across torchrun processes


def stage_module(stage: str):
    """The module of a stage (`dmd2report.stages.<stage>`), imported on first use: a render needs no torch model code."""
    return importlib.import_module(f"dmd2report.stages.{stage}")


def renderer_fingerprint(template_dir: str = "") -> str:
    """Hash of the templates and the report code: a new dmd2report version re-renders old results.
    With `report.template_dir`, every file of that folder too (path and contents): editing a user
    template or its static files re-renders (the folder's path alone is in c["report"])."""
    code = ((root, f) for root in report_code_paths()
            for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css", ".py")))
    user = user_template_dir(template_dir)
    own = ((user, f) for f in user_template_files(user))
    return bytes_digest(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes()
                        for root, f in itertools.chain(code, own))


def stage_keys(ctx: Context) -> dict[str, str]:
    """The cache key of every stage from the config and the generator's identity (nothing is loaded)."""
    c = ctx.config.to_dict()
    g = ctx.generator
    keys = {}
    # batch_size changes no result; features.generated only what generate and trajectory store (the latter
    # follows it through the fit key).
    # features.encoder is the generator g is: its checksum and architecture stand for it.
    features = {k: v for k, v in c["features"].items() if k not in ("batch_size", "generated", "encoder")}
    # A preset's architecture is its name (as before [model.config] existed: their stores stay valid).
    architecture = g.identity().get("architecture", g.identity()["preset"])
    keys["extract"] = short_hash([g.checksum, architecture, c["data"], features, c["run"]["seed"],
                                  c["atlas"]["mask_layer"], c["report"]["thumb_size"], g.compute_identity()])
    # With [[generators]], every generator's name, architecture and checksum (a one-generator run's key is as before).
    compared = [[name, o.identity().get("architecture", o.identity()["preset"]), o.checksum, o.compute_identity()]
                for name, o in ctx.generators.items() if name]
    keys["generate"] = short_hash([keys["extract"], c["generate"], c["features"]["generated"]] + compared)
    keys["fit"] = short_hash([keys["generate"], c["embedding"], c["metrics"]["layer"]])
    keys["measure"] = short_hash([keys["fit"], c["metrics"]])
    keys["atlas"] = short_hash([keys["fit"], c["atlas"]])
    keys["trajectory"] = short_hash([keys["fit"], c["trajectory"], c["report"]["thumb_size"],
                                     {k: c["metrics"][k] for k in ("layer", "k_pr", "k_dc", "k_fidelity", "bootstrap")}])
    keys["render"] = short_hash([keys["measure"], keys["atlas"], keys["trajectory"], c["report"], c["run"]["name"],
                                 c["run"]["site"], renderer_fingerprint(c["report"]["template_dir"])])
    return keys


def run_stages(ctx: Context, stages=STAGES, force=(), overwrite: bool | None = None) -> list[str]:
    """Run `stages` in order, skipping those whose key is unchanged; returns the stages that ran.

    `overwrite=None` is `build`'s rule: it owns its work directory, so a store written under an
    older key is replaced and a forced stage starts afresh. A stage command passes the user's
    `--overwrite`: without it a store of another configuration is refused, and a store of the
    same configuration resumes (or is found complete).

    Rank 0 holds the work directory's lock for the whole run; under torchrun the other ranks
    join only the sharded stages.
    """
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise UserError(f"--force {unknown[0]}: unknown stage; stages: {', '.join(STAGES)}")
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
    for stage in stages:
        if rank != 0 and stage not in SHARDED_STAGES:
            continue  # torchrun: the other ranks help with extraction and generation only
        previous = recorded.get(stage, {}).get("key")
        log.debug("[%s] key %s, recorded %s", stage, keys[stage], previous)
        if previous == keys[stage] and stage not in force and not recorded[stage].get("unfinished"):
            log.info("[%s] up to date", stage)
            continue
        log.info("[%s] running%s", stage, " (forced)" if stage in force else "")
        t0 = time.perf_counter()
        # A store written under another key is replaced; an unfinished one with this key resumes.
        replace = (previous is not None and previous != keys[stage] or stage in force) if overwrite is None else overwrite
        if rank == 0:
            wd.started(stage)
        module = stage_module(stage)
        module.run(ctx.for_stage(module.__name__), overwrite=replace)
        seconds = time.perf_counter() - t0
        if rank == 0:
            wd.record(stage, keys[stage], seconds)
        log.info("[%s] done in %.1f s", stage, seconds)
        ran.append(stage)
    return ran


def build(config, stages=STAGES, force=(), overwrite: bool | None = None, command: str = "dmd2report build") -> list[str]:
    """Run a build of `config` (the CLI's `build` and stage commands call this)."""
    ctx = Context.create(config, command=command, write_cache=process_rank() == 0)
    return run_stages(ctx, stages, force=force, overwrite=overwrite)

