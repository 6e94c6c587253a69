"""Damaged, inconsistent or hostile state gives one line and exit 2, never a traceback (issue 17, items 1 and 8).

A tiny work directory (tiny preset, 80 synthetic images, no trajectory) is built once per module;
each test works on a copy of it.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import TINY_CLASSES, npz_labels_for_standard_ids, synthetic_images
from dmd2report import files
from dmd2report.cli import cli
from dmd2report.errors import UserError
from dmd2report.models import build_preset
from dmd2report.workdir import WorkDir
from conftest import FullDisk

CONFIG = """
[run]
name = "damaged state"
workdir = "{w}/work"
site = "{w}/site"
device = "cpu"
[model]
preset = "tiny"
checkpoint = "{data}/tiny.safetensors"
[data]
source = "imagenet64-npz"
path = "{data}/npz"
max_samples = 0
workers = 1
[features]
batch_size = 40
chunk_size = 32
pca_fit_samples = 40
full_per_class = 2
recon_per_class = 1
[generate]
samples = 40
variants = ["class", "uniform"]
variant_samples = 10
[embedding]
pca_components = 6
n_neighbors = 5
fit_subsample = 200
trust_k = 4
[metrics]
bootstrap = 0
k_neighbours = 4
k_fidelity = 4
[atlas]
anchors_per_class = 1
atlas_grid = 3
[report]
thumb_size = 8
max_classes_pages = 2
[trajectory]
enabled = false
"""


def _error(r) -> str:
    """The run's one error line (exit 2, no traceback)."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.output
    return errors[0]


def _invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data / "npz").mkdir()
    ids = np.tile(np.arange(TINY_CLASSES), 8)
    np.random.default_rng(3).shuffle(ids)
    images = synthetic_images(len(ids), ids)
    np.savez(data / "npz" / "train_data_batch_1.npz", data=images.transpose(0, 3, 1, 2).reshape(len(ids), -1),
             labels=npz_labels_for_standard_ids(ids))
    torch.manual_seed(0)
    save_file(build_preset("tiny").state_dict(), data / "tiny.safetensors")
    w = tmp_path_factory.mktemp("base")
    (w / "report.toml").write_text(CONFIG.format(w=w, data=data))
    r = _invoke("build", "--config", w / "report.toml")
    assert r.exit_code == 0, r.output
    return w, data


@pytest.fixture
def work(base, tmp_path):
    """A copy of the built work directory and site, with its own config: (root, config path)."""
    w, data = base
    shutil.copytree(w / "work", tmp_path / "work", symlinks=True)
    shutil.copytree(w / "site", tmp_path / "site", symlinks=True)
    (tmp_path / "report.toml").write_text(CONFIG.format(w=tmp_path, data=data))
    return tmp_path, tmp_path / "report.toml"


