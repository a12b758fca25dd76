import json
import os

import numpy as np
import pytest
from fixtures.layouts import make_busi, save
from PIL import Image

from monai.transforms import Compose, LoadImaged
from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.prepare.busi import prepare_busi_classification, prepare_busi_segmentation
from usfm_monai.transforms.grayscale import EnsureGrayscaled

SPLITS = ("training", "validation", "test")
RATIOS = (0.7, 0.1, 0.2)


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    return make_busi(str(tmp_path_factory.mktemp("busi")))


def _read(path):
    with open(path) as f:
        return json.load(f)


def _class_of(path):
    return path.split("/")[0]


def test_classification_counts_conflicts_and_skips(busi, tmp_path, capsys):
    out = prepare_busi_classification(busi["dir"], str(tmp_path / "cls.json"))
    data = _read(out)
    meta = data["metadata"]
    items = [it for s in SPLITS for it in data[s]]
    paths = [it["image"] for it in items]
    # 14 + 9 + 6 images, minus the corrupt one, minus the two conflicting copies
    assert len(items) == 29 - 1 - 2
    assert len(set(paths)) == len(paths)  # no leakage: an image is in one split only
    assert busi["corrupt"] not in paths and not set(busi["conflicting_copies"]) & set(paths)
    reasons = {s["path"]: s["reason"] for s in meta["skipped"]}
    assert reasons[busi["corrupt"]].startswith(f"Cannot read image {busi['corrupt']}")
    assert reasons[busi["orphan_mask"]] == "mask without an image"
    conflict = meta["conflicting_duplicates"][0]
    assert sorted(m["path"] for m in conflict) == sorted(busi["conflicting_copies"])
    # the RGB copy of a gray picture is found by its decoded pixels
    assert meta["duplicates"] == [list(busi["same_label_copies"])]
    split_of = {it["image"]: s for s in SPLITS for it in data[s]}
    assert split_of[busi["same_label_copies"][0]] == split_of[busi["same_label_copies"][1]]
    for it in items:
        assert it["label"] == ("benign", "malignant", "normal").index(_class_of(it["image"]))
        assert it["class_name"] == _class_of(it["image"])
    assert meta["seed"] == 0 and meta["ratios"] == list(RATIOS)
    printed = capsys.readouterr().out
    assert "benign (7).png (benign) = " in printed and "benign (8).png" in printed


def test_classification_stratification_bound(busi, tmp_path):
    data = _read(prepare_busi_classification(busi["dir"], str(tmp_path / "cls.json")))
    for class_name, n in (("benign", 14 - 2), ("malignant", 9 - 1), ("normal", 6)):
        for split, ratio in zip(SPLITS, RATIOS):
            count = sum(_class_of(it["image"]) == class_name for it in data[split])
            assert abs(count - n * ratio) <= 1, (class_name, split, count)


def test_split_determinism_and_seed(busi, tmp_path):
    a = _read(prepare_busi_classification(busi["dir"], str(tmp_path / "a.json"), seed=0))
    b = _read(prepare_busi_classification(busi["dir"], str(tmp_path / "b.json"), seed=0))
    c = _read(prepare_busi_classification(busi["dir"], str(tmp_path / "c.json"), seed=1))
    assert all(a[s] == b[s] for s in SPLITS)
    assert any(a[s] != c[s] for s in SPLITS)
    assert c["metadata"]["seed"] == 1


def test_bad_ratios_and_folder(busi, tmp_path):
    with pytest.raises(ValueError, match="ratios"):
        prepare_busi_classification(busi["dir"], str(tmp_path / "x.json"), ratios=(0.5, 0.1, 0.1))
    with pytest.raises(FileNotFoundError, match="Did you mean"):
        prepare_busi_classification(os.path.dirname(busi["dir"]), str(tmp_path / "x.json"))


