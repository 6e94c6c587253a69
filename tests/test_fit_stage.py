"""The fit stage's searches started ahead of their use (in a background thread once the UMAP is fitted, as on
a GPU) give the same fit as the searches run in place (the CPU's way): the same map points, trust scores and
real k-NN table."""

import numpy as np
import pandas as pd
import pytest

from dmd2report.config import load_config
from dmd2report.context import Context
from dmd2report.embed import Embedding
from dmd2report.pipeline import run_stages
from dmd2report.stages import fit as fit_stage
from synthetic import write_synthetic_work_dir


@pytest.mark.slow
@pytest.mark.parametrize("fit_subsample", [200, 1000])   # the rest of the real set projected; every real row fitted
def test_searches_ahead_give_the_same_fit(tmp_path, monkeypatch, fit_subsample):
    cfg = write_synthetic_work_dir(
        tmp_path, n_real=300, n_gen_class=120, n_variant=40, classes=10,
        dims={"encoder_bottleneck": 24, "midblock": 24}, seed=4, preset="demo", chunk_size=64, device="cpu",
        extra_config=f"[embedding]\npca_components = 6\nn_neighbors = 8\nfit_subsample = {fit_subsample}\n")
    ctx = Context.create(load_config(cfg), command="test")
    wd = ctx.workdir
    run_stages(ctx, ("extract", "generate", "fit"))
    in_place = pd.read_parquet(wd.fit / "points.parquet"), dict(np.load(wd.fit / "real_knn.npz"))

    started, projected = [], []
    original_launch, original_project = fit_stage._Searches.launch, Embedding.project

    def launch(self):   # once the UMAP is fitted (the map exists) and before any point is projected
        assert not started and not projected
        started.extend(self.pending())
        return original_launch(self)

    def project(self, *args, **kwargs):
        projected.append(len(args[0]))
        return original_project(self, *args, **kwargs)

    fitted = []
    original_fit_map = fit_stage.fit_map

    def fit_map(emb, *args, on_fitted, **kwargs):
        def on_umap_fitted():
            fitted.append(emb.umap.embedding_.shape)
            on_fitted()
        return original_fit_map(emb, *args, on_fitted=on_umap_fitted, **kwargs)
    monkeypatch.setattr(fit_stage, "_ahead", lambda device: True)
    monkeypatch.setattr(fit_stage._Searches, "launch", launch)
    monkeypatch.setattr(Embedding, "project", project)
    monkeypatch.setattr(fit_stage, "fit_map", fit_map)
    run_stages(ctx, ("fit",), force=("fit",))
    ahead = pd.read_parquet(wd.fit / "points.parquet"), dict(np.load(wd.fit / "real_knn.npz"))
    pd.testing.assert_frame_equal(in_place[0], ahead[0])
    assert in_place[1].keys() == ahead[1].keys()
    for key in in_place[1]:
        np.testing.assert_array_equal(in_place[1][key], ahead[1][key])
    sets = {"class", "uniform", "zero", "blend"}
    assert set(started) == (sets | {"real"} if fit_subsample < 300 else sets)
    assert fitted == [(min(fit_subsample, 300), 2)] and projected   # launched from fit_map, projections after


def test_a_failed_search_is_raised_where_it_is_collected():
    with fit_stage._Searches(ahead=True) as searches:
        searches.add("bad", np.zeros((5, 3), np.float32), None, 10, exclude_self=True, device="cpu")
        searches.launch()
        with pytest.raises(ValueError, match="k=10"):
            searches.result("bad")
