"""`dmd2report build`: the stages in order, each rerun only when its inputs changed.

The stages are declared once each, beside their `run`, as a `context.Stage` in their module under `stages/`
(`stages.STAGES` holds them in order). Everything else about a stage derives from its declaration here: its
cache key (`stage_keys`), the dispatch (`run_stages`), and the reference's stage table and "Read by" lines
(`reference_markdown`, docs/configuration.md); the CLI's commands derive from it in cli.py.

`<workdir>/stages.json` records the key each stage last finished with. A stage whose key is unchanged is skipped;
`--force STAGE` reruns it. Keys chain (a stage's key holds the keys of the stages it reads), so a change reruns
everything after it.

Beside its key a stage is recorded with what it read by content (`content`: the files its `content(ctx)` names, e.g.
the real images, and the digests of the results of every stage before it; integrity.py) and with its results'
digests (`outputs`). It reruns when either changed, and the log says why in one line (`parts`: the key's
components, compared with the recorded ones); when the files it reads changed, its previous results are removed
first (stores are keyed on settings, so they would otherwise be found complete). Before a stage runs or is found up to date, the results it reads
(every stage before it) and, when up to date, its own are checked against their digests: a damaged or edited
file is one line naming it and the command that rewrites it. (The sharded stages decide on every torchrun
process alike, from the key and their content; the results of the stages before them are checked, not keyed.)
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

from . import config as config_module
from . import integrity
from .chunks import barrier, dist_rank_world, process_rank
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


def _leaves(value, prefix: str) -> dict[str, object]:
    """A config value as {dotted key: value} down to its leaves (a list is one leaf)."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def _before(name: str) -> list[str]:
    """Every stage whose results `name` reads (its `after`, theirs, ...), in pipeline order."""
    seen, todo = set(), list(BY_NAME[name].after)
    while todo:
        a = todo.pop()
        if a not in seen:
            seen.add(a)
            todo += BY_NAME[a].after
    return [n for n in STAGE_NAMES if n in seen]


def _content(ctx: Context, stage: Stage, state: dict) -> tuple[dict[str, str], dict[str, str]]:
    """What a stage reads by content, {what: digest}: its files (`Stage.content`) and, for a stage rank 0 runs
    alone, the recorded results of every stage before it; and what changed in its files since last looked at. Files
    that cannot be looked at (None: a data folder not mounted) keep their recorded digest."""
    files = stage.content(ctx) if stage.content else {}
    recorded = state.get(stage.name, {}).get("content") or {}
    found = {what: recorded.get(what) if c is None else c.digest for what, c in files.items()}
    if not stage.sharded:
        found |= {f"results of {a}": state.get(a, {}).get("outputs_digest") for a in _before(stage.name)}
    return found, {what: c.change() for what, c in files.items() if c is not None}


def _parts(ctx: Context, stage: Stage, keys: dict) -> dict:
    """The components of a stage's key, each hashed: what the log names when the key changed."""
    values = _config_values(ctx.config.to_dict(), stage)
    return {"config": {k: short_hash(v) for dotted, value in values.items() for k, v in _leaves(value, dotted).items()},
            "after": {a: keys[a] for a in stage.after},
            "inputs": short_hash(stage.inputs(ctx) if stage.inputs else [])}


def _why(stage: Stage, record: dict, parts: dict, content: dict, changes: dict) -> str:
    """Why a stage reruns, in a few words: the config keys, stages, inputs or files that changed ("" for a first
    run: nothing to say)."""
    if not record:
        return ""
    if record.get("unfinished"):
        return "it did not finish last time"
    old, old_content = record.get("parts"), record.get("content") or {}
    if not isinstance(old, dict):
        return "its inputs changed"   # recorded before the components were
    reasons = [f"config {k} changed" for k in sorted(set(parts["config"]) | set(old.get("config", {})))
               if parts["config"].get(k) != old.get("config", {}).get(k)]
    reasons += [f"upstream {a} changed" for a in stage.after if parts["after"][a] != old.get("after", {}).get(a)]
    if parts["inputs"] != old.get("inputs"):
        reasons.append(f"{stage.inputs.__name__.strip('_').replace('_', ' ')} changed" if stage.inputs
                       else "its inputs changed")
    for what, digest in content.items():
        if what in old_content and old_content[what] != digest:
            reasons.append(changes.get(what) or f"{what} changed (content)")
    more = f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more if reasons else "its inputs changed"


