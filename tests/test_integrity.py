"""Content-keyed cache and results checked before use (issue 31, items 1 and 2): the fingerprint tables, the output
digests, and a class folder whose images are replaced under the same names rerunning extract with the reason."""

import logging
import os
import re
import shutil

import numpy as np
import pytest

from dmd2report import files, integrity
from dmd2report.errors import UserError


def _tree(root, n=6):
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        (root / f"c{i % 2}" / f"{i:04d}.png").write_bytes(bytes([i]) * (100 + i))
        names.append(f"c{i % 2}/{i:04d}.png")
    return names


@pytest.fixture
def hashed(monkeypatch):
    """The files read for their digest, in order (not those files.py hashes as it writes them)."""
    seen = []
    real = files.file_digest

    def counting(path, *a, **k):
        if not str(path).endswith(files.TEMP_SUFFIX):
            seen.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(files, "file_digest", counting)
    return seen


def test_content_hashes_only_what_changed_and_names_it(tmp_path, hashed):
    names = _tree(tmp_path / "data")
    table = tmp_path / "work" / "fingerprints"
    first = integrity.content_of(table, tmp_path / "data", names)
    assert len(hashed) == 6 and first.changes == ()          # a first look: every file read once
    hashed.clear()
    again = integrity.content_of(table, tmp_path / "data", names)
    assert again.digest == first.digest and hashed == [] and again.changes == ()   # by stat alone
    # Same name, same size, other bytes: read again, and said.
    (tmp_path / "data" / "c1" / "0003.png").write_bytes(b"\xff" * 103)
    changed = integrity.content_of(table, tmp_path / "data", names)
    assert hashed == ["0003.png"] and changed.digest != first.digest
    assert changed.change() == f"{tmp_path / 'data' / 'c1' / '0003.png'} changed (content)"
    # Touched, same bytes: read again, the same digest, nothing said.
    hashed.clear()
    st = os.stat(tmp_path / "data" / "c0" / "0000.png")
    os.utime(tmp_path / "data" / "c0" / "0000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = integrity.content_of(table, tmp_path / "data", names)
    assert hashed == ["0000.png"] and touched.digest == changed.digest and touched.changes == ()
    # A file removed from the set and one added.
    (tmp_path / "data" / "c0" / "0006.png").write_bytes(b"new")
    other = integrity.content_of(table, tmp_path / "data", names[1:] + ["c0/0006.png"])
    assert other.n_changes == 2 and other.digest != touched.digest
    assert other.change().endswith("0006.png added and 1 more file(s)")
    assert f"{tmp_path / 'data' / 'c0' / '0000.png'} removed" in other.changes


def test_content_table_damaged_or_missing_is_rebuilt(tmp_path, hashed):
    names = _tree(tmp_path / "data")
    table = tmp_path / "fingerprints"
    digest = integrity.content_of(table, tmp_path / "data", names).digest
    (path,) = table.glob("*.npz")
    path.write_bytes(path.read_bytes()[:40])
    hashed.clear()
    assert integrity.content_of(table, tmp_path / "data", names).digest == digest and len(hashed) == 6
    (tmp_path / "data" / "c0" / "0000.png").unlink()
    with pytest.raises(UserError, match=r"0000.png: cannot read \(No such file or directory\)$"):
        integrity.content_of(table, tmp_path / "data", names)


def test_results_checked_by_stat_then_digest(tmp_path, hashed):
    out = tmp_path / "work" / "measure"
    files.save_json(out / "metrics.json", {"precision": 0.5})
    files.save_bytes(out / "arrays.npz", b"x" * 1000)
    hashed.clear()
    entries = integrity.outputs_of(tmp_path / "work", [out])
    assert hashed == [] and set(entries) == {"measure/metrics.json", "measure/arrays.npz"}   # digests as written
    assert integrity.check(tmp_path / "work", entries, [out]) == []
    # Copied elsewhere with their times (cp -p, a CI cache): still intact, nothing read.
    shutil.copytree(tmp_path / "work", tmp_path / "copy")
    assert integrity.check(tmp_path / "copy", entries, [tmp_path / "copy" / "measure"]) == [] and hashed == []
    # Touched: read, intact, its new time to record.
    p = out / "metrics.json"
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (problem,) = integrity.check(tmp_path / "work", entries, [out])
    assert problem[:2] == ("measure/metrics.json", "") and problem[2][1] == st.st_mtime_ns + 10**9
    # Edited, truncated, added, removed.
    p.write_text('{"precision": 0.9}')
    (out / "arrays.npz").write_bytes(b"x" * 10)
    (out / "extra.json").write_text("{}")
    found = {rel: why for rel, why, _ in integrity.check(tmp_path / "work", entries, [out])}
    assert found == {"measure/metrics.json": "changed", "measure/arrays.npz": "changed", "measure/extra.json": "extra"}
    (out / "arrays.npz").unlink()
    assert ("measure/arrays.npz", "missing", None) in integrity.check(tmp_path / "work", entries, [out])
    line = str(integrity.problem(tmp_path / "work", "measure/metrics.json", "changed", "measure"))
    assert line == (f"{out / 'metrics.json'}: damaged (changed since measure wrote it: digest mismatch); rerun "
                    f"`dmd2report measure --overwrite` or `dmd2report build --force measure`")


def test_same_size_same_time_edit_found_by_a_full_check(tmp_path):
    out = tmp_path / "fit"
    files.save_bytes(out / "map.joblib", b"a" * 64)
    entries = integrity.outputs_of(tmp_path, [out])
    st = os.stat(out / "map.joblib")
    (out / "map.joblib").write_bytes(b"b" * 64)
    os.utime(out / "map.joblib", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert integrity.check(tmp_path, entries, [out]) == []        # the stat path trusts it (documented)
    assert [p[1] for p in integrity.check(tmp_path, entries, [out], full=True)] == ["changed"]


def test_folder_images_replaced_under_the_same_names_rerun_extract_and_say_why(make_config, image_tree, caplog):
    """The issue's first case: a class folder's images replaced by others under the same file names."""
    from dmd2report.context import Context
    from dmd2report.pipeline import run_stages

    config = make_config("folder", image_tree, **{"data.per_class": 1})   # one image a class: seconds
    assert run_stages(Context.create(config), ("extract",)) == ["extract"]
    assert run_stages(Context.create(config), ("extract",)) == []          # nothing changed: up to date
    real = Context.create(config).workdir.store("real")
    before = np.array(real.features(real.layers[0]))
    folders = sorted(p for p in image_tree.iterdir() if p.is_dir())
    for mine, theirs in zip(sorted(folders[1].iterdir()), sorted(folders[2].iterdir())):
        shutil.copyfile(theirs, mine)          # another class's images under this one's names
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_stages(Context.create(config), ("extract",)) == ["extract"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[extract] running")]
    assert len(said) == 1 and re.fullmatch(rf"\[extract\] running: {re.escape(str(folders[1]))}/img_\d\.(png|jpg) "
                                           rf"changed \(content\)", said[0]), said
    real = Context.create(config).workdir.store("real")
    assert not np.array_equal(np.array(real.features(real.layers[0])), before)   # extracted from the new images
    assert run_stages(Context.create(config), ("extract",)) == []


def test_a_stage_that_raised_is_not_recorded_as_done(make_config, npz_dir, monkeypatch):
    import dataclasses

    import dmd2report.pipeline as pipeline
    from dmd2report.context import Context

    config = make_config("imagenet64-npz", npz_dir, **{"data.per_class": 1})

    def empty(ctx, overwrite=False):
        raise UserError("no usable image")

    failing = pipeline.BY_NAME | {"extract": dataclasses.replace(pipeline.BY_NAME["extract"], run=empty)}
    monkeypatch.setattr(pipeline, "BY_NAME", failing)
    with pytest.raises(UserError):
        pipeline.run_stages(Context.create(config), ("extract",))
    wd = Context.create(config).workdir
    assert "extract" not in wd.recorded()
    monkeypatch.undo()
    assert pipeline.run_stages(Context.create(config), ("extract",)) == ["extract"]
    assert len(wd.recorded()["extract"]["outputs"]) >= 5
    # A rerun that dies half-way leaves the stage unfinished: the next build runs it again, and says why.
    monkeypatch.setattr(pipeline, "BY_NAME", failing)
    with pytest.raises(UserError):
        pipeline.run_stages(Context.create(config), ("extract",), force=("extract",))
    assert wd.recorded()["extract"]["unfinished"] is True


def test_verify_lines_for_a_work_directory_and_a_site(tmp_path):
    work, site = tmp_path / "work", tmp_path / "site"
    assert integrity.verify_workdir(work) == [f"{work / 'stages.json'}: missing (nothing built in {work}); "
                                              f"run `dmd2report build`"]
    files.save_json(work / "fit" / "manifest.json", {"layers": {}})
    files.save_json(site / "index.html", "<p>")
    entries = integrity.outputs_of(work, [work / "fit"])
    files.save_json(work / "stages.json", {"fit": {"key": "k", "outputs": entries, "folders": ["fit"]},
                                           "extract": {"key": "k"}, "measure": {"key": "k", "unfinished": True}})
    files.save_json(site / integrity.SITE_MANIFEST, integrity.site_manifest(site))
    assert integrity.verify_workdir(work) == [
        f"{work}: extract's results have no digests (built by an older dmd2report); rerun "
        f"`dmd2report build --force extract` to record them",
        f"{work}: measure did not finish; run `dmd2report build`"]
    assert integrity.verify_site(site) == []
    (site / "index.html").write_text("<p>edited")
    assert integrity.verify_site(site) == [f"{site / 'index.html'}: changed since render wrote it: digest mismatch; "
                                           f"rerun `dmd2report render`"]
    (site / integrity.SITE_MANIFEST).write_text("{")
    assert integrity.verify_site(site)[0].startswith(f"{site / integrity.SITE_MANIFEST}: damaged (")


def test_listing_reused_while_the_selection_and_the_folders_are_unchanged(tmp_path):
    data = tmp_path / "data"
    names = _tree(data)
    for d in (data, data / "c0", data / "c1"):
        os.utime(d, ns=(10**18, 10**18))   # listed long after the folders last changed
    calls = []

    def listing():
        calls.append(1)
        return list(names)

    table = tmp_path / "fingerprints"
    digest = integrity.content_of(table, data, listing, selection="per_class=5").digest
    assert integrity.content_of(table, data, listing, selection="per_class=5").digest == digest and len(calls) == 1
    integrity.content_of(table, data, listing, selection="per_class=6")       # other settings choose the files
    assert len(calls) == 2
    integrity.content_of(table, data, listing, selection="per_class=6")
    assert len(calls) == 2
    (data / "c0" / "0099.png").write_bytes(b"added")                         # a folder changed
    integrity.content_of(table, data, listing, selection="per_class=6")
    assert len(calls) == 3
