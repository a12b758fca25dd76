"""The cls_busi bundle: metadata, MONAI bundle properties, config wiring and a tiny train -> evaluate -> infer run."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.synthetic import ensure_synthetic_dataset

BUNDLE = "cls_busi"
CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory, bundle):
    """The bundle's synthetic default dataset, generated once for every test of this module."""
    folder = str(tmp_path_factory.mktemp("synthetic_classification"))
    tiny = bundle.tiny()
    ensure_synthetic_dataset(
        folder, "classification", num_images=tiny["synthetic_num_images"], image_size=tiny["synthetic_image_size"]
    )
    return folder


@pytest.fixture
def settings(bundle, synthetic_dir):
    """``settings(bundle_root, **extra)``: the overrides of every run of this module."""
    return lambda bundle_root, **extra: bundle.tiny(bundle_root=str(bundle_root), synthetic_dir=synthetic_dir, **extra)


def test_metadata_verifies(bundle):
    meta = bundle.verify_metadata()  # raises on any error
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"


@pytest.mark.parametrize(
    "files, workflow_type",
    [(("train.json", "quick.json"), "train"), (("inference.json", "quick.json"), "infer")],
    ids=["train", "infer"],
)
def test_bundle_properties(tmp_path, bundle, settings, files, workflow_type):
    workflow = bundle.workflow(files, workflow_type, **settings(tmp_path))
    assert workflow.check_properties() == []


def test_layer_decay_and_label_smoothing_wiring(tmp_path, bundle, settings):
    """Head at the full learning rate, patch embedding at lr * 0.65 ** (depth + 1) (BEiT layer decay); CE with 0.1.

    The decay is set explicitly here: by default it follows ``pretrained`` (tests/bundles/test_recipes.py)."""
    parser = bundle.parser(["train.json", "quick.json"], **settings(tmp_path, layer_decay=0.65))
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


def test_missing_pretrained_file_is_a_clear_error(tmp_path, bundle, settings):
    missing = str(tmp_path / "no_such_encoder.pt")
    parser = bundle.parser(["train.json", "quick.json"], **settings(tmp_path, pretrained=missing))
    parser.get_parsed_content("network_def")  # building the network reads no file
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#handlers")  # the weights loader checks the file when it is built
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, FileNotFoundError) and "no_such_encoder.pt" in str(e) for e in chain), chain


def test_densenet_baseline_wiring(tmp_path, bundle, settings):
    """The DenseNet121 baseline: 1 input channel, 3 logits, AdamW groups without decay on biases and norms."""
    parser = bundle.parser(["train.json", "quick.json", "baseline_densenet121.json"], **settings(tmp_path))
    network = parser.get_parsed_content("network")
    logits = network.eval()(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3)
    groups = parser.get_parsed_content("optimizer").param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(network.class_layers.out.bias)] == 0.0
    assert decay_of[id(network.class_layers.out.weight)] == pytest.approx(0.05)
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for g in groups for p in g["params"])


@pytest.mark.slow
def test_train_evaluate_infer_end_to_end(tmp_path, bundle, settings, synthetic_dir):
    root = tmp_path / "bundle"
    overrides = settings(root, epochs=2)
    # train from the repository root, evaluate and infer from inside the bundle: outputs follow bundle_root
    bundle.run(["train.json", "quick.json"], **overrides)
    checkpoint = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "head.weight" in checkpoint["model"] and checkpoint["model"]["head.weight"].shape[0] == 3
    assert (root / "models" / "checkpoint_last.pt").is_file()

    bundle.run(["configs/train.json", "configs/quick.json", "configs/evaluate.json"], cwd=bundle.dir, **overrides)
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

    bundle.run(["configs/inference.json", "configs/quick.json"], cwd=bundle.dir, **overrides)
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


@pytest.mark.slow
def test_fine_tune_from_pretrained_weights_then_resume(tmp_path, bundle, settings):
    """The USFM recipe end to end: encoder weights loaded at start, LP-FT head, then a resumed run that keeps its
    trained weights (the checkpoint is loaded after the encoder file, and LP-FT is skipped)."""
    from usfm_monai.networks import create_usfm_encoder, export_encoder

    torch.manual_seed(0)
    encoder = export_encoder(create_usfm_encoder("tiny", img_size=64), str(tmp_path / "usfm_encoder.pt"))
    root = tmp_path / "bundle"
    first = bundle.run(["train.json", "quick.json"], **settings(root, epochs=1, pretrained=encoder))
    log = first.stdout + first.stderr
    assert f"encoder weights from {encoder}" in log and "head set to the linear probe" in log
    # mark the checkpoint's encoder: a resumed run must continue from it, not from the encoder file
    key = "encoder.patch_embed.proj.weight"
    checkpoint = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    checkpoint["network"][key] = checkpoint["network"][key] + 1.0
    torch.save(checkpoint, root / "models" / "checkpoint_last.pt")

    resumed = bundle.run(["train.json", "quick.json"], **settings(root, epochs=2, pretrained=encoder))
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "head set to the linear probe" not in log
    final = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)["network"][key]
    from_file = torch.load(encoder, weights_only=True)["state_dict"]["patch_embed.proj.weight"]
    assert (final - from_file).mean().item() == pytest.approx(1.0, abs=0.05)  # the marker survived the epoch
