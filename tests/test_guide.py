"""The user guide (docs/, mkdocs.yml) and the command line it documents: the guide builds strictly (a broken link or
a page missing from the nav fails), every `dmd2report ...` command and --flag written in the README and the guide
exists, every command's --help names it as typed and lists only the options it reads, the troubleshooting page
covers every module that raises a user error, and a demo build prints only the lines it is meant to.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmd2report.cli import cli

ROOT = Path(__file__).resolve().parents[1]
GUIDE = sorted((ROOT / "docs").glob("*.md"))


def test_the_guide_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs not installed (pip install -e '.[test]' or '.[docs]')")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "guide")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pages = {p.relative_to(tmp_path / "guide").as_posix() for p in (tmp_path / "guide").rglob("*.html")}
    assert {f"{p.stem}.html" for p in GUIDE} <= pages   # every page of docs/ is in the site (the nav lists it)
    assert "configuration.html" in pages and "troubleshooting.html" in pages


def test_a_broken_link_fails_the_build(tmp_path):
    """The check is not blind: the same config with a page linking to a missing one fails strict."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs not installed (pip install -e '.[test]' or '.[docs]')")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](no-such-page.md)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nnav:\n  - Home: index.md\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "no-such-page.md" in r.stderr


def documented_commands(text: str) -> list[str]:
    """Every `dmd2report ...` command line of a Markdown text: in its ```bash / ```console / ```yaml blocks (a `$ `
    prompt or `run: ` dropped, `\\` continuations joined, `&&` chains split) and in its inline code spans."""
    found = []
    for block in re.findall(r"```(?:bash|console|sh|yaml)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\$ |run: )?", "", line)
            found += [c.strip() for c in line.split("&&") if c.strip().startswith("dmd2report ")]
    for span in re.findall(r"`(dmd2report [^`]+)`", text):
        found += [c.strip() for c in span.split("&&") if c.strip().startswith("dmd2report ")]
    return found


def _help(words: list[str]) -> str:
    r = CliRunner().invoke(cli, [*words, "--help"], prog_name="dmd2report")   # as the console script names it
    assert r.exit_code == 0, (words, r.output)
    return r.output


@pytest.mark.parametrize("doc", [ROOT / "README.md", *GUIDE], ids=lambda p: p.name)
def test_every_documented_command_and_flag_exists(doc):
    commands = documented_commands(doc.read_text(encoding="utf-8"))
    names = set(cli.list_commands(None))
    for command in commands:
        words = shlex.split(command.split(" # ")[0].replace("...", ""), comments=True)[1:]
        while words and words[0].startswith("-"):   # the group's own flags (-q, --help, --version)
            assert re.search(rf"(^|[\s,]){re.escape(words[0])}\b", _help([]), re.M), f"{doc.name}: `{command}`"
            words = words[1:]
        if not words or re.fullmatch(r"[A-Z_]+", words[0]):   # a placeholder: COMMAND
            continue
        assert words[0] in names, f"{doc.name}: `{command}`: no command {words[0]!r} (commands: {sorted(names)})"
        # The words before the first flag name the command (and an argparse subcommand: `demo-data npz`).
        head = [words[0]] + [w for w in words[1:next((i for i, w in enumerate(words) if w.startswith("-")),
                                                     len(words))] if re.fullmatch(r"[a-z]+", w)][:1]
        if head[1:] and head[1] not in _help(head[:1]):
            head = head[:1]
        text = _help(head)
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", text, re.M), \
                f"{doc.name}: `{command}`: {' '.join(head)} has no option {flag}"


def test_the_command_check_catches_a_wrong_flag():
    """The check is not blind: a flag no command has and a command that does not exist are found."""
    with pytest.raises(AssertionError, match="has no option --colour"):
        _check_text("```bash\ndmd2report render --colour red\n```\n")
    with pytest.raises(AssertionError, match="no command 'paint'"):
        _check_text("Run `dmd2report paint` first.\n")


def _check_text(text: str):
    class Doc:
        name = "example.md"

        @staticmethod
        def read_text(encoding=None):
            return text
    test_every_documented_command_and_flag_exists(Doc)


def test_every_command_help_names_it_as_typed():
    for name in cli.list_commands(None):
        usage = _help([name]).lstrip().splitlines()[0]
        assert re.match(rf"(?i)usage: dmd2report {re.escape(name)}\b", usage), usage


def test_stage_commands_list_only_the_options_they_read():
    render = _help(["render"])
    for flag in ("--checkpoint", "--preset", "--data", "--source", "--layers", "--device", "--samples", "--fit-on"):
        assert flag not in render, flag
    for flag in ("--config", "--workdir", "--site", "--name", "--template-dir", "--single-file", "--overwrite"):
        assert flag in render, flag
    fit = _help(["fit"])
    assert "--fit-on" in fit and "--device" in fit and "--checkpoint" not in fit and "--template-dir" not in fit
    extract = _help(["extract"])
    assert "--checkpoint" in extract and "--data" in extract and "--template-dir" not in extract
    build = _help(["build"])
    assert all(flag in build for flag in ("--checkpoint", "--data", "--fit-on", "--template-dir", "--force"))


