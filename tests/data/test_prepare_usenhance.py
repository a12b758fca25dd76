import json
import os

import numpy as np
import pytest
from fixtures.layouts import make_usenhance, save

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.prepare.usenhance import prepare_usenhance

SPLITS = ("training", "validation", "test")


@pytest.fixture()
def usenhance(tmp_path):
    return make_usenhance(str(tmp_path / "usenhance"))


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_pairs_organs_split_and_unpaired(usenhance, tmp_path):
    data = _read(prepare_usenhance(usenhance["dir"], str(tmp_path / "enh.json")))
    items = [it for s in SPLITS for it in data[s]]
    assert len(items) == len(usenhance["organs"]) * usenhance["n"]
    for it in items:
        assert it["image"].replace("/low_quality/", "/high_quality/") == it["target"]
        assert it["image"].split("/")[1] == it["organ"]
    assert len({it["image"] for it in items}) == len(items)
    # 7 pairs per organ with ratios 0.7/0.1/0.2 -> largest-remainder quotas 5/1/1 per organ
    for organ in usenhance["organs"]:
        assert [sum(it["organ"] == organ for it in data[s]) for s in SPLITS] == [5, 1, 1]
    skipped = {s["path"]: s["reason"] for s in data["metadata"]["skipped"]}
    low, high = usenhance["unpaired"]
    assert skipped[low] == "unpaired: no high_quality/0100.png"
    assert skipped[high] == "unpaired: no low_quality/0200.png"
    load_datalist(os.path.join(tmp_path, "enh.json"), "validation", base_dir=usenhance["dir"],
                  required_keys=("image", "target"))


def test_root_may_be_train_datasets_and_seed_changes_split(usenhance, tmp_path):
    a = _read(prepare_usenhance(os.path.join(usenhance["dir"], "train_datasets"), str(tmp_path / "a.json")))
    assert a["training"][0]["image"].split("/")[0] in usenhance["organs"]
    b = _read(prepare_usenhance(usenhance["dir"], str(tmp_path / "b.json"), seed=5))
    c = _read(prepare_usenhance(usenhance["dir"], str(tmp_path / "c.json"), seed=5))
    assert b["test"] == c["test"] and b["metadata"]["seed"] == 5
    a_test = {it["image"] for it in a["test"]}
    assert a_test != {it["image"].removeprefix("train_datasets/") for it in b["test"]}


def test_size_mismatch_and_missing_layout(usenhance, tmp_path):
    path = os.path.join(usenhance["dir"], "train_datasets", "liver", "high_quality", "0003.png")
    save(path, np.zeros((30, 32), np.uint8))
    with pytest.raises(ValueError, match=r"low_quality/0003.png is 32x32 .*high_quality/0003.png is 32x30"):
        prepare_usenhance(usenhance["dir"], str(tmp_path / "x.json"))
    with pytest.raises(FileNotFoundError, match="low_quality"):
        prepare_usenhance(str(tmp_path), str(tmp_path / "x.json"))
