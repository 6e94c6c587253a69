"""Templates and bundled files resolve through `resources` from a checkout and from an installed package."""

from __future__ import annotations

import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from dmd2report import resources
from dmd2report.config import tomllib   # tomli before Python 3.11

REPO = Path(__file__).resolve().parents[1]


def test_checkout_folders_first():
    assert resources.templates_dir() == REPO / "templates"
    assert (resources.templates_dir() / "base.html").is_file()
    assert resources.static_file("site.js").is_file()
    assert resources.bundled_file("demo/generator.safetensors") == REPO / "data" / "demo" / "generator.safetensors"
    assert resources.package_json("imagenet_class_index.json")["0"][0] == "n01440764"


def test_checkout_without_install(tmp_path):
    """With only PYTHONPATH pointing at the checkout (no install: `dmd2report.templates` does not exist),
    the report templates and the demo weights are found."""
    code = ("import importlib.util as u, dmd2report.resources as r, dmd2report.checkpoint as c;"
            "print(u.find_spec('dmd2report.templates') is None, r.templates_dir(), c.bundled_weights('demo'))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{REPO}:{':'.join(p for p in sys.path if 'site-packages' in p)}"})
    assert out.returncode == 0, out.stderr
    spec_missing, templates, weights = out.stdout.split()
    assert spec_missing == "True"  # really a checkout without the installed package mapping
    assert templates == str(REPO / "templates") and weights == str(REPO / "data" / "demo" / "generator.safetensors")


def test_installed_layout_falls_back_to_packages(monkeypatch, tmp_path):
    """Installed (no checkout beside the package), the files come from the packages the wheel ships."""
    monkeypatch.setattr(resources, "_CHECKOUT", tmp_path)
    assert (resources.templates_dir() / "base.html").is_file()
    assert resources.bundled_file("demo/generator.safetensors").is_file()


def test_the_wheel_carries_every_package_and_bundled_file():
    """`pip install .` installs what pyproject.toml lists: every package of the source tree (stages/ was once left
    out) and, through the package data globs, every bundled file resources names (both demo generators, the
    example comparison config, the demo classifier, the training record)."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dmd2report").rglob("__init__.py")}
    assert packages <= set(setup["packages"])
    bundled = [*resources.BUNDLED_CHECKPOINTS.values(), *resources.BUNDLED_ENCODERS.values(),
               *resources.EXAMPLE_CONFIGS.values(), "demo/train_config.json"]
    for relative in bundled:
        assert (REPO / "data" / relative).is_file(), relative
        assert any(fnmatch(relative, glob) for glob in setup["package-data"]["dmd2report.bundled"]), relative
