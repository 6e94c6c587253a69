import copy
import json

import numpy as np
import pytest

from dmd2report.compare import compare_metrics
from dmd2report.errors import UserError
from dmd2report.metrics import measure, metrics_document

PROV = {"model_checksum": "sha256:abc", "data": "toy", "config_hash": "h1"}


@pytest.fixture(scope="module")
def doc():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    y = (rng.normal(size=(60, 4)) * 1.1).astype(np.float32)
    rc, cond = np.arange(80) % 2, np.arange(60) % 2
    return metrics_document(measure(x, rc, {"class": (y, cond)}, feature_space="mid", bootstrap=5, device="cpu"),
                            PROV)


def _write(tmp_path, name, d):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def _edit(d, metric, delta, scope=("overall",)):
    d = copy.deepcopy(d)
    node = d["feature_spaces"]["mid"]["variants"]["class"]
    for s in scope:
        node = node[s]
    node[metric]["value"] += delta
    return d


def test_identical_files_do_not_regress(tmp_path, doc):
    a = _write(tmp_path, "a.json", doc)
    lines, regressed = compare_metrics(a, a, ["precision"], 0.02)
    assert not regressed and lines == [lines[-1]] and lines[-1].startswith("no regression")


def test_direction_and_threshold(tmp_path, doc):
    a = _write(tmp_path, "a.json", doc)
    worse = _write(tmp_path, "worse.json", _edit(doc, "precision", -0.05))
    better = _write(tmp_path, "better.json", _edit(doc, "precision", +0.05))
    small = _write(tmp_path, "small.json", _edit(doc, "precision", -0.01))
    lines, regressed = compare_metrics(a, worse, ["precision"], 0.02)
    assert regressed and any(l.startswith("REGRESSED mid/class/overall/precision") for l in lines)
    assert compare_metrics(a, better, ["precision"], 0.02)[1] is False
    lines, regressed = compare_metrics(a, small, ["precision"], 0.02)
    assert not regressed and any("mid/class/overall/precision" in l for l in lines)   # reported, within threshold
    # a metric outside the selection is listed but never fails the comparison
    lines, regressed = compare_metrics(a, worse, ["recall"], 0.02)
    assert not regressed and any(l.strip().startswith("changed mid/class/overall/precision") for l in lines)
    # fd: lower is better
    fd_up = _write(tmp_path, "fd_up.json", _edit(doc, "fd", +1.0))
    fd_down = _write(tmp_path, "fd_down.json", _edit(doc, "fd", -1.0))
    assert compare_metrics(a, fd_up, ["fd"], 0.5)[1] is True
    assert compare_metrics(a, fd_down, ["fd"], 0.5)[1] is False


def test_globs_select_per_class_values(tmp_path, doc):
    a = _write(tmp_path, "a.json", doc)
    b = _write(tmp_path, "b.json", _edit(doc, "coverage", -0.2, scope=("per_class", "1")))
    lines, regressed = compare_metrics(a, b, ["coverage"], 0.02)   # bare name: overall only
    assert not regressed and any(l.strip().startswith("1 per-class values changed") for l in lines)
    assert compare_metrics(a, b, ["*/per_class/*/coverage"], 0.02)[1] is True


def test_missing_value_regresses(tmp_path, doc):
    d = copy.deepcopy(doc)
    del d["feature_spaces"]["mid"]["variants"]["class"]["overall"]["coverage"]
    lines, regressed = compare_metrics(_write(tmp_path, "a.json", doc), _write(tmp_path, "b.json", d),
                                       ["coverage"], 0.02)
    assert regressed and any("only in A" in l for l in lines)


def test_user_errors_name_the_file(tmp_path, doc):
    a = _write(tmp_path, "a.json", doc)
    with pytest.raises(UserError, match="nope.json: no such file"):
        compare_metrics(a, tmp_path / "nope.json", ["precision"], 0.02)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        compare_metrics(bad, a, ["precision"], 0.02)
    other = _write(tmp_path, "other.json", {"hello": 1})
    with pytest.raises(UserError, match="other.json: not a dmd2report metrics.json"):
        compare_metrics(a, other, None, 0.02)
    with pytest.raises(UserError, match="--metric precison"):
        compare_metrics(a, a, ["precison"], 0.02)