def _tree(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _as_written(w, stage, path) -> None:
    """Record `path`, edited by hand to stand for what `stage` wrote in another run, as that run would have recorded
    it: the state the test simulates, not a damaged file (which the digests would refuse first)."""
    from dmd2report.integrity import file_entry, relative

    wd = WorkDir(w / "work")
    wd.update_outputs(stage, {relative(wd.root, path): file_entry(path)})


def _temporaries(root) -> list:
    return [p.name for p in root.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------------------------------------
# Caches are stale when damaged; results are one line naming the file and the stage to rerun.

def test_invalid_stages_json_is_treated_as_stale(work):
    w, cfg = work
    (w / "work" / "stages.json").write_text('{"extract": {"key": ')
    r = _invoke("build", "--config", cfg)
    assert r.exit_code == 0, r.output
    assert "stages.json: damaged" in r.output and "Traceback" not in r.output
    assert r.output.count("stages.json: damaged") == 1, r.output   # said once, not once per read
    assert set(json.loads((w / "work" / "stages.json").read_text())) >= {"extract", "fit", "measure", "render"}


def test_invalid_checksums_json_is_recomputed(work):
    w, cfg = work
    (w / "work" / "checksums.json").write_bytes(b"\x00\xff not json")
    r = _invoke("measure", "--config", cfg)
    assert r.exit_code == 0, r.output
    cache = json.loads((w / "work" / "checksums.json").read_text())
    assert [len(v) for v in cache.values()] == [64]


@pytest.mark.parametrize("file, command, stage", [("measure/metrics.json", "render", "measure"),
                                                  ("fit/manifest.json", "measure", "fit")])
def test_invalid_result_json_names_file_and_stage(work, file, command, stage):
    w, cfg = work
    (w / "work" / file).write_text("{ not json")
    line = _error(_invoke(command, "--config", cfg))
    assert f"{file}: damaged (" in line and f"rerun `dmd2report {stage} --overwrite`" in line, line


def test_truncated_features_and_metadata_said_damaged_and_recomputed_by_extract(work):
    w, cfg = work
    store = w / "work" / "stores" / "real"
    npy, parquet = store / "features" / "midblock" / "chunk_000001.npy", store / "meta" / "chunk_000001.parquet"
    before = _tree(store)
    npy.write_bytes(npy.read_bytes()[:100])
    line = _error(_invoke("measure", "--config", cfg))
    assert "chunk_000001.npy: damaged (" in line and "extract" in line, line
    parquet.write_bytes(parquet.read_bytes()[:50])
    line = _error(_invoke("measure", "--config", cfg))
    assert "chunk_000001.parquet: damaged (" in line and "extract" in line, line
    untouched = (store / "features" / "midblock" / "chunk_000000.npy").stat().st_mtime_ns
    r = _invoke("extract", "--config", cfg)  # the chunk markers' sizes tell chunk 1 is not done
    assert r.exit_code == 0, r.output
    assert _tree(store) == before  # recomputed byte for byte
    assert (store / "features" / "midblock" / "chunk_000000.npy").stat().st_mtime_ns == untouched
    assert _invoke("measure", "--config", cfg).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Results checked against the digests recorded when they were written (issue 31, item 2): an edited or damaged
# result is one line naming it and the commands that rewrite it, and the printed command repairs it.

def _refused(w, path, stage) -> str:
    return (f"error: {path}: damaged ({{}} since {stage} wrote it{{}}); rerun `dmd2report {stage} --overwrite` or "
            f"`dmd2report build --force {stage}`")


def test_edited_metrics_refused_by_build_render_compare_verify_until_repaired(work):
    w, cfg = work
    metrics = w / "work" / "measure" / "metrics.json"
    before, site = metrics.read_bytes(), _tree(w / "site")
    metrics.write_text(json.dumps(json.loads(before) | {"schema": json.loads(before)["schema"], "edited": 1}))
    expected = _refused(w, metrics, "measure").format("changed", ": digest mismatch")
    for command in ("build", "render"):
        assert _error(_invoke(command, "--config", cfg)) == expected, command
    assert _tree(w / "site") == site   # nothing published from it
    assert _error(_invoke("compare", metrics, metrics)) == expected
    r = _invoke("verify", "--workdir", w / "work")
    assert r.exit_code == 1 and r.output.strip().splitlines() == [expected], r.output
    r = _invoke("build", "--config", cfg, "--force", "measure")   # the command printed
    assert r.exit_code == 0, r.output
    repaired = json.loads(metrics.read_text())
    assert "edited" not in repaired and repaired["feature_spaces"] == json.loads(before)["feature_spaces"]
    assert _invoke("verify", "--config", cfg).exit_code == 0
    assert _invoke("compare", metrics, metrics).exit_code == 0


@pytest.mark.parametrize("file, stage, damage", [
    ("stores/real/features/midblock/chunk_000001.npy", "extract", "scramble"),
    ("fit/midblock.joblib", "fit", "scramble"),
    ("measure/arrays.npz", "measure", "truncate"),
    ("atlas/atlas.npz", "atlas", "truncate")])
def test_damaged_results_refused_in_one_line_and_repaired_by_the_printed_command(work, file, stage, damage):
    w, cfg = work
    (path,) = (w / "work").glob(file)
    data = path.read_bytes()
    path.write_bytes(data[:128] + data[128:][::-1] if damage == "scramble" else data[:len(data) // 2])
    expected = _refused(w, path, stage).format("changed", ": digest mismatch")
    for command in ("build", "render"):
        assert _error(_invoke(command, "--config", cfg)) == expected, command
    r = _invoke("verify", "--workdir", w / "work", "--site", w / "site")
    assert r.exit_code == 1 and r.output.strip().splitlines() == [expected], r.output
    r = _invoke(*expected.split("`")[3].split()[1:], "--config", cfg)   # dmd2report build --force <stage>
    assert r.exit_code == 0, r.output
    assert _invoke("verify", "--workdir", w / "work", "--site", w / "site").exit_code == 0
    assert _invoke("build", "--config", cfg).exit_code == 0


def test_truncated_arrays_without_digests_are_still_one_line(work):
    """A work directory of a version that recorded no digests: the reader's own check, not a BadZipFile traceback."""
    w, cfg = work
    state = json.loads((w / "work" / "stages.json").read_text())
    for record in state.values():
        record.pop("outputs", None)
    (w / "work" / "stages.json").write_text(json.dumps(state))
    for file, stage in (("measure/arrays.npz", "measure"), ("atlas/atlas.npz", "atlas")):
        path = w / "work" / file
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        line = _error(_invoke("render", "--config", cfg))
        assert line.startswith(f"error: {path}: damaged (") and f"`dmd2report build --force {stage}`" in line, line
        path.write_bytes(data)
    joblib = w / "work" / "fit" / "midblock.joblib"   # the map's own SHA-256 check names a command that works
    joblib.write_bytes(joblib.read_bytes()[::-1])
    line = _error(_invoke("measure", "--config", cfg))
    assert line.startswith(f"error: {joblib}: SHA-256 ") and line.endswith(
        "rerun `dmd2report fit --overwrite` or `dmd2report build --force fit`"), line
    assert _invoke("build", "--config", cfg, "--force", "fit").exit_code == 0
    assert _invoke("measure", "--config", cfg).exit_code == 0


def test_edited_site_found_by_verify_and_by_build(work):
    w, cfg = work
    assert _invoke("render", "--config", cfg).exit_code == 0   # recorded for this copy's site
    assert _invoke("verify", "--site", w / "site").exit_code == 0
    page = w / "site" / "index.html"
    page.write_text(page.read_text().replace("damaged state", "edited"))
    (w / "site" / "added.html").write_text("<p>")
    r = _invoke("verify", "--site", w / "site")
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"error: {w / 'site' / 'added.html'}: not written by render; rerun `dmd2report render`",
        f"error: {page}: changed since render wrote it: digest mismatch; rerun `dmd2report render`"], r.output
    line = _error(_invoke("build", "--config", cfg))
    assert line in (f"error: {page}: damaged (changed since render wrote it: digest mismatch; 1 more of its files too); "
                    f"rerun `dmd2report render --overwrite` or `dmd2report build --force render`",
                    f"error: {w / 'site' / 'added.html'}: damaged (not written by render; 1 more of its files too); "
                    f"rerun `dmd2report render --overwrite` or `dmd2report build --force render`"), line
    assert _invoke("render", "--config", cfg).exit_code == 0
    assert _invoke("verify", "--config", cfg).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Disk full: one line naming the file, the previous results intact, nothing temporary left.


@pytest.mark.parametrize("command, folder", [("fit", "work/fit"), ("measure", "work/measure"), ("render", "site")])
def test_disk_full_leaves_previous_results(work, monkeypatch, command, folder):
    """The disk fills while the stage writes its results (stages.json, written before, still fits)."""
    w, cfg = work
    before = _tree(w / folder)
    real_open = files._open_binary
    new_results = f"/.{folder.split('/')[-1]}.tmp-"  # the folder the stage writes its results into

    def open_binary(fd):
        f = real_open(fd)
        return FullDisk(f) if new_results in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(files, "_open_binary", open_binary)
    line = _error(_invoke(command, "--config", cfg))
    assert f"{w / folder}/" in line and ": disk full while writing (No space left on device)" in line, line
    assert _tree(w / folder) == before
    assert _temporaries(w) == []


def test_disk_full_anywhere_else_is_one_line(work, monkeypatch):
    """An OSError ENOSPC that no writer caught (here: the lock file) still ends in one line."""
    w, cfg = work
    import dmd2report.pipeline as pipeline

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(w / "work" / ".lock"))

    monkeypatch.setattr(pipeline, "_run", full)
    line = _error(_invoke("measure", "--config", cfg))
    assert line == f"error: {w / 'work' / '.lock'}: disk full while writing (No space left on device); free space and rerun to resume"


def test_disk_full_said_in_words_only_is_disk_full(work, monkeypatch):
    """pyarrow, numpy and torch raise OSErrors that say "No space left on device" with no errno: still "disk full",
    naming the file, exit 2; a folder the user may not write is one line too."""
    w, cfg = work
    import dmd2report.pipeline as pipeline

    target = w / "work" / "fit" / "points.parquet"
    e = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert str(files.write_error(target, e)) == \
        f"{target}: disk full while writing (No space left on device); free space and rerun to resume"

    def full(*a, **k):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pipeline, "_run", full)
    assert _error(_invoke("measure", "--config", cfg)) == \
        "error: the work directory: disk full while writing (No space left on device); free space and rerun to resume"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(w / "work" / "measure"))

    monkeypatch.setattr(pipeline, "_run", denied)
    assert _error(_invoke("measure", "--config", cfg)) == f"error: {w / 'work' / 'measure'}: Permission denied"


