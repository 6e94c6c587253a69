import json

import numpy as np
import pandas as pd
import pytest

from dmd2report import files as files_mod
from dmd2report.errors import UserError
from dmd2report.store import BackgroundWriter, Store, StoreWriter, sparse_labels
from conftest import FullDisk

KEY = {"stage": "real", "features": {"reduce": "mean"}}
INFO = {"layers": ["midblock"], "num_classes": 4, "full_layer": "midblock"}


def _chunk(i, n=3):
    rng = np.random.default_rng(i)
    vectors = np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)]
    idx, w = sparse_labels(vectors)
    meta = pd.DataFrame({"sample_id": np.arange(i * n, i * n + n), "source": [f"f#{j}" for j in range(n)],
                         "class_id": vectors.argmax(1), "label_index": idx, "label_weight": w,
                         "has_recon": [True] + [False] * (n - 1), "has_full": [True] * 2 + [False] * (n - 2)})
    return dict(features={"midblock": rng.normal(size=(n, 5)).astype(np.float16)}, meta=meta,
                thumbs=rng.integers(0, 255, (n, 2, 2, 3), dtype=np.uint8),
                recon=rng.integers(0, 255, (1, 4, 4, 3), dtype=np.uint8),
                full={"midblock": rng.normal(size=(2, 3, 2, 2)).astype(np.float32)}), vectors


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sparse_labels_are_each_rows_non_zeros():
    rng = np.random.default_rng(0)
    vectors = np.where(rng.random((50, 30)) < 0.2, rng.random((50, 30)), 0).astype(np.float64)
    vectors[3] = 0  # no non-zero (the zero variant)
    vectors[7] = 1 / 30  # all (the uniform variant)
    vectors[9, 4] = -0.0  # a signed zero is a zero
    idx, w = sparse_labels(vectors)
    assert len(idx) == len(w) == 50
    for v, i, x in zip(vectors.astype(np.float32), idx, w):
        assert i.dtype == np.int32 and x.dtype == np.float32
        np.testing.assert_array_equal(i, np.flatnonzero(v))
        np.testing.assert_array_equal(x, v[np.flatnonzero(v)])
    assert sparse_labels(np.zeros((0, 30), np.float32)) == ([], [])


def test_write_finalize_and_read_back(tmp_path):
    w = StoreWriter(tmp_path / "s", KEY, "real")
    w.prepare(info=INFO)
    with pytest.raises(UserError, match="incomplete"):
        Store(tmp_path / "s")
    chunks = [_chunk(i) for i in range(2)]
    for i, (c, _) in enumerate(chunks):
        w.write_chunk(i, c["features"], c["meta"], c["thumbs"], c["recon"], c["full"],
                      skipped=[{"source": "bad.jpg", "error": "x"}] if i else [])
    manifest = w.finalize(2, INFO)
    assert manifest["count"] == 6 and manifest["skipped"] == [{"source": "bad.jpg", "error": "x"}]
    s = Store(tmp_path / "s")
    np.testing.assert_array_equal(s.features("midblock"), np.concatenate([c["features"]["midblock"] for c, _ in chunks]))
    assert s.features("midblock").dtype == np.float16
    assert s.metadata()["sample_id"].tolist() == list(range(6))
    np.testing.assert_array_equal(s.label_vectors(), np.concatenate([v for _, v in chunks]))
    ids, recon = s.reconstructions()
    assert ids.tolist() == [0, 3] and recon.shape == (2, 4, 4, 3)
    ids, full = s.full_activations()
    assert ids.tolist() == [0, 1, 3, 4] and full.shape == (4, 3, 2, 2)
    np.testing.assert_array_equal(full[2:], chunks[1][0]["full"]["midblock"])
    with pytest.raises(UserError, match="no features of layer 'enc'"):
        s.features("enc")


def test_other_config_refused_unless_overwrite(tmp_path):
    StoreWriter(tmp_path / "s", KEY, "real").prepare(info=INFO)
    other = StoreWriter(tmp_path / "s", {"stage": "real", "features": {"reduce": "pca:8"}}, "real")
    with pytest.raises(UserError, match=r"another configuration \(features.reduce was \"mean\", now \"pca:8\"\).*--overwrite"):
        other.prepare()
    other.prepare(overwrite=True)
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["config_hash"] == other.hash
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x").write_text("mine")
    with pytest.raises(UserError, match="is not a dmd2report store"):
        StoreWriter(tmp_path / "t", KEY, "real").prepare()


def test_disk_full_leaves_no_partial_chunk_and_rerun_completes(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", KEY, "real")
    w.prepare(info=INFO)
    c, _ = _chunk(0)
    opened = []
    real_open = files_mod._open_binary

    def failing_open(fd):
        opened.append(fd)
        return FullDisk(real_open(fd), 10**9 if len(opened) < 3 else 50)  # the third file fills the disk

    monkeypatch.setattr(files_mod, "_open_binary", failing_open)
    with pytest.raises(UserError, match=r"thumbs/chunk_000000.npy: disk full while writing .*rerun to resume"):
        w.write_chunk(0, c["features"], c["meta"], c["thumbs"], c["recon"], c["full"])
    left = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert [p.name for p in left] == ["manifest.json"]  # neither the two written files nor a temp file remain
    assert not w.done(0)
    monkeypatch.setattr(files_mod, "_open_binary", real_open)
    w.write_chunk(0, c["features"], c["meta"], c["thumbs"], c["recon"], c["full"])
    assert w.finalize(1, INFO)["count"] == 3


def test_background_writer_reraises_on_main_thread(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", KEY, "real")
    w.prepare(info=INFO)

    def boom(*a, **k):
        raise UserError("disk on fire")

    monkeypatch.setattr(w, "write_chunk", boom)
    with pytest.raises(UserError, match="disk on fire"):
        with BackgroundWriter(w) as bg:
            bg.submit(0)
