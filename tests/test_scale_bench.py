"""benchmarks/scale.py cannot rot: its synthetic work directory runs fit, measure and render without a model,
and a stage over its time limit is recorded as not finished."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dmd2report.config import load_config
from dmd2report.context import Context
from dmd2report.pipeline import run_stages, stage_keys
from synthetic import write_config, write_synthetic_work_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale  # noqa: E402  (benchmarks/scale.py, the benchmark under test)


def _tiny_work_dir(root: Path) -> Path:
    """300 real, 200 + 3 x 50 generated, 10 classes, 64 dims: the benchmark's writer at test size."""
    return write_synthetic_work_dir(
        root, n_real=300, n_gen_class=200, n_variant=50, classes=10,
        dims={"encoder_bottleneck": 64, "midblock": 64}, seed=3, preset="demo", chunk_size=128, device="cpu",
        extra_config="[embedding]\npca_components = 8\nn_neighbors = 10\n", metrics_config="bootstrap = 10")


@pytest.mark.slow
def test_synthetic_work_dir_runs_fit_measure_render(tmp_path):
    cfg = _tiny_work_dir(tmp_path)
    config = load_config(cfg)
    ctx = Context.create(config, command="test")
    wd = ctx.workdir
    # Stores as the stages write them: counts, chunks, widths, labels, the atlas's full activations.
    real = wd.store("real")
    assert len(real) == 300 and real.manifest["chunks"] == 3 and real.manifest["feature_dims"]["midblock"] == 64
    assert real.features("midblock").dtype == np.float16 and real.thumbnails().shape == (300, 32, 32, 3)
    ids, full = real.full_activations()
    assert len(ids) == 10 and full.shape[1:] == (64, 8, 8)
    assert {n: len(wd.store(f"gen-{n}")) for n in ("class", "uniform", "zero", "blend")} == \
        {"class": 200, "uniform": 50, "zero": 50, "blend": 50}
    assert wd.store("gen-uniform").label_vectors()[0].sum() == pytest.approx(1.0)
    assert wd.store("gen-zero").label_vectors().sum() == 0
    # extract and generate are recorded as done under this config's keys: only the later stages run.
    keys, recorded = stage_keys(ctx), wd.recorded()
    assert {s: recorded[s]["key"] for s in ("extract", "generate")} == {s: keys[s] for s in ("extract", "generate")}
    ran = run_stages(ctx, ("extract", "generate", "fit", "measure", "render"))
    assert ran == ["fit", "measure", "render"]
    doc = json.loads((wd.measure / "metrics.json").read_text())
    space = next(iter(v for k, v in doc["feature_spaces"].items() if k.startswith("midblock")))
    # Class structure survives: class-conditioned samples land among their own class.
    assert space["variants"]["class"]["overall"]["class_fidelity"]["value"] > 0.5
    assert (Path(config.run.site) / "index.html").is_file()


def test_stage_over_its_time_limit_is_not_finished(tmp_path):
    cfg = write_config(tmp_path / "config.toml", tmp_path, preset="demo", layers=["encoder_bottleneck", "midblock"],
                       n_gen=10, n_variant=5, seed=0, chunk_size=16, full_per_class=1, device="cpu")
    row = scale.run_stage("fit", cfg, timeout=0.3, workdir=tmp_path / "work")
    assert row["status"] == "did not finish" and row["timeout_s"] == 0.3
    assert scale.slope([(10, 1.0), (100, 10.0)]) == pytest.approx(1.0)


@pytest.mark.slow
def test_one_process_build_row_sums_the_stages_it_ran(tmp_path):
    # --one-process: the row a user's `dmd2report build` gives (one process); its stage time is the sum over
    # the stages that process ran, the forced ones and any not done yet (atlas, trajectory), none from before.
    cfg = _tiny_work_dir(tmp_path)
    work = tmp_path / "work"
    row = scale.run_stage("build", cfg, timeout=300, workdir=work, build=("fit", "measure", "render"))
    assert row["status"] == "ok", row.get("error")
    assert set(row["stages_s"]) == {"fit", "measure", "atlas", "trajectory", "render"}
    assert row["stage_s"] == pytest.approx(sum(row["stages_s"].values()), abs=0.01)
    assert row["stage_s"] < row["wall_s"]
    again = scale.run_stage("build", cfg, timeout=300, workdir=work, build=("render",))
    assert again["status"] == "ok" and set(again["stages_s"]) == {"render"}