# ---------------------------------------------------------------------------------------------
# Ownership and leftovers.

def test_second_build_while_locked_names_the_holder(work):
    w, cfg = work
    with WorkDir(w / "work").locked("dmd2report build --config other.toml"):
        line = _error(_invoke("measure", "--config", cfg))
    assert f"{w / 'work'}: in use by `dmd2report build --config other.toml` (pid {os.getpid()} on " in line, line
    assert "wait for it to finish or use another --workdir" in line
    assert _invoke("measure", "--config", cfg).exit_code == 0  # released


def test_leftovers_of_killed_runs_are_removed(work):
    w, cfg = work
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = [w / f".site.tmp-{dead.pid}-x1y2", w / ".site.tmp-k1ll3d", w / f".site.old-{dead.pid}",
                  w / "work" / f".fit.tmp-{dead.pid}-abc", w / "work" / f".measure.old-{dead.pid}"]
        kept = [w / f".site.tmp-{alive.pid}-busy", w / ".other.tmp-1", w / "site.tmp-1"]
        for p in killed + kept:
            (p / "static").mkdir(parents=True)
            (p / "static" / "half.js").write_text("half")
        stray = w / "work" / "fit" / ".manifest.json.abc123.tmp"
        stray.write_text("{")
        r = _invoke("render", "--config", cfg)
        assert r.exit_code == 0, r.output
        assert [p.name for p in killed if p.exists()] == [] and not stray.exists()
        assert all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------------------------
