"""The cls_busi bundle: metadata, MONAI bundle properties, config wiring and a tiny train -> evaluate -> infer run."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.synthetic import ensure_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "cls_busi")
CONFIGS = os.path.join(BUNDLE, "configs")
SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")
CLASSES = ["benign", "malignant", "normal"]
SYNTHETIC = {"synthetic_num_images": 30, "synthetic_image_size": 64}


def _cfg(*names):
    return [os.path.join(CONFIGS, n) for n in names]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """The bundle's synthetic default dataset, generated once for every test of this module."""
    folder = str(tmp_path_factory.mktemp("synthetic_classification"))
    ensure_synthetic_dataset(
        folder, "classification", num_images=SYNTHETIC["synthetic_num_images"],
        image_size=SYNTHETIC["synthetic_image_size"],
    )
    return folder


def _overrides(tmp_path, synthetic_dir, **extra):
    return {"bundle_root": str(tmp_path), "synthetic_dir": synthetic_dir, **SYNTHETIC, **extra}


def _parser(files, **override):
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(override)
    return parser


@pytest.mark.skipif(not os.path.isfile(SCHEMA), reason="MONAI metadata schema not available offline")
def test_metadata_verifies():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(CONFIGS, "metadata.json"), filepath=SCHEMA)  # raises on any error
    with open(os.path.join(CONFIGS, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"


@pytest.mark.parametrize(
    "files, workflow_type",
    [(("train.json", "quick.json"), "train"), (("inference.json", "quick.json"), "infer")],
    ids=["train", "infer"],
)
def test_bundle_properties(tmp_path, synthetic_dir, files, workflow_type):
    workflow = ConfigWorkflow(
        config_file=_cfg(*files), meta_file=os.path.join(CONFIGS, "metadata.json"), workflow_type=workflow_type,
        **_overrides(tmp_path, synthetic_dir),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_layer_decay_and_label_smoothing_wiring(tmp_path, synthetic_dir):
    """Head at the full learning rate, patch embedding at lr * 0.65 ** (depth + 1) (BEiT layer decay); CE with 0.1.

    The decay is set explicitly here: by default it follows ``pretrained`` (tests/bundles/test_recipes.py)."""
    parser = _parser(_cfg("train.json", "quick.json"), **_overrides(tmp_path, synthetic_dir, layer_decay=0.65))
    network = parser.get_parsed_content("network")
    lr = parser.get_parsed_content("learning_rate")
    depth = len(network.encoder.blocks)
    groups = parser.get_parsed_content("param_groups")
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(network.head.weight)] == pytest.approx(lr)
    assert lr_of[id(network.encoder.patch_embed.proj.weight)] == pytest.approx(lr * 0.65 ** (depth + 1))
    assert lr_of[id(network.encoder.blocks[3].mlp.fc1.weight)] == pytest.approx(lr * 0.65 ** (depth - 3))
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.label_smoothing == pytest.approx(0.1)


def test_missing_pretrained_file_is_a_clear_error(tmp_path, synthetic_dir):
    missing = str(tmp_path / "no_such_encoder.pt")
    parser = _parser(_cfg("train.json", "quick.json"), **_overrides(tmp_path, synthetic_dir, pretrained=missing))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def")
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, FileNotFoundError) and "no_such_encoder.pt" in str(e) for e in chain), chain


def test_densenet_baseline_wiring(tmp_path, synthetic_dir):
    """The DenseNet121 baseline: 1 input channel, 3 logits, AdamW groups without decay on biases and norms."""
    files = _cfg("train.json", "quick.json", "baseline_densenet121.json")
    parser = _parser(files, **_overrides(tmp_path, synthetic_dir))
    network = parser.get_parsed_content("network")
    logits = network.eval()(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3)
    groups = parser.get_parsed_content("optimizer").param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(network.class_layers.out.bias)] == 0.0
    assert decay_of[id(network.class_layers.out.weight)] == pytest.approx(0.05)
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for g in groups for p in g["params"])


def _bundle_run(files, cwd, overrides):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_evaluate_infer_end_to_end(tmp_path, synthetic_dir):
    root = tmp_path / "bundle"
    overrides = _overrides(root, synthetic_dir, epochs=2)
    # train from the repository root, evaluate and infer from inside the bundle: outputs follow bundle_root
    _bundle_run(_cfg("train.json", "quick.json"), REPO, overrides)
    checkpoint = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "head.weight" in checkpoint["model"] and checkpoint["model"]["head.weight"].shape[0] == 3
    assert (root / "models" / "checkpoint_last.pt").is_file()

    _bundle_run(["configs/train.json", "configs/quick.json", "configs/evaluate.json"], BUNDLE, overrides)
    test_items = load_datalist(os.path.join(synthetic_dir, "datalist.json"), "test", required_keys=("image", "label"))
    with open(root / "eval" / "classification_report.json") as f:
        report = json.load(f)
    assert report["num_samples"] == len(test_items)
    assert report["info"]["section"] == "test"
    cm = np.array(report["confusion_matrix"])
    true_counts = np.bincount([item["label"] for item in test_items], minlength=3)
    np.testing.assert_array_equal(cm.sum(axis=1), true_counts)
    assert report["metrics"]["acc"] == pytest.approx(np.trace(cm) / cm.sum())
    assert all(0.0 <= report["metrics"][k] <= 1.0 for k in ("acc", "recall", "prec", "f1"))
    assert -1.0 <= report["metrics"]["mcc"] <= 1.0
    with open(root / "eval" / "per_image.csv", newline="") as f:
        per_image = {row["image"]: row for row in csv.DictReader(f)}
    assert sorted(per_image) == sorted(item["image"] for item in test_items)
    for item in test_items:
        assert int(per_image[item["image"]]["true_label"]) == item["label"]
    assert (root / "eval" / "confusion_matrix.png").is_file() and (root / "eval" / "metrics.csv").is_file()

    _bundle_run(["configs/inference.json", "configs/quick.json"], BUNDLE, overrides)
    with open(root / "eval" / "inference" / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    assert sorted(r["image"] for r in predictions) == sorted(per_image)
    for row in predictions:
        probs = np.array([float(row[f"prob_{c}"]) for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert row["pred_class"] == CLASSES[int(np.argmax(probs))] == CLASSES[int(row["pred_label"])]
        # the inference pipeline reproduces the evaluation's probabilities for the same checkpoint and image
        evaluated = np.array([float(per_image[row["image"]][f"prob_{c}"]) for c in CLASSES])
        np.testing.assert_allclose(probs, evaluated, atol=1e-5)
