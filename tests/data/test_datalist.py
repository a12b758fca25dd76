import json
import os

import numpy as np
import pytest
import torch
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
    # configs pass check_files as a plain reference: `--check_files false` (a string) must not silently skip the check
    with pytest.raises(TypeError, match="--check_files False"):
        resolve_datalist(str(dataset), task="segmentation", check_files="false")


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


# --- the synthetic default generated on first use, not when a config is read ---------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = {"num_images": 9, "image_size": 32}


def test_deferred_synthetic_datalist_generates_on_first_read(tmp_path):
    from usfm_monai.data.datalist import DeferredDatalist, materialize

    target = tmp_path / "synthetic_classification"
    names = ["benign", "malignant", "normal"]
    items = resolve_datalist("synthetic", task="classification", synthetic_dir=str(target), synthetic_kwargs=SYNTHETIC,
                             class_names=names, defer=True)
    assert isinstance(items, DeferredDatalist) and not items.materialized
    assert len(items) == 6 and not target.exists()  # the length is known, nothing is written
    assert "not generated yet" in repr(items)
    # the parameters, the section and the labels are still checked when the config is read
    with pytest.raises(ValueError, match="label 2 is out of range"):
        resolve_datalist("synthetic", task="classification", synthetic_dir=str(target), synthetic_kwargs=SYNTHETIC,
                         class_names=names[:2], defer=True)
    with pytest.raises(KeyError, match="Section 'holdout' not found"):
        resolve_datalist("synthetic", None, "holdout", "classification", str(target), synthetic_kwargs=SYNTHETIC,
                         defer=True)
    with pytest.raises(ValueError, match="num_images"):
        resolve_datalist("synthetic", task="classification", synthetic_dir=str(target),
                         synthetic_kwargs={"num_images": 0}, defer=True)
    assert not target.exists()
    # the first read generates and checks the dataset; the items are those of the eager call
    first = items[0]
    assert items.materialized and os.path.isfile(first["image"]) and os.path.isfile(target / "datalist.json")
    eager = resolve_datalist("synthetic", task="classification", synthetic_dir=str(target), synthetic_kwargs=SYNTHETIC,
                             class_names=names)
    assert items == eager and list(items) == eager and items[1:3] == eager[1:3]
    # materialize() reaches a deferred list directly or through a dataset's ``data``; anything else is left alone
    val = resolve_datalist("synthetic", None, "validation", "classification", str(target), synthetic_kwargs=SYNTHETIC,
                           defer=True)

    class Dataset:
        data = val

    materialize(Dataset(), None, [1, 2], eager)
    assert val.materialized


def test_defer_loads_a_real_dataset_now(dataset):
    items = resolve_datalist(str(dataset), task="segmentation", defer=True)
    assert isinstance(items, list) and len(items) == 2
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_datalist(str(dataset / "nowhere"), task="segmentation", defer=True)


def test_deferred_datalist_in_a_loader_worker(tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.transforms import LoadImaged

    items = resolve_datalist("synthetic", task="segmentation", synthetic_dir=str(tmp_path / "syn"),
                             synthetic_kwargs=SYNTHETIC, defer=True)
    loader = DataLoader(Dataset(items, LoadImaged(("image", "label"), image_only=True)), batch_size=2, shuffle=True,
                        num_workers=1)
    assert not (tmp_path / "syn").exists()  # dataset and loader built: nothing written yet
    batches = list(loader)  # the worker generates the dataset on its first read
    assert sum(len(b["image"]) for b in batches) == len(items) and (tmp_path / "syn" / "datalist.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["syn"]


@pytest.mark.parametrize("bundle", ["pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance"])
def test_reading_bundle_datalists_writes_nothing(tmp_path, bundle):
    from monai.bundle import ConfigParser

    from usfm_monai.data.datalist import DeferredDatalist

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", bundle, "configs", "train.json"))
    parser.update({"bundle_root": str(tmp_path)})
    ids = [k for k in parser.get() if k.endswith("_datalist")]
    assert {"train_datalist", "val_datalist"} <= set(ids)
    for name in ids:
        assert isinstance(parser.get_parsed_content(name), DeferredDatalist)
    assert parser.get("run")[0].startswith("$usfm_monai.data.datalist.materialize(")
    assert not (tmp_path / "data").exists()


def test_deferred_cache_dataset_fills_when_the_data_is_generated(tmp_path):
    from monai.data import CacheDataset
    from monai.transforms import Compose, LoadImaged, RandFlipd

    from usfm_monai.data import DeferredCacheDataset, materialize, planned_items

    def transform():
        load = LoadImaged("image", image_only=True, ensure_channel_first=True)
        return Compose([load, RandFlipd("image", prob=0.5, spatial_axis=0)]).set_random_state(0)

    def deferred(name):
        return resolve_datalist("synthetic", task="classification", synthetic_dir=str(tmp_path / name),
                                synthetic_kwargs=SYNTHETIC, defer=True)

    items = deferred("a")
    dataset = DeferredCacheDataset(items, transform(), cache_rate=1.0, num_workers=2, progress=False)
    assert len(dataset) == 6 and dataset.cache_pending and not (tmp_path / "a").exists()
    labels = [item["label"] for item in planned_items(items)]  # the plan's fields, still nothing written
    assert len(labels) == 6 and not (tmp_path / "a").exists()
    materialize(dataset)
    assert not dataset.cache_pending and items.materialized and dataset.cache_num == 6
    assert [item["label"] for item in items] == labels
    # the filled cache serves what a plain CacheDataset over the generated items serves
    eager = CacheDataset(list(items), transform(), cache_rate=1.0, progress=False)
    for index in range(len(items)):
        assert torch.equal(torch.as_tensor(dataset[index]["image"]), torch.as_tensor(eager[index]["image"]))
    # read before it is generated: the transforms run on the generated items (nothing cached yet)
    early = DeferredCacheDataset(deferred("b"), transform(), cache_rate=1.0, progress=False)
    late = DeferredCacheDataset(deferred("c"), transform(), cache_rate=1.0, progress=False).materialize()
    assert torch.equal(torch.as_tensor(early[0]["image"]), torch.as_tensor(late[0]["image"]))
    # over a real datalist it is a plain CacheDataset
    assert not DeferredCacheDataset(list(items), transform(), cache_rate=1.0, progress=False).cache_pending