def _check_results(ctx: Context, name: str, state: dict, repair: bool = False) -> None:
    """Check a stage's recorded results against their digests (integrity.check, by stat). A damaged one is a
    UserError naming it and the command that rewrites it; with `repair` (the stage is about to resume) damaged
    files are removed instead, so that it redoes them. Intact files whose time changed are recorded anew."""
    record, stage = state.get(name) or {}, BY_NAME[name]
    entries = record.get("outputs")
    if not isinstance(entries, dict) or stage.outputs is None:
        return   # recorded before results had digests
    root = ctx.workdir.root
    problems = integrity.check(root, entries, stage.outputs(ctx))
    touched = {rel: entry for rel, why, entry in problems if not why}
    bad = [(rel, why) for rel, why, _ in problems if why]
    if touched and process_rank() == 0:
        ctx.workdir.update_outputs(name, touched)
    if repair:
        bad = [(rel, why) for rel, why in bad if why != "extra"]   # removed, they are redone; others are kept
        for rel, why in bad:
            log.info("[%s] %s: %s; removed, to be redone", name, integrity.place(root, rel),
                     integrity.PROBLEMS[why].format(stage=name))
            integrity.place(root, rel).unlink(missing_ok=True)
    elif bad:
        raise integrity.problem(root, *bad[0], name, more=len(bad) - 1)


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
    state = wd.recorded()
    barrier(dist_rank_world()[1])   # torchrun: every process has read the records before rank 0 changes them
    ran, checked = [], set()
    for stage in (BY_NAME[name] for name in STAGE_NAMES if name in stages):
        name = stage.name
        if rank != 0 and not stage.sharded:
            continue  # torchrun: the other ranks help with the sharded stages only
        # What it reads first: the results of the stages before it that this run did not redo.
        for before in _before(name):
            if before not in checked and before not in ran:
                _check_results(ctx, before, state)
                checked.add(before)
        record = state.get(name, {})
        previous = record.get("key")
        content, changes = _content(ctx, stage, state)
        log.debug("[%s] key %s, recorded %s", name, keys[name], previous)
        changed = previous != keys[name] or record.get("content", content) != content
        if not changed and name not in force and not record.get("unfinished"):
            _check_results(ctx, name, state)
            checked.add(name)
            if rank == 0 and ("outputs" not in record or "content" not in record) and stage.outputs is not None:
                # Recorded by a version without digests: adopt what is there as this stage's results.
                wd.update_record(name, content=content, **_results(ctx, stage, record))
                state = wd.recorded()
            log.info("[%s] up to date", name)
            continue
        parts = _parts(ctx, stage, keys)
        why = " (forced)" if name in force else _why(stage, record, parts, content, changes)
        why = f": {why}" if why and not why.startswith(" ") else why
        log.info("[%s] running%s", name, why)
        t0 = time.perf_counter()
        # Results of another key or content are replaced; an unfinished run with this key and content resumes.
        replace = (previous is not None and changed or name in force) if overwrite is None else overwrite
        _check_results(ctx, name, state, repair=True)   # a damaged result is removed: a resumed stage redoes it
        if _read_other_files(stage, record, content):
            # Its stores are keyed on settings, not on the files' content: made from other files, they go.
            if rank == 0:
                for folder in stage.outputs(ctx) if stage.outputs else []:
                    shutil.rmtree(folder, ignore_errors=True)
            barrier(dist_rank_world()[1])
        if rank == 0:
            wd.started(name, keys[name], content)
        with in_stage(name):   # a library's line logged while it runs names the stage too
            stage.run(ctx.for_stage(stage.run.__module__), overwrite=replace)
        seconds = time.perf_counter() - t0
        if rank == 0:
            wd.record(name, keys[name], seconds, parts=parts, content=content, **_results(ctx, stage, record))
            state = wd.recorded()
        log.info("[%s] done in %.1f s", name, seconds)
        ran.append(name)
    return ran


def _read_other_files(stage: Stage, record: dict, content: dict) -> bool:
    """Whether the files a stage reads itself (not the results before it) changed since its results were made."""
    old = record.get("content")
    return isinstance(old, dict) and any(not what.startswith("results of ") and what in old and old[what] != digest
                                         for what, digest in content.items())


def _results(ctx: Context, stage: Stage, record: dict) -> dict:
    """A finished stage's record of its results: every file's digest (as files.py wrote it) and one digest of all."""
    if stage.outputs is None:
        return {}
    root, folders = ctx.workdir.root, stage.outputs(ctx)
    entries = integrity.outputs_of(root, folders, record.get("outputs"))
    return {"outputs": entries, "outputs_digest": integrity.outputs_digest(entries),
            "folders": [integrity.relative(root, f) for f in folders]}


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
              "stage reruns when a config key it reads, a stage before it, or its other inputs changed, by content: "
              "the checkpoints and encoder weights, for the model stages; the real images, for extract and "
              "trajectory; the reference statistics, for measure; the templates, for render; the results of the "
              "stages before it. The log says which.", "", stage_table(), ""]
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
