import json

import pytest

from dmd2report.classes import ClassIndex, dataset_classes, imagenet64_npz_label_map
from dmd2report.errors import UserError


def test_resolve_ids_synsets_and_names():
    index = ClassIndex.imagenet()
    assert len(index) == 1000
    assert index.resolve(["207", "n01443537", "goldfish", "Golden Retriever", 0]) == [207, 1, 0]
    assert index.name(207) == "golden_retriever" and index.synset(1) == "n01443537"


def test_unknown_class_lists_close_matches():
    index = ClassIndex.imagenet()
    with pytest.raises(UserError, match=r"unknown class 'goldfsh'.*close matches: goldfish"):
        index.resolve(["goldfsh"])
    with pytest.raises(UserError, match="out of range 0..999"):
        index.resolve(["1000"])
    with pytest.raises(UserError, match="ambiguous: 134 .*517"):
        index.resolve(["crane"])


def test_npz_label_order_maps_to_standard_order():
    m = imagenet64_npz_label_map()
    npz = json.loads(open(__import__("dmd2report").__path__[0] + "/data/imagenet64_npz_class_index.json").read())
    standard = ClassIndex.imagenet()
    # NPZ label 1 is entry "0" (kit_fox, n02119789), standard id 278.
    assert npz["0"][0] == "n02119789" and m[1] == standard.lookup("n02119789") == 278
    assert sorted(m[1:].tolist()) == list(range(1000))  # a permutation


def test_dataset_index_json_takes_precedence(tmp_path):
    (tmp_path / "class_index.json").write_text(json.dumps({"0": ["d00", "red disc"], "1": ["d01", "orange disc"]}))
    index, m = dataset_classes(tmp_path)
    assert len(index) == 2 and m.tolist() == [-1, 0, 1]
    assert index.resolve(["orange disc", "d00"]) == [1, 0]
    index, m = dataset_classes(tmp_path / "missing")
    assert len(index) == 1000 and m[1] == 278


def test_bad_index_json(tmp_path):
    p = tmp_path / "class_index.json"
    p.write_text('{"0": ["a", "b"], "2": ["c", "d"]}')
    with pytest.raises(UserError, match="class_index.json: class ids must be exactly 0..1"):
        ClassIndex.from_json(p)
    p.write_text("{nope")
    with pytest.raises(UserError, match="not a valid class index JSON"):
        ClassIndex.from_json(p)