def test_troubleshooting_covers_every_module_that_raises_a_user_error():
    """docs/troubleshooting.md groups the one-line errors; each group names the modules whose errors it explains
    (`<!-- errors of: config.py, ... -->`), so a module that starts raising UserError needs its entry there."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    covered = {m.strip() for group in re.findall(r"<!-- errors of: (.*?) -->", text) for m in group.split(",")}
    raising = {p.relative_to(ROOT / "dmd2report").as_posix() for p in (ROOT / "dmd2report").rglob("*.py")
               if "UserError(" in p.read_text(encoding="utf-8") and p.name != "errors.py"}
    assert raising - covered == set(), f"docs/troubleshooting.md explains no error of {sorted(raising - covered)}"
    assert covered - raising == set(), f"docs/troubleshooting.md names modules that raise none: {covered - raising}"


def test_the_readme_commands_leave_nothing_untracked():
    """What the README's commands write (the demo's runs/ and site/, the comparison's compare.toml and
    site-compare/, the guide's docs-site/) is ignored by git."""
    paths = ["runs/demo/stages.json", "site/index.html", "compare.toml", "site-compare/index.html",
             "docs-site/index.html", "runs/demo-compare/stages.json"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], capture_output=True, text=True, cwd=ROOT)
    if r.returncode == 128:
        pytest.skip(f"not a git checkout: {r.stderr.strip()}")
    assert sorted(r.stdout.split()) == sorted(paths)


# The lines a demo build writes to stderr, each a stage's: kinds (a regular expression after `[stage] `) and how many
# of each. Nothing else (no unprefixed line, no warning).
DEMO_BUILD_LINES = {
    r"running": 7,
    r"generating the demo data: \d+ images per class, 12 classes, into .+demo_data": 1,
    r"model: demo from .+generator\.safetensors on cpu": 1,
    r"done in \d+\.\d s": 7,
    r"(encoder_bottleneck|midblock): standardise \+ PCA \d+( \+ UMAP)?": 2,
    r"(\S+): \d+ real, \d+ class, \d+ uniform, \d+ zero, \d+ blend": 3,
    r"midblock: real radii and neighbour lists from the fit stage's search \(k = \d+\)": 2,
    r"\d+ anchor generations, \d+ grid generations by masking midblock": 1,
    r"\d+ samples x \d+ steps \(sigmas [\d., ]+\)": 1,
    r"\d+ real references x \d+ sigmas": 1,
    r"wrote \d+ pages and \d+ other files to .+": 1,
}


def test_a_demo_build_prints_only_its_stage_lines(demo_build):
    from dmd2report.pipeline import STAGE_NAMES

    _, site, err, out = demo_build
    stage = re.compile(rf"^\[({'|'.join(STAGE_NAMES)})\] (.*)$")
    unprefixed = [line for line in err if not stage.match(line)]
    assert unprefixed == [], unprefixed
    counts = dict.fromkeys(DEMO_BUILD_LINES, 0)
    for line in err:
        text = stage.match(line).group(2)
        kinds = [k for k in DEMO_BUILD_LINES if re.fullmatch(k, text)]
        assert len(kinds) == 1, f"a line of no intended kind: {line!r}"
        counts[kinds[0]] += 1
    assert counts == DEMO_BUILD_LINES, counts
    assert out == f"report: {site / 'index.html'}\n"
    # The page count is the site's HTML pages; its other files are counted apart.
    wrote = next(line for line in err if " wrote " in line)
    pages, others = map(int, re.search(r"wrote (\d+) pages and (\d+) other files", wrote).groups())
    files = [p for p in site.rglob("*") if p.is_file() and not p.name.startswith(".dmd2report-")]   # less bookkeeping
    assert pages == sum(p.suffix == ".html" for p in files) and pages >= 8 and others == len(files) - pages


def test_bars_wait_two_seconds_and_count_in_a_readable_unit(monkeypatch):
    import io

    from dmd2report import console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(console, "showing_progress", lambda: True)
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with console.progress(total=983040, desc="reduce real") as bar:   # ends within BAR_DELAY: never drawn
        bar.update(983040)
    assert screen.getvalue() == ""
    for _ in console.progress(iter(range(3)), desc="unknown length"):   # no total: no bar, however long
        pass
    assert screen.getvalue() == ""
    monkeypatch.setattr(console, "BAR_DELAY", 0)
    bar = console.Progress(1280000, "extract real")
    bar.update(640000)
    bar.bar.refresh()   # as the next update after tqdm's minimum interval would
    bar.close()
    drawn = [part for part in screen.getvalue().split("\r") if "extract real" in part][-1]
    assert screen.getvalue().split("\r")[-1].strip() == ""   # cleared at its end: the stage's lines stay
    assert "extract real:  50%" in drawn and "640,000/1,280,000 images" in drawn, drawn
    assert re.search(r"\d+(\.\d+)?[kMG]? images/s|\? images/s", drawn) and "row" not in drawn, drawn