def test_segmentation_union_masks_and_loading(busi, tmp_path):
    mask_dir = tmp_path / "masks"
    out = prepare_busi_segmentation(busi["dir"], str(tmp_path / "seg.json"), mask_dir=str(mask_dir))
    data = _read(out)
    items = [it for s in SPLITS for it in data[s]]
    images = [it["image"] for it in items]
    assert not any(_class_of(p) == "normal" for p in images)
    assert busi["no_mask"] not in images and busi["corrupt"] not in images
    assert len(images) == (14 - 1) + (9 - 1)
    reasons = {s["path"]: s["reason"] for s in data["metadata"]["skipped"]}
    assert "no mask" in reasons[busi["no_mask"]]
    # conflicting copies are kept for segmentation, in one split
    split_of = {it["image"]: s for s in SPLITS for it in data[s]}
    assert split_of[busi["conflicting_copies"][0]] == split_of[busi["conflicting_copies"][1]]
    for it in items:
        stem = os.path.splitext(os.path.basename(it["image"]))[0]
        written = np.asarray(Image.open(os.path.join(busi["dir"], it["label"])))
        assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written == 255, busi["masks"][stem])
    # what training loads (MONAI LoadImaged with PILReader, then EnsureGrayscaled) pairs up pixel for pixel
    load = Compose([
        LoadImaged(("image", "label"), reader="PILReader", ensure_channel_first=True),
        EnsureGrayscaled("image"),
    ])
    for item in load_datalist(out, "training", base_dir=busi["dir"], required_keys=("image", "label")):
        sample = load(item)
        assert sample["image"].shape == sample["label"].shape == (1, 32, 32)
        raw = np.asarray(Image.open(item["image"]).convert("L")).astype(int)
        # PILReader returns spatial dims reversed (W, H) by default: compare with the transposed PIL array;
        # PIL's fixed-point luma and our rounded float luma may differ by one gray level on colored pixels
        assert np.abs(sample["image"][0].numpy() - raw.T).max() <= 1
        label = np.asarray(Image.open(item["label"])) == 255
        np.testing.assert_array_equal(sample["label"][0].numpy() == 255, label.T)
        assert set(np.unique(sample["label"].numpy())) <= {0.0, 255.0}


def test_segmentation_union_is_exact_for_multi_mask_image(busi, tmp_path):
    prepare_busi_segmentation(busi["dir"], str(tmp_path / "seg.json"), mask_dir=str(tmp_path / "m"))
    written = np.asarray(Image.open(tmp_path / "m" / "benign" / "benign (1).png")) > 0
    base = os.path.join(busi["dir"], "benign")
    first = np.asarray(Image.open(os.path.join(base, "benign (1)_mask.png")))
    rgba = np.asarray(Image.open(os.path.join(base, "benign (1)_mask_1.png")))[..., 0] > 0
    rgb = np.asarray(Image.open(os.path.join(base, "benign (1)_mask_2.png")))[..., 0] > 0
    assert rgba.sum() == 36 and rgb.sum() == 25  # the planted rectangles, read back by hand
    np.testing.assert_array_equal(written, first | rgba | rgb)


def test_segmentation_default_mask_dir_and_include_normal(busi, tmp_path):
    out = prepare_busi_segmentation(busi["dir"], str(tmp_path / "lists" / "seg.json"), include_normal=True)
    data = _read(out)
    assert data["metadata"]["mask_dir"] == os.path.relpath(tmp_path / "lists" / "busi_masks", busi["dir"])
    normal = [it for s in SPLITS for it in data[s] if it["class_name"] == "normal"]
    assert len(normal) == 6
    assert not np.asarray(Image.open(os.path.join(busi["dir"], normal[0]["label"]))).any()
    load_datalist(out, "test", base_dir=busi["dir"], required_keys=("image", "label"))


def test_segmentation_size_mismatch_names_both_files(tmp_path):
    info = make_busi(str(tmp_path / "src"), counts=(8, 5, 1))
    save(os.path.join(info["dir"], "benign", "benign (2)_mask.png"), np.zeros((20, 32), bool))
    with pytest.raises(ValueError, match=r"benign \(2\)_mask\.png.*32x20.*benign \(2\)\.png.*32x32"):
        prepare_busi_segmentation(info["dir"], str(tmp_path / "seg.json"))


BUSI_DIR = os.environ.get(
    "USFM_BUSI_DIR",
    os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "shared", "data", "BUSI",
                 "Dataset_BUSI_with_GT"),
)


@pytest.mark.skipif(not os.path.isdir(BUSI_DIR), reason=f"real BUSI not found at {BUSI_DIR} (set USFM_BUSI_DIR)")
def test_real_busi_classification(tmp_path, repo_root):
    out = prepare_busi_classification(BUSI_DIR, str(tmp_path / "busi_classification.json"))
    data = _read(out)
    meta = data["metadata"]
    assert meta["num_images_found"] == 780 and meta["skipped"] == []
    assert sum(meta["sizes"].values()) == 778  # the conflicting pair is excluded
    pair = sorted(m["path"] for m in meta["conflicting_duplicates"][0])
    assert pair == ["benign/benign (433).png", "malignant/malignant (145).png"]
    for class_name, n in (("benign", 436), ("malignant", 209), ("normal", 133)):
        for split, ratio in zip(SPLITS, RATIOS):
            assert abs(meta["class_counts"][split][class_name] - n * ratio) <= 1
    # the versioned datalist is exactly what the preparer makes
    committed = os.path.join(repo_root, "data_lists", "busi_classification.json")
    if os.path.isfile(committed):
        assert _read(committed) == data