# Results made from other inputs.

def test_fit_of_another_extraction_is_refused(work):
    w, cfg = work
    manifest = w / "work" / "stores" / "real" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(m | {"config_hash": "0123456789abcdef"}))  # as `extract --overwrite` leaves it
    _as_written(w, "extract", manifest)
    for command in ("measure", "atlas", "render"):
        line = _error(_invoke(command, "--config", cfg))
        assert line == (f"error: {w / 'work' / 'fit' / 'manifest.json'}: fitted on another extraction than the one in "
                        f"{w / 'work' / 'stores' / 'real'}; rerun `dmd2report fit`"), (command, line)


def test_measure_of_another_fit_is_refused(work):
    w, cfg = work
    headline = w / "work" / "measure" / "headline.json"
    headline.write_text(json.dumps(json.loads(headline.read_text()) | {"fit": "0123456789abcdef"}))
    _as_written(w, "measure", headline)
    line = _error(_invoke("render", "--config", cfg))
    assert f"{w / 'work' / 'measure'}: made on another fit than " in line and "rerun `dmd2report measure`" in line


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def test_text_and_random_bytes_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("epoch 101: loss 0.3\n" * 20)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)).replace(b"\x80", b"\x81"))
    for path in (text, noise, tmp_path / "empty.safetensors"):
        path.touch()
        line = _error(_invoke("inspect", path))
        assert line == f"error: {path}: not a checkpoint (neither safetensors nor a PyTorch file)", line


