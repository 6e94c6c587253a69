"""One output path: module loggers through the CLI's handler (-q / -v), progress only on rank 0, and
unreadable images counted on the console."""

import logging

import pytest
from click.testing import CliRunner

from dmd2report.cli import cli
from conftest import FOLDER_CONFIG
from dmd2report.console import progress, setup_logging, showing_progress





@pytest.fixture
def broken_tree(image_tree, tmp_path):
    """The fixture's class folders with one unreadable JPEG, and a config extracting them with the tiny model."""
    (image_tree / "n01443537" / "img_2.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = tmp_path / "report.toml"
    cfg.write_text(FOLDER_CONFIG.format(w=tmp_path / "work", data=image_tree))
    return cfg


def _extract(*args):
    r = CliRunner().invoke(cli, [*args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r.stderr.splitlines(), r.stdout


def test_default_quiet_and_verbose_output(broken_tree):
    cfg = str(broken_tree)
    err, out = _extract("extract", "--config", cfg)
    assert "[extract] running (forced)" in err and any(l.startswith("[extract] done in") for l in err), err
    skipped = [l for l in err if "unreadable" in l]
    assert len(skipped) == 1 and skipped[0].startswith(
        "warning: [extract] skipped 1 unreadable image (data.on_bad_image = skip), e.g. n01443537/img_2.jpg ("), err
    assert skipped[0].endswith("listed on the report's overview page")
    assert not any(l.startswith("debug:") for l in err) and out == ""

    # --quiet: warnings only, no [stage] lines, no bars.
    err, out = _extract("-q", "extract", "--config", cfg, "--overwrite")
    assert err and all(l.startswith("warning: ") for l in err), err
    assert "skipped 1 unreadable image" in err[0] and out == ""

    # --verbose: debugging lines too (the stage key), the [stage] lines unchanged.
    err, _ = _extract("-v", "extract", "--config", cfg)
    assert "[extract] running (forced)" in err
    assert any(l.startswith("debug: dmd2report.pipeline: [extract] key ") for l in err), err


def test_quiet_and_verbose_exclude_each_other():
    r = CliRunner().invoke(cli, ["-q", "-v", "layers", "--preset", "tiny"])
    assert r.exit_code == 2 and "exclude each other" in r.stderr


def test_only_rank_zero_shows_progress(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    setup_logging(logging.INFO)
    log = logging.getLogger("dmd2report.stages.extract")
    log.info("[extract] running")
    log.warning("something odd")
    assert not showing_progress() and progress(range(3), desc="x").disable
    assert capsys.readouterr().err == "rank 1: warning: something odd\n"
    monkeypatch.setenv("RANK", "0")
    setup_logging(logging.INFO)
    log.info("[extract] running")
    assert showing_progress() and capsys.readouterr().err == "[extract] running\n"
    setup_logging(logging.WARNING)  # --quiet: no bars
    assert not showing_progress() and progress(range(3), desc="x").disable


def test_library_warnings_are_one_line_each_once_and_harmless_ones_dropped(capsys):
    """torch's, PIL's, numba's, umap's and scikit-learn's warnings come out through the tool's log: one line each,
    naming the library, each distinct one once, never Python's two-line `file.py:N: Category: ...` form."""
    import warnings

    setup_logging(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        from dmd2report.console import capture_warnings

        capture_warnings()
        for _ in range(3):
            warnings.warn_explicit("Palette images with Transparency expressed in bytes\nshould be converted",
                                   UserWarning, "/venv/lib/python3.11/site-packages/PIL/Image.py", 1000)
        warnings.warn_explicit("The default of n_init will change", FutureWarning,
                               "/venv/lib/python3.11/site-packages/sklearn/cluster/_kmeans.py", 870)
        warnings.warn_explicit("n_jobs value 1 overridden to 1 by setting random_state. Use no seed for parallelism.",
                               UserWarning, "/venv/lib/python3.11/site-packages/umap/umap_.py", 1952)
    assert capsys.readouterr().err.splitlines() == [
        "warning: PIL: UserWarning: Palette images with Transparency expressed in bytes should be converted",
        "warning: sklearn: FutureWarning: The default of n_init will change"]
    setup_logging(logging.WARNING)   # --quiet keeps them
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        capture_warnings()
        warnings.warn_explicit("Detected pickle protocol 4 in the checkpoint, which was not the default", UserWarning,
                               "/venv/lib/python3.11/site-packages/torch/_weights_only_unpickler.py", 593)
        warnings.warn_explicit("an odd value", RuntimeWarning, "/venv/lib/python3.11/site-packages/numba/core.py", 5)
    assert capsys.readouterr().err == "warning: numba: RuntimeWarning: an odd value\n"
