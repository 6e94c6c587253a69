"""benchmarks/README.md's table of current figures is what benchmarks/summary.py writes from benchmarks/results/,
every kept result file is one of its rows, and the benchmarks cite benchmark names, not the sessions that ran them."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _summary():
    spec = importlib.util.spec_from_file_location("benchmark_summary", BENCHMARKS / "summary.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_what_summary_writes():
    summary = _summary()
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    assert readme.count(summary.BEGIN) == 1 and readme.count(summary.END) == 1
    assert summary.current(readme) == summary.table(), \
        "benchmarks/README.md's table is stale: python benchmarks/summary.py"
    assert summary.main(["--check"]) == 0


def test_every_result_file_is_one_row_and_every_row_has_its_section():
    summary = _summary()
    named = [f for r in summary.RESULTS_TABLE for f in r.files]
    assert len(named) == len(set(named)), "a result file is named by two rows"
    kept = sorted(p.name for p in (BENCHMARKS / "results").iterdir())
    assert kept == sorted(named), "results/ keeps the latest result per benchmark and device, each a row of summary.py"
    headings = re.findall(r"^#{2,3} (.+)$", (BENCHMARKS / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert len(headings) == len(set(headings))   # one anchor per section
    for r in summary.RESULTS_TABLE:
        assert r.benchmark in headings, f"benchmarks/README.md has no section {r.benchmark!r}"
        assert r.read(summary.RESULTS / r.files[0])   # every row has figures


def test_readers_write_the_figures_of_their_files():
    summary = _summary()
    rows = {r.files[0]: r.read(summary.RESULTS / r.files[0]) for r in summary.RESULTS_TABLE}
    assert rows["scale-h200-256k-build.json"].endswith(
        "stage time 92.1 s, one `dmd2report build` 102.0 s, peak RSS 4.98 GiB")
    assert "fit 42.1 s, measure 38.7 s, render 7.2 s; stage time 88.0 s, as processes 97.9 s" \
        in rows["scale-cpu2-50k.json"]
    assert rows["gpu-tests-h200.log"] == "13 passed"
    assert "extraction 6,695 img/s" in rows["throughput-h200.json"]
    assert "real among itself 2.21 s (2.65x c83c66e)" in rows["knn-kernels-cpu2.log"]


def test_no_session_numbers():
    """History is dated in benchmarks/HISTORY.md; code, docs and results name benchmarks."""
    paths = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "dmd2report").rglob("*.py"),
             *(p for p in BENCHMARKS.rglob("*") if p.is_file() and p.suffix != ".png")]
    cited = [f"{p.relative_to(ROOT)}: {m}" for p in paths
             for m in re.findall(r".{0,40}session ?\d+", p.read_text(encoding="utf-8"), re.IGNORECASE)]
    assert not cited, cited