def test_non_finite_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    state = build_preset("tiny").state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
    state[name].view(-1)[3] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    torch.save(state, tmp_path / "nan.pth")
    for path in (tmp_path / "nan.safetensors", tmp_path / "nan.pth"):
        line = _error(_invoke("inspect", path))
        assert line == f"error: {path}: tensor {name!r} holds non-finite values (NaN or infinity); the checkpoint is damaged"


def test_checkpoint_with_non_finite_outputs_is_refused_at_load(work):
    w, cfg = work
    torch.manual_seed(0)
    net = build_preset("tiny")
    with torch.no_grad():  # finite weights whose outputs overflow
        for p in net.parameters():
            if p.ndim == 4:
                p.mul_(1e30)
    save_file(net.state_dict(), w / "overflow.safetensors")
    assert _invoke("inspect", w / "overflow.safetensors").exit_code == 0  # the file itself is fine
    before = _tree(w / "work" / "stores")
    line = _error(_invoke("extract", "--config", cfg, "--checkpoint", w / "overflow.safetensors", "--overwrite"))
    assert line.startswith(f"error: outputs of {w / 'overflow.safetensors'} are not finite"), line
    assert _tree(w / "work" / "stores") == before


# ---------------------------------------------------------------------------------------------
# Non-finite features.

def test_nan_in_features_stops_measure_naming_stage_set_layer_and_row(work):
    w, cfg = work
    path = w / "work" / "stores" / "gen-class" / "features" / "midblock" / "chunk_000001.npy"
    a = np.load(path)
    a[5, 2] = np.nan
    np.save(path, a)  # same size: the chunk still counts as done
    _as_written(w, "generate", path)  # as if generate had written it (a store of a version that let NaN through)
    line = _error(_invoke("measure", "--config", cfg))
    assert line.startswith("error: measure: non-finite values in gen-class features of layer midblock, first at row 37 ("), line


def test_store_writer_refuses_non_finite_features_and_outputs(tmp_path):
    import pandas as pd

    from dmd2report.store import StoreWriter

    w = StoreWriter(tmp_path / "gen-class", {"k": 1}, "generated")
    w.prepare(info={"layers": ["l"]})
    meta = pd.DataFrame({"sample_id": np.arange(4)})
    feats = np.zeros((4, 3), np.float16)
    feats[2, 1] = np.inf
    with pytest.raises(UserError, match=r"^generate: non-finite values in gen-class features of layer l, first at row 10$"):
        w.write_chunk(2, {"l": feats}, meta, np.zeros((4, 2, 2, 3), np.uint8), first_row=8)
    with pytest.raises(UserError, match=r"^generate: non-finite outputs of the model in the gen-class set, first at row 9;"):
        w.write_chunk(2, {"l": np.zeros((4, 3), np.float16)}, meta, np.zeros((4, 2, 2, 3), np.uint8), first_row=8,
                      outputs_finite=np.array([True, False, True, False]))
    assert sorted(p.name for p in (tmp_path / "gen-class").rglob("*") if p.is_file()) == ["manifest.json"]


class _DeviceCopy:
    """As chunks.HostCopy hands a CUDA chunk to the writer: the values and a flag reduced on the device."""

    def __init__(self, values, finite):
        self.values, self.finite = values, finite

    def numpy(self):
        return self.values

    def all_finite(self):
        return self.finite


def test_device_flag_spares_the_host_search():
    from dmd2report.store import first_non_finite

    a = np.zeros((6, 2), np.float16)
    a[4, 0] = np.nan
    assert first_non_finite(_DeviceCopy(a, False)) == 4
    assert first_non_finite(_DeviceCopy(a, True)) is None  # the device said finite: no scan on the host
    assert first_non_finite(_DeviceCopy(np.zeros((3, 2, 2), np.uint8), None)) is None
    assert first_non_finite(a) == 4
