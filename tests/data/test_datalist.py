import json
import os

import numpy as np
import pytest
from PIL import Image

from usfm_monai.data.datalist import load_datalist, resolve_datalist, write_datalist


def _touch(path):
    """A real 2 x 2 8-bit PNG: resolve_datalist checks that every listed file is a readable image."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ds"
    for name in ("a.png", "b.png", "m/a.png", "m/b.png"):
        _touch(str(root / name))
    data = {
        "training": [{"image": "a.png", "label": "m/a.png"}, {"image": "b.png", "label": "m/b.png", "organ": "x"}],
        "validation": [{"image": "a.png", "label": 2, "class_name": "normal"}],
        "test": ["b.png"],
        "metadata": {"seed": 0},
    }
    with open(root / "datalist.json", "w") as f:
        json.dump(data, f)
    return root


def test_paths_resolved_against_datalist_folder_and_base_dir(dataset, tmp_path):
    items = load_datalist(str(dataset / "datalist.json"), required_keys=("image", "label"))
    assert items == [
        {"image": str(dataset / "a.png"), "label": str(dataset / "m/a.png")},
        {"image": str(dataset / "b.png"), "label": str(dataset / "m/b.png"), "organ": "x"},
    ]
    # the same list read from elsewhere with an explicit base_dir
    moved = tmp_path / "lists" / "copy.json"
    moved.parent.mkdir()
    moved.write_text((dataset / "datalist.json").read_text())
    assert load_datalist(str(moved), base_dir=str(dataset), required_keys=("image", "label")) == items


def test_int_label_and_string_test_items(dataset):
    (val,) = load_datalist(str(dataset / "datalist.json"), "validation")
    assert val == {"image": str(dataset / "a.png"), "label": 2, "class_name": "normal"}
    assert load_datalist(str(dataset / "datalist.json"), "test") == [{"image": str(dataset / "b.png")}]


def test_errors_name_file_section_item_and_key(dataset, tmp_path):
    path = str(dataset / "datalist.json")
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_datalist(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_datalist(str(bad))
    available = r"available sections: \['test', 'training', 'validation'\]"
    with pytest.raises(KeyError, match=r"'training_set' not found .*" + available):
        load_datalist(path, "training_set")
    with pytest.raises(KeyError, match=r"Item 0 of section 'training' .* lacks the required key 'target'"):
        load_datalist(path, required_keys=("image", "target"))
    bad.write_text(json.dumps({"training": [{"image": {"x": 1}}]}))
    with pytest.raises(TypeError, match="Key 'image' of item 0"):
        load_datalist(str(bad))
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        load_datalist(str(bad))


def test_missing_files_listed_with_count(dataset):
    items = [{"image": f"gone{i}.png"} for i in range(7)] + [{"image": "a.png"}]
    path = write_datalist(str(dataset / "missing.json"), {"training": items})
    with pytest.raises(FileNotFoundError) as err:
        load_datalist(path)
    msg = str(err.value)
    assert msg.startswith("7 file(s) referenced by section 'training'")
    assert "gone0.png" in msg and "gone4.png" in msg and "gone5.png" not in msg  # the first 5 only
    assert len(load_datalist(path, check_files=False)) == 8


def test_write_datalist_relative_and_atomic(tmp_path):
    root = tmp_path / "ds"
    img = _touch(str(root / "sub" / "x.png"))
    out = write_datalist(
        str(tmp_path / "lists" / "d.json"),
        {"training": [{"image": img, "label": 1, "organ": "liver"}], "test": [{"image": "rel/y.png"}]},
        {"seed": 3},
        base_dir=str(root),
    )
    with open(out) as f:
        data = json.load(f)
    assert data == {
        "training": [{"image": "sub/x.png", "label": 1, "organ": "liver"}],
        "test": [{"image": "rel/y.png"}],
        "metadata": {"seed": 3},
    }
    assert os.listdir(tmp_path / "lists") == ["d.json"]  # no temporary file left behind
    with pytest.raises(ValueError, match="metadata"):
        write_datalist(out, {"metadata": []})


def test_resolve_real_dataset_lookup_order(dataset, tmp_path, monkeypatch):
    expected = load_datalist(str(dataset / "datalist.json"), required_keys=("image", "label"))
    # default file name, relative to dataset_dir
    assert resolve_datalist(str(dataset), task="segmentation") == expected
    # relative to the current folder (e.g. data_lists/...) with paths relative to dataset_dir
    lists = tmp_path / "data_lists"
    lists.mkdir()
    (lists / "seg.json").write_text((dataset / "datalist.json").read_text())
    monkeypatch.chdir(tmp_path)
    assert resolve_datalist(str(dataset), "data_lists/seg.json", task="segmentation") == expected
    assert resolve_datalist(str(dataset), str(lists / "seg.json"), "validation", task="classification")[0]["label"] == 2
    with pytest.raises(FileNotFoundError, match="looked for"):
        resolve_datalist(str(dataset), "other.json")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_datalist(str(tmp_path / "nowhere"), "seg.json")
    with pytest.raises(KeyError, match="'target'"):
        resolve_datalist(str(dataset), task="enhancement")
    with pytest.raises(ValueError, match="task must be one of"):
        resolve_datalist(str(dataset), task="detection")


def test_resolve_synthetic(tmp_path):
    kwargs = {"num_images": 6, "image_size": 32}
    with pytest.raises(ValueError, match="synthetic_dir"):
        resolve_datalist("synthetic", task="classification", synthetic_kwargs=kwargs)
    target = tmp_path / "bundle" / "data" / "synthetic_classification"
    items = resolve_datalist("synthetic", section="training", task="classification", synthetic_dir=str(target),
                             synthetic_kwargs=kwargs)
    with open(target / "datalist.json") as f:
        on_disk = json.load(f)
    assert [it["image"] for it in items] == [str(target / it["image"]) for it in on_disk["training"]]
    assert all(isinstance(it["label"], int) and os.path.isfile(it["image"]) for it in items)


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"image": "a.png", "label": "benign"}], r"item 0: label must be an int class index, got 'benign' \(write 0"),
        ([{"image": "a.png", "label": 3}], r"item 0: label 3 is out of range for num_classes=3"),
        ([{"image": "a.png", "label": 1.0}], "must be an int class index, got 1.0"),
        ([{"image": "a.png", "label": 0, "class_name": "benign"}, {"image": "b.png", "label": 1}],
         r"1 item\(s\) have a 'class_name' and 1 do not \(e.g. item 1\)"),
        ([{"image": "a.png", "label": 0, "class_name": "normal"}], "class_name 'normal' does not match label 0"),
    ],
    ids=["string-label", "out-of-range", "float-label", "class-name-on-some", "class-name-mismatch"],
)
def test_classification_labels_checked_at_start_up(dataset, items, message):
    path = write_datalist(str(dataset / "cls.json"), {"training": items})
    with pytest.raises(ValueError, match=message):
        resolve_datalist(str(dataset), path, task="classification", class_names=["benign", "malignant", "normal"])
    good = [{"image": "a.png", "label": 2, "class_name": "normal"}, {"image": "b.png", "label": 0, "class_name": "benign"}]
    path = write_datalist(str(dataset / "cls.json"), {"training": good})
    assert [i["label"] for i in resolve_datalist(str(dataset), path, task="classification", num_classes=3)] == [2, 0]
