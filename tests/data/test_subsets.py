"""Nested stratified label subsets: oracles are hand-worked quota sequences, replayed sha256 orderings and the
floor/ceil proportional bounds, computed here independently of the library."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random

import numpy as np
import pytest
from PIL import Image

from usfm_monai.data.subsets import (
    make_nested_subsets,
    make_pretrain_datalist,
    selection_order,
    subset_filename,
)

RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0)


def _classification_datalist(path, counts=(23, 11, 6), seed=3):
    rng = random.Random(seed)
    items = [
        {"image": f"class{c}/img_{c}_{i}.png", "label": c, "class_name": f"class{c}"}
        for c, n in enumerate(counts) for i in range(n)
    ]
    rng.shuffle(items)
    data = {
        "training": items,
        "validation": [{"image": "val/a.png", "label": 0, "class_name": "class0"}],
        "test": [{"image": "test/b.png", "label": 1, "class_name": "class1"}, "test/c.png"],
        "metadata": {"tool": "hand-written", "class_names": ["class0", "class1", "class2"]},
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def _hash_order(images, seed):
    return sorted(images, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())


def test_selection_order_hand_worked():
    # counts (3, 1): priorities 3/1 > 1/1, 3/2 > 1/1, tie 3/3 = 1/1 -> lower index; then stratum 0 is at quota 3
    assert selection_order([3, 1]) == [0, 0, 0, 1]
    # counts (1, 1): alternate, ties to the lower index
    assert selection_order([1, 1]) == [0, 1]
    assert selection_order([0, 2]) == [1, 1]
    assert selection_order([]) == []


def test_selection_order_quota_and_monotone_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = [int(c) for c in rng.integers(0, 25, size=rng.integers(1, 6))]
        total = sum(counts)
        order = selection_order(counts)
        assert sorted(order) == sorted(s for s, n in enumerate(counts) for _ in range(n))
        taken = [0] * len(counts)
        for k, s in enumerate(order, 1):
            taken[s] += 1
            for j, n in enumerate(counts):
                assert math.floor(k * n / total) <= taken[j] <= math.ceil(k * n / total)


def test_largest_remainder_would_break_nesting_but_selection_order_does_not():
    # Alabama paradox of Hamilton quotas: counts (6, 6, 2), house 10 -> (4, 4, 2); house 11 -> (5, 5, 1):
    # stratum 2 would lose an item when the subset grows.
    def hamilton(counts, house):
        total = sum(counts)
        exact = [house * n / total for n in counts]
        quota = [math.floor(e) for e in exact]
        for s in sorted(range(len(counts)), key=lambda s: -(exact[s] - quota[s]))[: house - sum(quota)]:
            quota[s] += 1
        return quota

    assert hamilton([6, 6, 2], 10)[2] > hamilton([6, 6, 2], 11)[2]
    order = selection_order([6, 6, 2])
    assert order[:10].count(2) <= order[:11].count(2)


def test_nested_stratified_and_seeded(tmp_path):
    source = tmp_path / "cls.json"
    data = _classification_datalist(source)
    paths = make_nested_subsets(source, tmp_path / "subsets", ratios=RATIOS, seed=7, stratify="label")
    assert list(paths) == list(RATIOS)
    by_class = {c: [it["image"] for it in data["training"] if it["label"] == c] for c in range(3)}
    total = len(data["training"])
    previous: set[str] = set()
    for ratio in RATIOS:
        with open(paths[ratio]) as f:
            subset = json.load(f)
        assert os.path.basename(paths[ratio]) == f"cls_ratio{ratio:g}_seed7.json"
        chosen = [it["image"] for it in subset["training"]]
        k = math.floor(ratio * total + 0.5)
        assert len(chosen) == k
        assert previous <= set(chosen)  # nested
        previous = set(chosen)
        for c, images in by_class.items():
            taken = [p for p in chosen if p in images]
            # stratified: within one item of proportional
            assert math.floor(k * len(images) / total) <= len(taken) <= math.ceil(k * len(images) / total)
            # the selected items of a class are the first ones of the replayed sha256 order
            assert set(taken) == set(_hash_order(images, 7)[: len(taken)])
        meta = subset["metadata"]["subset"]
        assert meta["ratio"] == ratio and meta["seed"] == 7 and meta["stratify"] == "label"
        assert meta["source_datalist"] == str(source)
        assert {s: v["selected"] for s, v in meta["strata"].items()} == {
            str(c): sum(p in by_class[c] for p in chosen) for c in range(3)
        }
        assert subset["metadata"]["source_metadata"] == data["metadata"]
    # ratio 1.0 is the whole training set, in source order
    with open(paths[1.0]) as f:
        assert json.load(f)["training"] == data["training"]


def test_layout_kept_and_relative_paths_unchanged(tmp_path):
    source = tmp_path / "cls.json"
    data = _classification_datalist(source)
    path = make_nested_subsets(source, tmp_path / "out", ratios=[0.4], seed=0)[0.4]
    with open(path) as f:
        subset = json.load(f)
    assert list(subset) == list(data)  # same sections, same order
    assert subset["validation"] == data["validation"] and subset["test"] == data["test"]
    positions = [data["training"].index(item) for item in subset["training"]]
    assert positions == sorted(positions)  # items are verbatim copies, in source order


def test_same_seed_same_file_other_seed_other_subset(tmp_path):
    source = tmp_path / "cls.json"
    _classification_datalist(source)
    a = make_nested_subsets(source, tmp_path / "a", ratios=[0.2], seed=1)[0.2]
    b = make_nested_subsets(source, tmp_path / "b", ratios=[0.2], seed=1)[0.2]
    c = make_nested_subsets(source, tmp_path / "c", ratios=[0.2], seed=2)[0.2]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()  # what every method of a grid reads
    with open(a) as fa, open(c) as fc:
        assert json.load(fa)["training"] != json.load(fc)["training"]
    # an unchanged subset is not rewritten
    mtime = os.stat(a).st_mtime_ns
    os.utime(a, ns=(mtime - 10**9, mtime - 10**9))
    make_nested_subsets(source, tmp_path / "a", ratios=[0.2], seed=1)
    assert os.stat(a).st_mtime_ns == mtime - 10**9


def test_independent_of_source_order(tmp_path):
    source = tmp_path / "cls.json"
    data = _classification_datalist(source)
    shuffled = dict(data, training=list(reversed(data["training"])))
    other = tmp_path / "other" / "cls.json"
    other.parent.mkdir()
    other.write_text(json.dumps(shuffled))
    with open(make_nested_subsets(source, tmp_path / "x", ratios=[0.6])[0.6]) as f:
        first = {it["image"] for it in json.load(f)["training"]}
    with open(make_nested_subsets(other, tmp_path / "y", ratios=[0.6])[0.6]) as f:
        second = {it["image"] for it in json.load(f)["training"]}
    assert first == second


def test_foreground_stratification_reads_masks(tmp_path):
    (tmp_path / "masks").mkdir()
    items = []
    foreground = set()
    for i in range(10):
        mask = np.zeros((6, 5), dtype=np.uint8)
        if i % 3 == 0:  # 4 of 10 masks hold a lesion, a single pixel is enough
            mask[2, 3] = 255
            foreground.add(f"img{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"m{i}.png")
        items.append({"image": f"img{i}.png", "label": f"masks/m{i}.png"})
    (tmp_path / "seg.json").write_text(json.dumps({"training": items, "test": []}))
    path = make_nested_subsets(tmp_path / "seg.json", tmp_path / "out", ratios=[0.5], stratify="foreground")[0.5]
    with open(path) as f:
        subset = json.load(f)
    strata = subset["metadata"]["subset"]["strata"]
    assert strata == {"background": {"selected": 3, "available": 6}, "foreground": {"selected": 2, "available": 4}}
    assert sum(it["image"] in foreground for it in subset["training"]) == 2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"ratios": [0.0]}, ValueError),
        ({"ratios": [1.5]}, ValueError),
        ({"ratios": [0.2, 0.2]}, ValueError),
        ({"ratios": [0.01]}, ValueError),  # selects no item of 40
        ({"stratify": "organ"}, KeyError),
        ({"section": "nope"}, KeyError),
        ({"seed": 1.5}, TypeError),
    ],
    ids=["ratio0", "ratio>1", "repeated", "empty", "missing-key", "missing-section", "float-seed"],
)
def test_bad_input(tmp_path, kwargs, error):
    source = tmp_path / "cls.json"
    _classification_datalist(source)
    with pytest.raises(error):
        make_nested_subsets(source, tmp_path / "out", **kwargs)


def test_label_of_segmentation_datalist_is_rejected(tmp_path):
    (tmp_path / "seg.json").write_text(json.dumps({"training": [{"image": "a.png", "label": "m/a.png"}]}))
    with pytest.raises(TypeError, match="foreground"):
        make_nested_subsets(tmp_path / "seg.json", tmp_path / "out", ratios=[1.0], stratify="label")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_nested_subsets(tmp_path / "nope.json", tmp_path / "out")


def test_subset_filename():
    assert subset_filename("/x/busi_classification.json", 0.2, 0) == "busi_classification_ratio0.2_seed0.json"
    assert subset_filename("a.json", 1.0, 3) == "a_ratio1_seed3.json"


def test_pretrain_datalist_excludes_every_test_image(tmp_path):
    cls = {"training": [{"image": "a.png", "label": 0}, {"image": "b.png", "label": 1}, {"image": "c.png", "label": 0}],
           "validation": [{"image": "d.png", "label": 0}], "test": [{"image": "e.png", "label": 1}]}
    seg = {"training": [{"image": "a.png", "label": "m/a.png"}, {"image": "e.png", "label": "m/e.png"}],
           "validation": [{"image": "b.png", "label": "m/b.png"}], "test": [{"image": "c.png", "label": "m/c.png"}]}
    (tmp_path / "cls.json").write_text(json.dumps(cls))
    (tmp_path / "seg.json").write_text(json.dumps(seg))
    path = make_pretrain_datalist([str(tmp_path / "cls.json"), str(tmp_path / "seg.json")], tmp_path / "p.json", "breast")
    with open(path) as f:
        data = json.load(f)
    # c.png and e.png are test images of one of the two files; b.png is training in cls, so not validation
    assert data["training"] == [{"image": "a.png", "organ": "breast"}, {"image": "b.png", "organ": "breast"}]
    assert data["validation"] == [{"image": "d.png", "organ": "breast"}]
    assert data["metadata"]["num_excluded_images"] == 2
