"""Start-up file checks: empty, truncated, non-image and 16-bit files are named with their datalist item."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from usfm_monai.data.checks import find_unreadable_files, verify_image_file
from usfm_monai.data.datalist import resolve_datalist


def _png(path, array):
    Image.fromarray(array).save(path, format="PNG")
    return str(path)


@pytest.fixture()
def broken(tmp_path):
    """One good PNG and one of each kind of bad file, as a dataset folder."""
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    data = open(good, "rb").read()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image\n")
    _png(tmp_path / "deep.png", np.full((8, 8), 40000, np.uint16))
    (tmp_path / "vol.nii.gz").write_bytes(b"\x1f\x8b garbage")
    return tmp_path


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.png", "PNG file is truncated or corrupt"),
        ("empty.png", r"empty \(0 bytes\)"),
        ("notes.txt", "not an image file"),
        ("deep.png", r"16/32-bit image \(PIL mode I;16\)"),
        ("vol.nii.gz", "not a readable NIfTI file"),
    ],
)
def test_verify_image_file_names_the_file_and_the_reason(broken, name, reason):
    verify_image_file(broken / "good.png")
    with pytest.raises(ValueError, match=f"{name}: .*{reason}"):
        verify_image_file(broken / name)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        verify_image_file(broken / "gone.png")


def test_resolve_datalist_names_every_bad_item_before_training(broken):
    items = [{"image": "good.png", "label": "good.png"}, {"image": "truncated.png", "label": "good.png"},
             {"image": "good.png", "label": "empty.png"}, {"image": "notes.txt", "label": "good.png"}]
    (broken / "list.json").write_text(json.dumps({"training": items}))
    with pytest.raises(ValueError) as err:
        resolve_datalist(str(broken), "list.json", task="segmentation")
    msg = str(err.value)
    assert msg.startswith("3 file(s) referenced by section 'training'") and "check_files=False" in msg
    assert "item 1 of section 'training'" in msg and f"key 'image': {broken / 'truncated.png'}" in msg
    assert "item 2 of" in msg and f"key 'label': {broken / 'empty.png'}" in msg and "item 3 of" in msg
    assert len(resolve_datalist(str(broken), "list.json", task="segmentation", check_files=False)) == 4
    with pytest.raises(TypeError, match="--check_files False"):
        resolve_datalist(str(broken), "list.json", task="segmentation", check_files="false")
    problems = find_unreadable_files([{"image": os.fspath(broken / "deep.png"), "label": 1}], ["image", "label"])
    assert len(problems) == 1 and problems[0].startswith("item 0 of datalist, key 'image'")
