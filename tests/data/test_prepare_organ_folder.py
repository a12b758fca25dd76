import json
import os

import pytest
from fixtures.layouts import make_busi, make_organ_folders

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.prepare.organ_folder import prepare_busi_pretrain, prepare_organ_folder


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_organ_tags_nested_split_and_corrupt(tmp_path, capsys):
    info = make_organ_folders(str(tmp_path / "organs"))
    out = prepare_organ_folder(info["dir"], str(tmp_path / "pre.json"), val_fraction=0.2, exclude="_mask")
    data = _read(out)
    items = data["training"] + data["validation"]
    assert {it["image"].split("/")[0] == it["organ"] for it in items} == {True}
    assert info["mask"] not in [it["image"] for it in items]
    assert any("/sub/" in it["image"] for it in items) and any(it["image"].endswith(".JPEG") for it in items)
    for organ, n in info["counts"].items():
        assert sum(it["organ"] == organ for it in items) == n
        n_val = sum(it["organ"] == organ for it in data["validation"])
        assert abs(n_val - 0.2 * n) <= 1
    assert data["metadata"]["skipped"][0]["path"] == info["corrupt"]
    assert info["corrupt"] in capsys.readouterr().out
    assert "test" not in data
    assert len(load_datalist(out, "validation", base_dir=info["dir"])) == len(data["validation"])


def test_without_exclude_masks_are_images_and_empty_root_errors(tmp_path):
    info = make_organ_folders(str(tmp_path / "organs"))
    data = _read(prepare_organ_folder(info["dir"], str(tmp_path / "pre.json")))
    assert info["mask"] in [it["image"] for it in data["training"] + data["validation"]]
    with pytest.raises(FileNotFoundError, match="No images found"):
        prepare_organ_folder(str(tmp_path / "missing"), str(tmp_path / "x.json"))


def test_busi_pretrain_images_only(tmp_path):
    info = make_busi(str(tmp_path / "busi"))
    data = _read(prepare_busi_pretrain(info["dir"], str(tmp_path / "pre.json"), val_fraction=0.1))
    items = data["training"] + data["validation"]
    assert all("_mask" not in it["image"] and it["organ"] == "breast" for it in items)
    assert len(items) == sum(info["counts"].values()) - 1  # the corrupt image is reported, not listed
    assert info["corrupt"] in [s["path"] for s in data["metadata"]["skipped"]]
    split_of = {it["image"]: s for s in ("training", "validation") for it in data[s]}
    a, b = info["same_label_copies"]
    assert split_of[a] == split_of[b]
    assert os.path.isabs(load_datalist(str(tmp_path / "pre.json"), base_dir=info["dir"])[0]["image"])
