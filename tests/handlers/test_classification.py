"""Classification report and prediction CSV handlers, checked against hand-made confusion matrices."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from matplotlib import colormaps
from monai.data import MetaTensor
from PIL import Image

from usfm_monai.handlers.classification import (
    ClassificationPredictionSaver,
    ClassificationReport,
    confusion_matrix_figure,
    per_class_scores,
)

CLASSES = ("benign", "malignant", "normal")

# Hand-made case: 10 images, true classes and predictions chosen so the confusion matrix is
#   true\pred  b  m  n
#   benign     3  1  0
#   malignant  1  2  0
#   normal     0  1  2
TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PRED = [0, 0, 0, 1, 0, 1, 1, 1, 2, 2]
CM = [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
# Worked by hand from CM: precision b=3/4 m=2/4 n=2/2, recall b=3/4 m=2/3 n=2/3
PREC = [0.75, 0.5, 1.0]
REC = [0.75, 2 / 3, 2 / 3]
F1 = [2 * p * r / (p + r) for p, r in zip(PREC, REC)]
# Gorodkin R_K: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)); c=7, s=10,
# p (column sums) = (4, 4, 2), t (row sums) = (4, 3, 3)
MCC = (7 * 10 - (16 + 12 + 6)) / np.sqrt((100 - (16 + 16 + 4)) * (100 - (16 + 9 + 9)))


def _probs(pred, k=3, high=0.8):
    p = torch.full((k,), (1 - high) / (k - 1))
    p[pred] = high
    return p


def _batches(batch_size=4):
    """Decollated evaluator outputs: dicts with a MetaTensor image (carrying its file name), pred and label."""
    items = [
        {
            "image": MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": f"/data/img_{i:02d}.png"}),
            "pred": _probs(p),
            "label": torch.tensor(t),
        }
        for i, (t, p) in enumerate(zip(TRUE, PRED))
    ]
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _run(handler, batches):
    engine = Engine(lambda e, batch: batch)  # the output is the decollated batch itself
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_report_files_match_hand_made_confusion(tmp_path):
    report = ClassificationReport(str(tmp_path), CLASSES, prefix="test_", extra={"checkpoint": "model.pt"})
    _run(report, _batches())

    with open(tmp_path / "test_classification_report.json") as f:
        data = json.load(f)
    assert data["confusion_matrix"] == CM
    assert data["class_names"] == list(CLASSES)
    assert data["num_samples"] == 10
    assert data["info"] == {"checkpoint": "model.pt"}
    m = data["metrics"]
    np.testing.assert_allclose(m["acc"], 0.7)
    np.testing.assert_allclose(m["prec"], np.mean(PREC))
    np.testing.assert_allclose(m["recall"], np.mean(REC))
    np.testing.assert_allclose(m["f1"], np.mean(F1))
    np.testing.assert_allclose(m["mcc"], MCC)
    for k, name in enumerate(CLASSES):
        np.testing.assert_allclose(data["per_class"][name]["precision"], PREC[k])
        np.testing.assert_allclose(data["per_class"][name]["recall"], REC[k])
        np.testing.assert_allclose(data["per_class"][name]["f1"], F1[k])
        assert data["per_class"][name]["support"] == sum(row == k for row in TRUE)

    with open(tmp_path / "test_confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [[r[0], *map(int, r[1:])] for r in rows[1:]] == [[n, *row] for n, row in zip(CLASSES, CM)]

    with open(tmp_path / "test_per_image.csv", newline="") as f:
        per_image = list(csv.DictReader(f))
    assert [r["image"] for r in per_image] == [f"/data/img_{i:02d}.png" for i in range(10)]
    assert [int(r["true_label"]) for r in per_image] == TRUE
    assert [r["pred_class"] for r in per_image] == [CLASSES[p] for p in PRED]
    np.testing.assert_allclose([float(per_image[3][f"prob_{c}"]) for c in CLASSES], [0.1, 0.8, 0.1], atol=1e-6)

    png = np.asarray(Image.open(tmp_path / "test_confusion_matrix.png").convert("RGB"))
    assert png.ndim == 3 and png.shape[2] == 3
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"test_{n}" for n in ("classification_report.json", "confusion_matrix.csv", "confusion_matrix.png",
                              "per_image.csv")
    )  # no temporary files left behind


def test_report_resets_between_epochs(tmp_path):
    """A second evaluation run reports only its own samples, not the union with the first."""
    report = ClassificationReport(str(tmp_path), CLASSES, save_figure=False, per_image=False)
    engine = Engine(lambda e, batch: batch)
    report.attach(engine)
    engine.run(_batches(), max_epochs=1)
    engine.run(_batches()[:1], max_epochs=1)  # first 4 images only: TRUE[:4] = 0, 0, 0, 0; PRED[:4] = 0, 0, 0, 1
    assert report.report["confusion_matrix"] == [[3, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert report.report["num_samples"] == 4


def test_confusion_figure_colors_follow_row_fractions():
    """Each cell is painted with cmap(row fraction): colors of the fractions present appear, others do not."""
    cm = [[9, 1], [0, 10]]  # row fractions 0.9, 0.1 / 0.0, 1.0
    rgb = confusion_matrix_figure(cm, ["a", "b"], dpi=80)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    pixels = rgb.reshape(-1, 3).astype(int)
    cmap = colormaps["Blues"]

    def count(value):
        color = np.round(np.array(cmap(value)[:3]) * 255).astype(int)
        return int((np.abs(pixels - color).max(axis=1) <= 1).sum())

    # cells are large flat patches; the colorbar holds every value only as a thin row band
    cell_counts = {v: count(v) for v in (0.9, 0.1, 1.0)}
    assert min(cell_counts.values()) > 400, cell_counts
    assert count(0.5) < min(cell_counts.values()) / 4


def test_per_class_scores_empty_class_is_zero():
    scores = per_class_scores([[2, 0, 0], [1, 0, 0], [0, 0, 0]], CLASSES)
    assert scores["malignant"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["normal"]["support"] == 0
    np.testing.assert_allclose(scores["benign"]["precision"], 2 / 3)


@pytest.mark.parametrize(
    "cm, names, error",
    [
        ([[1, 2], [3, 4]], ["a"], ValueError),  # a single class
        ([[1, 2], [3, 4]], ["a", "a"], ValueError),  # duplicate names
        ([[1, 2, 3], [3, 4, 5]], ["a", "b"], ValueError),  # not square
        ([[1, -2], [3, 4]], ["a", "b"], ValueError),  # negative count
        ([[1, 2], [3, 4]], "ab", TypeError),  # a string is not a list of names
    ],
    ids=["one-class", "duplicates", "not-square", "negative", "string-names"],
)
def test_bad_input_raises(cm, names, error):
    with pytest.raises(error):
        confusion_matrix_figure(cm, names)


def test_prediction_saver_writes_probabilities_and_class(tmp_path):
    saver = ClassificationPredictionSaver(str(tmp_path / "inference"), CLASSES)
    _run(saver, _batches(batch_size=3))
    with open(tmp_path / "inference" / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "prob_benign", "prob_malignant", "prob_normal", "pred_label", "pred_class"]
    assert len(rows) == 11
    for i, row in enumerate(rows[1:]):
        assert row[0] == f"/data/img_{i:02d}.png"
        expected = [0.1, 0.1, 0.1]
        expected[PRED[i]] = 0.8
        np.testing.assert_allclose([float(v) for v in row[1:4]], expected, atol=1e-6)
        assert (int(row[4]), row[5]) == (PRED[i], CLASSES[PRED[i]])


def test_prediction_saver_rejects_logits(tmp_path):
    saver = ClassificationPredictionSaver(str(tmp_path), CLASSES)
    item = {"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "x.png"}),
            "pred": torch.tensor([2.0, -1.0, 0.5])}
    with pytest.raises(ValueError, match="softmax"):
        _run(saver, [[item]])


def test_prediction_saver_needs_file_name(tmp_path):
    saver = ClassificationPredictionSaver(str(tmp_path), CLASSES)
    item = {"image": torch.zeros(1, 2, 2), "pred": _probs(0)}
    with pytest.raises(KeyError, match="filename_or_obj"):
        _run(saver, [[item]])
