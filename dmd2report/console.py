"""The one output path: every module logs to `logging.getLogger(__name__)`, and long loops show a
tqdm bar through `progress` / `Progress`; nothing in the library prints.

`setup_logging` (the CLI calls it: `--quiet`, `--verbose`) puts one handler on the package's logger:

  default     INFO and above: `[stage] ...` lines as they read, warnings as `warning: ...`; bars shown
  --quiet     warnings and errors only; no bars
  --verbose   also DEBUG lines (`debug: <module>: ...`)

Every line a stage logs names it: the pipeline runs each stage `in_stage(name)`, and a line from a library
module that does not start with `[stage]` itself (the model loaded, a cached search reused) gets the prefix.
A bar is drawn only for work that lasts: it appears after `BAR_DELAY` seconds, so a sub-second loop never
draws one, it counts a known total in a unit a person reads (`2,400/2,400 images`, `960k samples/s`), and it
is cleared when the work ends (the stage's `done in` line stays); work of unknown length shows no bar.

Under torchrun only rank 0 shows progress (INFO lines and bars); the other ranks show their warnings
and errors, prefixed `rank N:`. Python warnings of the libraries (torch, PIL, numba, umap, scikit-learn) come out the
same way, once each, as one line `warning: <library>: <Category>: <message>` (`capture_warnings`); those known to be
harmless (`HARMLESS_WARNINGS`) are not shown. Log lines are written with `tqdm.write`, so they do not break a bar
that is on screen. Without `setup_logging` (the library used from Python) records go wherever the
application sends them and bars follow the `dmd2report` logger's effective level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings

PACKAGE = "dmd2report"
# Library warnings that say nothing a user can act on, as (category, message pattern): why each is harmless.
HARMLESS_WARNINGS = (
    # umap-learn, embedding.reproducible: a seeded UMAP runs on one thread, as the config documents.
    (UserWarning, r"n_jobs value .* overridden to 1 by setting random_state"),
    # torch.load(weights_only=True) of a legacy file saved with pickle protocol 4: read (or refused) all the same.
    (UserWarning, r"Detected pickle protocol \d+ in the checkpoint"),
    # torch's storage internals, reached by safetensors and numpy interop; nothing the user wrote.
    (UserWarning, r"TypedStorage is deprecated"),
)
BAR_DELAY = 2.0   # seconds before a bar appears: loops that end sooner draw nothing
# The count in the bar exact with thousands separators, the rate scaled (960k samples/s, not 960000.00row/s).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,}{unit} [{elapsed}<{remaining}, {rate_fmt}]"
_stage: list[str] = []   # the stage running now (pipeline: `in_stage`), which names the lines it logs


def process_rank() -> int:
    """This process's rank under torchrun (RANK with WORLD_SIZE > 1), else 0, without joining a
    process group: rank 0 alone writes records, runs the stages that are not sharded and shows progress."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


class _Formatter(logging.Formatter):
    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if _stage and not message.startswith("["):
            message = f"[{_stage[-1]}] {message}"
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        elif record.levelno < logging.INFO:
            message = f"debug: {record.name}: {message}"
        return self.prefix + message


class _Handler(logging.Handler):
    """Writes each record through tqdm (above any bar on screen) to `stream`, or to the `sys.stderr`
    of the moment when none is given (a test runner's capture, a redirected stderr)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = self.stream or sys.stderr
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:
            self.handleError(record)


def setup_logging(level: int = logging.INFO, stream=None) -> None:
    """One handler on the package's logger, writing to `stream` (stderr): INFO lines as they read,
    `warning:` / `error:` / `debug:` prefixes otherwise. Ranks other than 0 log warnings and errors only."""
    rank = process_rank()
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level if rank == 0 else max(level, logging.WARNING))
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = _Handler(stream)
    handler.setFormatter(_Formatter(f"rank {rank}: " if rank else ""))
    logger.addHandler(handler)
    capture_warnings()


def _library(filename: str) -> str:
    """The package a warning comes from (`torch`, `PIL`, `umap`), from the file that raised it."""
    parts = re.split(r"[\\/]", filename)
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return os.path.splitext(parts[-1])[0] or "python"


class _Warnings:
    """`warnings.showwarning` while the CLI runs: each distinct warning once, as one line of the package's log."""

    def __init__(self):
        self.seen: set[tuple] = set()
        self.log = logging.getLogger(f"{PACKAGE}.warnings")

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        key = (category, text)
        if key not in self.seen:
            self.seen.add(key)
            self.log.warning("%s: %s: %s", _library(str(filename)), category.__name__, text)


def capture_warnings() -> None:
    """Python warnings become warning lines of the package's log, each distinct one once; the harmless ones are
    dropped (HARMLESS_WARNINGS)."""
    for category, pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    if not isinstance(warnings.showwarning, _Warnings):
        warnings.showwarning = _Warnings()


def ensure_logging(level: int = logging.INFO) -> None:
    """`setup_logging(level)` unless the package's logger has a handler already (a script's `main`
    run directly rather than through the CLI, which sets it up from -q / -v)."""
    if not logging.getLogger(PACKAGE).handlers:
        setup_logging(level)


def showing_progress() -> bool:
    """Whether bars are shown: on rank 0, while the package logs INFO (not with --quiet)."""
    return process_rank() == 0 and logging.getLogger(PACKAGE).isEnabledFor(logging.INFO)


@contextlib.contextmanager
def in_stage(name: str):
    """Lines logged inside are the stage `name`'s: those that do not name a stage get `[name] `."""
    _stage.append(name)
    try:
        yield
    finally:
        _stage.pop()


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "samples", enabled: bool = True):
    """A tqdm bar over `iterable` (or a bar to `update` by hand, given `total`), the one way the
    package shows progress: counted in `unit` (samples, images, paths) out of `total` (default
    `len(iterable)`), drawn only once it has lasted `BAR_DELAY` seconds and cleared at its end; hidden with
    `enabled=False`, with --quiet, on ranks other than 0, when stderr is not a terminal, and when the total is
    unknown."""
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    on = enabled and total is not None and showing_progress()
    return tqdm(iterable, total=total, desc=desc, unit=f" {unit}", unit_scale=True, bar_format=BAR_FORMAT,
                delay=BAR_DELAY, leave=False, dynamic_ncols=True, smoothing=0.1, disable=None if on else True)


class Progress:
    """A bar counted in images for the chunk loops (extract, generate, trajectory): `update(n)`, `close()`."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "images"):
        self.bar = progress(total=total, desc=desc, unit=unit, enabled=enabled)

    def update(self, n: int):
        self.bar.update(n)

    def close(self):
        self.bar.close()
