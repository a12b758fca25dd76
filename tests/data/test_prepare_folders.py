import json
import os

import numpy as np
import pytest
from fixtures.layouts import make_class_folders, make_image_mask_folders, save
from PIL import Image

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.prepare.folders import prepare_class_folders, prepare_image_mask_folders

SPLITS = ("training", "validation", "test")


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_image_mask_folders(tmp_path):
    info = make_image_mask_folders(str(tmp_path / "ds"))
    out = prepare_image_mask_folders(
        os.path.join(info["dir"], "images"), os.path.join(info["dir"], "masks"), str(tmp_path / "lists" / "seg.json"),
        mask_suffix="_seg", organ="neck",
    )
    data = _read(out)
    items = [it for s in SPLITS for it in data[s]]
    assert len(items) == len(info["masks"])
    assert data["metadata"]["skipped"][0]["path"] == info["orphan"]
    for it in load_datalist(out, "training", base_dir=info["dir"], required_keys=("image", "label")):
        rel = os.path.splitext(os.path.relpath(it["image"], os.path.join(info["dir"], "images")))[0]
        written = np.asarray(Image.open(it["label"]))
        np.testing.assert_array_equal(written == 255, info["masks"][rel])  # label value 3 binarized
        assert set(np.unique(written)) <= {0, 255} and it["organ"] == "neck"
    assert data["metadata"]["mask_dir"] == "../lists/seg_masks"
    # stratified by empty / non-empty mask: 4 empty (i % 3 == 0), 6 with foreground
    empty = {rel for rel, m in info["masks"].items() if not m.any()}
    for s, ratio in zip(SPLITS, (0.7, 0.1, 0.2)):
        n_empty = sum(os.path.splitext(it["image"])[0].removeprefix("images/") in empty for it in data[s])
        assert abs(n_empty - len(empty) * ratio) <= 1


def test_image_mask_size_mismatch(tmp_path):
    info = make_image_mask_folders(str(tmp_path / "ds"), n=3)
    save(os.path.join(info["dir"], "masks", "case1_seg.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"case1_seg.png has size 8x8 .*case1.png has size 32x32"):
        prepare_image_mask_folders(os.path.join(info["dir"], "images"), os.path.join(info["dir"], "masks"),
                                   str(tmp_path / "x.json"), mask_suffix="_seg")


def test_class_folders(tmp_path):
    info = make_class_folders(str(tmp_path / "cls"))
    data = _read(prepare_class_folders(info["dir"], str(tmp_path / "cls.json")))
    items = [it for s in SPLITS for it in data[s]]
    assert data["metadata"]["class_names"] == ["a", "b"]
    assert len(items) == 12 + 8 - 2
    assert not {it["image"] for it in items} & set(info["conflicting"])
    assert sorted(m["path"] for m in data["metadata"]["conflicting_duplicates"][0]) == list(info["conflicting"])
    assert data["metadata"]["skipped"][0]["path"] == info["corrupt"]
    for it in items:
        assert it["label"] == ["a", "b"].index(it["image"].split("/")[0]) and it["class_name"] in "ab"
    for class_name, n in (("a", 11), ("b", 7)):
        for s, ratio in zip(SPLITS, (0.7, 0.1, 0.2)):
            assert abs(sum(it["class_name"] == class_name for it in data[s]) - n * ratio) <= 1
