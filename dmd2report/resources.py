"""Files that ship with dmd2report, found the same way installed and from a source checkout.

In a checkout the templates live in the top-level `templates/` and the bundled demo files in `data/`;
an installed wheel carries them as the packages `dmd2report.templates` and `dmd2report.bundled`
(pyproject.toml maps the folders to those names). Class indexes are package data of `dmd2report`.
Every other module asks here instead of importing those packages, which exist only once installed.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import UserError

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent

# Bundled files by name, their paths under data/. A checkpoint is named in a config as
# `checkpoint = "bundled:NAME"`, and a preset's bundled weights are the checkpoint of the preset's name;
# an example config is written by `dmd2report init --example NAME`.
BUNDLED_PREFIX = "bundled:"
BUNDLED_CHECKPOINTS = {"demo": "demo/generator.safetensors",
                       "demo-step100": "demo/generator-step100.safetensors"}
EXAMPLE_CONFIGS = {"demo-compare": "demo/compare.toml"}
# Bundled encoder weights, named in a config's encoder as `weights = "bundled:NAME"`: a table of their own, so that
# `checkpoint = "bundled:..."` still accepts generators only.
BUNDLED_ENCODERS = {"demo-classifier": "demo/classifier.safetensors"}


def _folder(checkout_name: str, package: str) -> Path:
    """The checkout's folder when this module runs from one (checked first: an editable install maps
    the package to the same folder), else the installed package's."""
    folder = _CHECKOUT / checkout_name
    if folder.is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return folder
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        raise RuntimeError(f"dmd2report is installed without its {package!r} files; reinstall it") from None


def templates_dir() -> Path:
    """The default Jinja templates (base.html, pages, static/)."""
    return _folder("templates", "dmd2report.templates")


def static_file(name: str) -> Path:
    """A file of the templates' static/ folder (site.css, site.js)."""
    return templates_dir() / "static" / name


def bundled_file(relative: str) -> Path:
    """A bundled file by its path under data/ (e.g. "demo/generator.safetensors"); it may not exist."""
    return _folder("data", "dmd2report.bundled") / relative


def bundled_by_name(table: dict[str, str], name: str, what: str, prefix: str = "") -> Path:
    """The bundled file `name` names in `table` (BUNDLED_CHECKPOINTS, EXAMPLE_CONFIGS); a one-line UserError
    naming the value as given (`prefix` + name) when no `what` of that name ships, or when this install lacks it."""
    if name not in table:
        raise UserError(f"{prefix}{name}: no bundled {what} of that name "
                        f"(bundled: {', '.join(prefix + n for n in table)})")
    path = bundled_file(table[name])
    if not path.is_file():
        raise UserError(f"{prefix}{name}: the bundled file {path} is missing; reinstall dmd2report")
    return path


def package_json(name: str):
    """A JSON file of the package's own data (class indexes)."""
    return json.loads((_PACKAGE / "data" / name).read_text(encoding="utf-8"))


def report_code_paths() -> list[Path]:
    """What the rendered site depends on besides stored results: the templates and the report code."""
    return [templates_dir(), _PACKAGE / "report"]


def user_template_dir(path: str) -> Path | None:
    """`report.template_dir` as a folder, None when empty; a UserError of one line naming the path
    when it is missing or not a folder (checked before any stage runs: the render key reads it)."""
    if not path:
        return None
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{path}: report.template_dir: folder not found")
    if not folder.is_dir():
        raise UserError(f"{path}: report.template_dir: not a folder")
    return folder


def user_template_files(folder: Path | None) -> list[Path]:
    """Every file of a user template folder (templates and static/), in a fixed order: what its
    render depends on, so that editing one re-renders on `build`."""
    if folder is None:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
