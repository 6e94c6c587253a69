"""The guide's code map (docs/how-it-works.md) is written from the modules' own docstrings: every module of the package is listed, with
the first sentence of its docstring, so a module added, removed or renamed makes this test fail until the map is
regenerated. Run alone to print the map: `python tests/test_code_map.py`.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- code map: python tests/test_code_map.py -->", "<!-- end of the code map -->"
# The top-level folders that are not the package, in the order the map lists them after it.
FOLDERS = {
    "templates/": "Jinja templates of the site's pages and its static CSS/JS (shipped as dmd2report.templates)",
    "data/": "the bundled demo generators, the demo classifier and the example comparison config (shipped as dmd2report.bundled)",
    "tests/": "the test suite; synthetic.py builds synthetic report data and work directories for tests and benchmarks",
    "benchmarks/": "performance measurements, each against a baseline in the same command (benchmarks/README.md)",
    "docs/": "the user guide (mkdocs.yml builds it), with the generated configuration reference",
}
WIDTH = 118


def summary(path: Path) -> str:
    """The first sentence of a module's docstring ("" when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", paragraph)[0] if paragraph else ""


def _entry(indent: str, name: str, text: str, column: int) -> list[str]:
    head = f"{indent}{name}".ljust(column)
    if not text:
        return [head.rstrip()]
    lines = textwrap.wrap(text, WIDTH - column) or [""]
    return [head + lines[0]] + [" " * column + line for line in lines[1:]]


def code_map() -> str:
    """The map: the package's modules folder by folder (a subpackage's line is its `__init__` docstring's), then the
    other top-level folders."""
    package = ROOT / "dmd2report"
    column = 24
    out = _entry("", "dmd2report/", summary(package / "__init__.py"), column)

    def folder(path: Path, indent: str) -> None:
        for p in sorted(path.iterdir(), key=lambda p: (p.is_dir(), p.name)):
            if p.is_dir() and (p / "__init__.py").is_file():
                out.extend(_entry(indent, p.name + "/", summary(p / "__init__.py"), column))
                folder(p, indent + "  ")
            elif p.suffix == ".py" and p.name != "__init__.py":
                out.extend(_entry(indent, p.name, summary(p), column))

    folder(package, "  ")
    for name, text in FOLDERS.items():
        out.extend(_entry("", name, text, column))
    return "\n".join(out)


GUIDE_PAGE = ROOT / "docs" / "how-it-works.md"


def test_guide_code_map_is_generated_from_the_docstrings():
    page = GUIDE_PAGE.read_text(encoding="utf-8")
    assert BEGIN in page and END in page, "docs/how-it-works.md lost its code map markers"
    committed = page.split(BEGIN, 1)[1].split(END, 1)[0].strip().removeprefix("```").removesuffix("```").strip()
    assert committed == code_map(), \
        "docs/how-it-works.md's code map is stale: replace it with `python tests/test_code_map.py`"


def test_every_module_has_a_summary_line():
    """A module without a docstring would be a blank line in the map: each says what it is."""
    missing = [p.relative_to(ROOT).as_posix() for p in (ROOT / "dmd2report").rglob("*.py")
               if p.name != "__init__.py" and not summary(p)]
    assert missing == []


def test_map_lists_a_new_module(tmp_path, monkeypatch):
    """The check is not blind: a module added to the package appears in the map."""
    (tmp_path / "dmd2report" / "sub").mkdir(parents=True)
    (tmp_path / "dmd2report" / "__init__.py").write_text('"""The package."""\n')
    (tmp_path / "dmd2report" / "sub" / "__init__.py").write_text('"""A subpackage."""\n')
    (tmp_path / "dmd2report" / "sub" / "thing.py").write_text('"""What a thing is.\n\nMore."""\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    text = code_map()
    assert "  sub/" in text and "    thing.py" in text and "What a thing is." in text and "More." not in text
    assert "A subpackage." in text and "The package." in text


if __name__ == "__main__":
    print(code_map())
