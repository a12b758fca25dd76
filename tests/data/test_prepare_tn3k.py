import json
import os

import numpy as np
import pytest
from fixtures.layouts import make_tn3k, save, write_corrupt
from PIL import Image

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.prepare.tn3k import prepare_tn3k


@pytest.fixture()
def tn3k(tmp_path):
    return make_tn3k(str(tmp_path / "tn3k"))


@pytest.mark.parametrize("fold", [0, 3])
def test_fold_sections_masks_and_test_set(tn3k, tmp_path, fold):
    out = prepare_tn3k(tn3k["dir"], str(tmp_path / "tn3k.json"), fold=fold)
    with open(out) as f:
        data = json.load(f)
    with open(os.path.join(tn3k["dir"], f"tn3k-trainval-fold{fold}.json")) as f:
        indices = json.load(f)
    names = sorted(os.listdir(os.path.join(tn3k["dir"], "trainval-image")))  # the order the indices refer to
    assert [it["image"] for it in data["training"]] == [f"trainval-image/{names[i]}" for i in sorted(indices["train"])]
    assert [it["image"] for it in data["validation"]] == [f"trainval-image/{names[i]}" for i in sorted(indices["val"])]
    assert [it["image"] for it in data["test"]] == [f"test-image/{i:04d}.jpg" for i in range(3)]
    assert data["metadata"]["fold"] == fold and data["metadata"]["sizes"] == {"training": 7, "validation": 1, "test": 3}
    for section in ("training", "validation", "test"):
        for it in load_datalist(out, section, base_dir=tn3k["dir"], required_keys=("image", "label")):
            part = "test" if "/test-image/" in it["image"] else "trainval"
            name = os.path.splitext(os.path.basename(it["image"]))[0]
            written = np.asarray(Image.open(it["label"]))
            assert set(np.unique(written)) <= {0, 255}
            # JPEG noise removed by the > 127 threshold; the empty mask (0001) is kept
            np.testing.assert_array_equal(written == 255, tn3k["masks"][(part, name)])


@pytest.mark.parametrize("fold", [-1, 5, "0"])
def test_bad_fold_number(tn3k, tmp_path, fold):
    with pytest.raises(ValueError, match="fold must be an int in 0..4"):
        prepare_tn3k(tn3k["dir"], str(tmp_path / "x.json"), fold=fold)


def test_fold_index_out_of_range_names_file(tn3k, tmp_path):
    fold_file = os.path.join(tn3k["dir"], "tn3k-trainval-fold2.json")
    with open(fold_file, "w") as f:
        json.dump({"train": [0, 1, 8], "val": [2]}, f)
    with pytest.raises(ValueError, match=r"fold2\.json has indices out of range \[8\].*holds 8 images"):
        prepare_tn3k(tn3k["dir"], str(tmp_path / "x.json"), fold=2)


def test_missing_mask_size_mismatch_and_corrupt_are_listed(tn3k, tmp_path):
    os.remove(os.path.join(tn3k["dir"], "trainval-mask", "0003.jpg"))
    save(os.path.join(tn3k["dir"], "trainval-mask", "0004.jpg"), np.zeros((16, 32), np.uint8))
    write_corrupt(os.path.join(tn3k["dir"], "test-image", "0002.jpg"))
    with pytest.raises(ValueError) as err:
        prepare_tn3k(tn3k["dir"], str(tmp_path / "x.json"))
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "trainval-image/0003.jpg: no mask" in msg
    assert "trainval-mask/0004.jpg has size 32x16 (WxH) but image" in msg
    assert "Cannot read image" in msg and "test-image/0002.jpg" in msg
    assert not os.path.exists(tmp_path / "x.json")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainval-image"):
        prepare_tn3k(str(tmp_path), str(tmp_path / "x.json"))
