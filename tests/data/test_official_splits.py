"""Official splits are kept: ``<root>/<split>/<class>`` folders and CSV/JSON listings; validation comes only from the
official training part."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from fixtures.layouts import make_busi, random_gray, save

from usfm_monai.data.prepare.busi import prepare_busi_classification
from usfm_monai.data.prepare.common import find_split_folders, read_split_file
from usfm_monai.data.prepare.folders import prepare_class_folders


def _sections(path):
    with open(path) as f:
        data = json.load(f)
    return data, {s: sorted(i["image"] for i in data[s]) for s in ("training", "validation", "test")}


def test_class_folders_keep_split_folders_and_draw_validation_from_train(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "busi_split"
    official = {"train": {"benign": 10, "malignant": 5}, "test": {"benign": 4, "malignant": 2}}
    expected = {"train": [], "test": []}
    for split, counts in official.items():
        for cls, n in counts.items():
            for i in range(n):
                save(str(root / split / cls / f"{cls} ({i}).png"), random_gray(rng))
                expected[split].append(f"{split}/{cls}/{cls} ({i}).png")
    out = prepare_class_folders(str(root), str(tmp_path / "cls.json"), val_fraction=0.2, test_fraction=0.2, seed=3)
    data, got = _sections(out)
    assert got["test"] == sorted(expected["test"])  # the official test part, untouched
    assert sorted(got["training"] + got["validation"]) == sorted(expected["train"])
    # validation = 0.2 / (1 - 0.2) = 1/4 of each class of the training part, by largest remainder
    classes = [i["class_name"] for i in data["validation"]]
    assert classes.count("benign") == 2 and classes.count("malignant") == 1  # 10/4 -> 2, 5/4 -> 1 (remainder .25 < .5)
    info = data["metadata"]["official_split"]
    assert info["official_sections"] == {"training": 15, "test": 6} and "seed 3" in info["validation"]
    assert data["metadata"]["class_names"] == ["benign", "malignant"]
    # another seed draws another validation, never from the test part
    _, got2 = _sections(prepare_class_folders(str(root), str(tmp_path / "cls2.json"), 0.2, 0.2, seed=4))
    assert got2["test"] == got["test"] and got2["validation"] != got["validation"]


def test_split_folders_mixed_with_class_folders_are_refused(tmp_path):
    save(str(tmp_path / "r" / "train" / "a" / "x.png"), np.zeros((4, 4), np.uint8))
    save(str(tmp_path / "r" / "benign" / "y.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mixes split folders"):
        find_split_folders(str(tmp_path / "r"))


def test_busi_split_file_csv_and_json(tmp_path):
    busi = make_busi(str(tmp_path))
    base = busi["dir"]
    names = sorted(n for c in ("benign", "malignant", "normal") for n in
                   (f"{c}/{f}" for f in os.listdir(os.path.join(base, c))) if "_mask" not in n and "(8)" not in n)
    listing = {n: ("test" if i % 4 == 0 else "train") for i, n in enumerate(names)}
    listing.pop(names[1])  # an unlisted image is skipped and reported
    csv_path = tmp_path / "split.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split"])
        w.writerows(listing.items())
    out = prepare_busi_classification(base, str(tmp_path / "busi.json"), split_file=str(csv_path))
    data, got = _sections(out)
    test = {n for n, s in listing.items() if s == "test"}
    conflicting = {p for g in data["metadata"]["conflicting_duplicates"] for p in (m["path"] for m in g)}
    assert set(got["test"]) == test - conflicting
    assert not set(got["training"] + got["validation"]) & test
    assert any(s["path"] == names[1] and "not listed" in s["reason"] for s in data["metadata"]["skipped"])
    # the JSON form of the same listing reads the same
    json_path = tmp_path / "split.json"
    json_path.write_text(json.dumps({"train": [n for n, s in listing.items() if s == "train"],
                                     "test": [{"image": n} for n in sorted(test)]}))
    assert read_split_file(str(json_path), base) == read_split_file(str(csv_path), base)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,split\nbenign/benign (1).png,holdout\n")
    with pytest.raises(ValueError, match="bad.csv.*holdout"):
        read_split_file(str(bad), base)
