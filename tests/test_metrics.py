"""Tests for usfm_monai.metrics (Tables 2-4): hand-worked values, empty-mask conventions, MONAI handler use."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler, MetricsSaver, from_engine

from usfm_monai.metrics import (
    ClassificationMetric,
    EnhancementMetric,
    SegmentationMetric,
    classification_metrics,
    compute_lncc,
    compute_nmi,
    compute_ssim,
    confusion_matrix,
    enhancement_metrics,
    segmentation_metrics,
    summarize,
)

# ------------------------------------------------------------------------------------------ segmentation


def _shifted_squares():
    # label: 2x2 square at rows 1-2, cols 1-2; pred: the same square one column to the right (6x6 image)
    label = np.zeros((6, 6), dtype=np.uint8)
    pred = np.zeros((6, 6), dtype=np.uint8)
    label[1:3, 1:3] = 1
    pred[1:3, 2:4] = 1
    return pred, label


def test_segmentation_hand_worked_squares():
    pred, label = _shifted_squares()
    # TP = 2, FP = 2, FN = 2, TN = 30: DSC = 4 / 8, IoU = 2 / 6, ACC = 32 / 36, SEN = 2 / 4.
    # Every pixel of a 2x2 square is an edge pixel; pred -> label distances are 0, 0, 1, 1 (and symmetric), so
    # both directed 95th percentiles (linear interpolation between the 3rd and 4th sorted values) are 1.
    result = segmentation_metrics(pred, label)
    assert result["dsc"] == pytest.approx(0.5)
    assert result["iou"] == pytest.approx(1 / 3)
    assert result["acc"] == pytest.approx(8 / 9)
    assert result["sen"] == pytest.approx(0.5)
    assert result["hd95"] == pytest.approx(1.0, abs=1e-5)


def test_hd95_is_a_percentile_not_the_maximum():
    # 1-pixel-wide lines (all edge pixels) in row 2: label cols 0-20 (21 px), pred cols 0-18 (19 px).
    # label -> pred distances: 19 zeros, then 1 and 2; the 95th percentile sits at sorted position
    # 0.95 * 20 = 19 -> 1. pred -> label: all 0. So HD95 = 1 while the Hausdorff distance would be 2.
    label = np.zeros((5, 24), dtype=bool)
    pred = np.zeros((5, 24), dtype=bool)
    label[2, 0:21] = True
    pred[2, 0:19] = True
    result = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(label))
    assert result["hd95"] == pytest.approx(1.0, abs=1e-5)
    # two single pixels at (0, 0) and (3, 4): a 3-4-5 triangle
    a, b = np.zeros((8, 8)), np.zeros((8, 8))
    a[0, 0], b[3, 4] = 1, 1
    assert segmentation_metrics(a, b)["hd95"] == pytest.approx(5.0, abs=1e-5)


@pytest.mark.parametrize(
    "pred_pixels, label_pixels, expected",
    [
        pytest.param(0, 0, dict(dsc=1.0, iou=1.0, sen=1.0, hd95=0.0, acc=1.0), id="both-empty"),
        pytest.param(1, 0, dict(dsc=0.0, iou=0.0, sen=1.0, hd95=math.nan, acc=15 / 16), id="label-empty"),
        pytest.param(0, 1, dict(dsc=0.0, iou=0.0, sen=0.0, hd95=math.nan, acc=15 / 16), id="pred-empty"),
    ],
)
def test_segmentation_empty_mask_conventions(pred_pixels, label_pixels, expected):
    pred, label = np.zeros((4, 4)), np.zeros((4, 4))
    pred[1, 1] = pred_pixels
    label[2, 2] = label_pixels
    result = segmentation_metrics(pred, label)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(value), key


def test_segmentation_metric_class_matches_functional_and_averages_images():
    pred_a, label_a = _shifted_squares()
    label_b = np.zeros((6, 6))
    label_b[4, 4] = 1
    pred_b = np.zeros((6, 6))  # HD95 undefined -> NaN, excluded from the mean
    pred_c, label_c = label_a.copy(), label_a.copy()  # perfect
    preds = torch.tensor(np.stack([pred_a, pred_b, pred_c])[:, None], dtype=torch.float32)
    labels = torch.tensor(np.stack([label_a, label_b, label_c])[:, None], dtype=torch.float32)
    pairs = [(pred_a, label_a), (pred_b, label_b), (pred_c, label_c)]
    for name in ("dsc", "hd95", "iou", "acc", "sen"):
        metric = SegmentationMetric(name, get_not_nans=True)
        metric(y_pred=preds[:2], y=labels[:2])  # two iterations
        metric(y_pred=preds[2:], y=labels[2:])
        expected = np.array([segmentation_metrics(p, lab)[name] for p, lab in pairs])
        np.testing.assert_allclose(metric.get_buffer()[:, 0].numpy(), expected, rtol=1e-6, equal_nan=True)
        value, not_nans = metric.aggregate()
        assert value.item() == pytest.approx(np.nanmean(expected), rel=1e-6), name
        assert not_nans.item() == np.count_nonzero(~np.isnan(expected))
    # hd95 by hand: images a and c give 1 and 0, b is excluded: mean 0.5 over 2 images
    assert summarize(np.array([1.0, np.nan, 0.0])) == (0.5, 0.5, 2)


def test_hd95_undefined_for_every_image_is_nan_not_the_best_score():
    """All-empty predictions (early training): HD95 is undefined, never 0.0, in aggregate and in the engine."""
    label = torch.zeros(2, 1, 6, 6)
    label[:, 0, 2:4, 2:4] = 1
    pred = torch.zeros_like(label)
    for reduction in ("mean", "mean_batch", "mean_channel"):
        metric = SegmentationMetric("hd95", reduction=reduction, get_not_nans=True)
        metric(y_pred=pred, y=label)
        value, not_nans = metric.aggregate()
        assert torch.isnan(value).all() and (not_nans == 0).all(), reduction
    engine = Engine(lambda e, b: {"pred": pred, "label": label})
    IgniteMetricHandler(metric_fn=SegmentationMetric("hd95"), output_transform=from_engine(["pred", "label"])).attach(
        engine, "hd95"
    )
    IgniteMetricHandler(metric_fn=SegmentationMetric("dsc"), output_transform=from_engine(["pred", "label"])).attach(
        engine, "dsc"
    )
    engine.run([0], max_epochs=1)
    assert math.isnan(engine.state.metrics["hd95"]) and engine.state.metrics["dsc"] == 0.0


def test_segmentation_metric_multiclass_label_map_and_onehot():
    # 3 classes: per image, the mean over the foreground classes 1 and 2
    label = torch.zeros(1, 1, 6, 6)
    label[0, 0, 1:3, 1:3] = 1
    label[0, 0, 4:6, 0:6] = 2
    pred = label.clone()
    pred[0, 0, 1:3, 3] = 1  # two false-positive class-1 pixels: class 1 DSC = 8 / 10, class 2 DSC = 1
    onehot_pred = torch.nn.functional.one_hot(pred[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    for y_pred in (pred, onehot_pred):
        metric = SegmentationMetric("dsc", num_classes=3)
        metric(y_pred=y_pred, y=label)
        torch.testing.assert_close(metric.get_buffer(), torch.tensor([[0.8, 1.0]]))
        assert metric.aggregate().item() == pytest.approx(0.9)
    with_bg = SegmentationMetric("dsc", num_classes=3, include_background=True)
    with_bg(y_pred=pred, y=label)
    # background: 36 - 4 - 12 = 20 label pixels, 36 - 6 - 12 = 18 predicted, all correct -> 2 * 18 / 38
    torch.testing.assert_close(with_bg.get_buffer(), torch.tensor([[36 / 38, 0.8, 1.0]]))


def test_segmentation_metric_with_ignite_handler_and_metrics_saver(tmp_path):
    pred_a, label_a = _shifted_squares()
    batch = {
        "pred": torch.tensor(np.stack([pred_a, label_a])[:, None], dtype=torch.float32),
        "label": torch.tensor(np.stack([label_a, label_a])[:, None], dtype=torch.float32),
        "meta": {"filename_or_obj": ["a.png", "b.png"]},
    }
    engine = Engine(lambda engine, batch: batch)
    IgniteMetricHandler(
        metric_fn=SegmentationMetric("dsc"), output_transform=from_engine(["pred", "label"]), save_details=True
    ).attach(engine, "dsc")
    MetricsSaver(save_dir=str(tmp_path), metric_details="*", batch_transform=lambda b: b["meta"]).attach(engine)
    engine.run([batch], max_epochs=1)
    assert engine.state.metrics["dsc"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    with open(tmp_path / "dsc_raw.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "class0", "mean"]
    assert rows[1][0] == "a.png" and float(rows[1][1]) == pytest.approx(0.5)
    assert rows[2][0] == "b.png" and float(rows[2][1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        pytest.param(lambda: segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5))), ValueError, "same shape",
                     id="shape"),
        pytest.param(lambda: segmentation_metrics(np.full((4, 4), 0.5), np.zeros((4, 4))), ValueError, "binary",
                     id="not-binary"),
        pytest.param(lambda: segmentation_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))), ValueError, r"\(H, W\)",
                     id="not-2d"),
        pytest.param(lambda: SegmentationMetric("hd100"), ValueError, "metric_name", id="name"),
        pytest.param(lambda: SegmentationMetric()(torch.rand(1, 2, 4, 4), torch.zeros(1, 1, 4, 4)), ValueError,
                     "binarized", id="probabilities"),
        pytest.param(lambda: SegmentationMetric()(torch.full((1, 1, 4, 4), 2.0), torch.zeros(1, 1, 4, 4)),
                     ValueError, "num_classes", id="label-map-range"),
    ],
)
def test_segmentation_invalid(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------- classification
# rows = true class, columns = predicted class
HAND_CM = np.array([[3, 1, 0], [1, 2, 1], [0, 0, 2]])


def _labels_from_confusion(cm):
    y_true, y_pred = [], []
    for i, j in np.ndindex(cm.shape):
        y_true += [i] * cm[i, j]
        y_pred += [j] * cm[i, j]
    return np.array(y_true), np.array(y_pred)


def test_classification_hand_worked_three_classes():
    y_true, y_pred = _labels_from_confusion(HAND_CM)
    result = classification_metrics(y_true, y_pred, num_classes=3)
    np.testing.assert_array_equal(result["confusion_matrix"], HAND_CM)
    # s = 10, correct c = 7; true counts t = (4, 4, 2), predicted counts p = (4, 3, 3)
    assert result["acc"] == pytest.approx(0.7)
    assert result["recall"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 2) / 3)  # 0.75
    assert result["prec"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)  # 0.69444
    # per-class F1 = 2PR / (P + R): 0.75, 4/7, 0.8
    assert result["f1"] == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    # Gorodkin R_K = (c s - sum p t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (70 - 34) / sqrt(66 * 64)
    assert result["mcc"] == pytest.approx(36 / math.sqrt(66 * 64))  # 0.55391


def test_classification_zero_division_and_absent_classes():
    # class 0 always predicted; class 3 never appears and is left out of the macro averages
    result = classification_metrics([0, 1, 2], [0, 0, 0], num_classes=4)
    assert result["prec"] == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert result["recall"] == pytest.approx((1 + 0 + 0) / 3)
    assert result["f1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert result["mcc"] == 0.0  # a single predicted class: R_K undefined, 0 by convention
    perfect = classification_metrics([0, 1, 1, 2], [0, 1, 1, 2], num_classes=3)
    assert perfect["mcc"] == pytest.approx(1.0) and perfect["f1"] == pytest.approx(1.0)


def test_classification_metric_class_with_probabilities_and_onehot_labels():
    y_true, y_pred = _labels_from_confusion(HAND_CM)
    g = torch.Generator().manual_seed(0)
    # probabilities whose argmax is y_pred
    probs = torch.rand(10, 3, generator=g) * 0.5
    probs[torch.arange(10), torch.as_tensor(y_pred)] = 0.9
    onehot_true = torch.nn.functional.one_hot(torch.as_tensor(y_true), 3).float()
    expected = classification_metrics(y_true, y_pred, 3)
    for name in ("acc", "recall", "prec", "f1", "mcc"):
        metric = ClassificationMetric(name, num_classes=3)
        metric(y_pred=probs[:6], y=onehot_true[:6])
        metric(y_pred=probs[6:], y=torch.as_tensor(y_true[6:])[:, None])  # (B, 1) indices
        assert metric.aggregate().item() == pytest.approx(expected[name], rel=1e-6), name
    np.testing.assert_array_equal(metric.confusion_matrix(), HAND_CM)


def test_classification_invalid():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], num_classes=3)
    with pytest.raises(ValueError, match="metric_name"):
        ClassificationMetric("auc", num_classes=3)
    with pytest.raises(ValueError, match="one-hot"):
        ClassificationMetric("acc", num_classes=3)(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="no values"):
        ClassificationMetric("acc", num_classes=3).aggregate()


# ------------------------------------------------------------------------------------------- enhancement
def _image(seed=0, shape=(32, 40)):
    return np.random.default_rng(seed).random(shape)


def test_ssim_identity_and_hand_worked_constants():
    image = _image()
    assert compute_ssim(image, image) == pytest.approx(1.0)
    # constant images: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with C1 = (0.01 * 1)^2
    x, y = np.full((16, 16), 0.2), np.full((16, 16), 0.6)
    assert compute_ssim(x, y) == pytest.approx((2 * 0.12 + 1e-4) / (0.04 + 0.36 + 1e-4), rel=1e-9)


def test_lncc_affine_copies_and_naive_oracle():
    image = _image(1)
    assert compute_lncc(2.5 * image + 0.3, image) == pytest.approx(1.0, abs=1e-9)
    assert compute_lncc(-image, image) == pytest.approx(-1.0, abs=1e-9)
    # naive oracle: Pearson correlation (np.corrcoef) of every fully inside 7x7 window, averaged
    a, b = _image(2, (10, 12)), _image(3, (10, 12))
    expected = np.mean(
        [np.corrcoef(a[i:i + 7, j:j + 7].ravel(), b[i:i + 7, j:j + 7].ravel())[0, 1]
         for i in range(10 - 6) for j in range(12 - 6)]
    )
    assert compute_lncc(a, b) == pytest.approx(expected, rel=1e-9)


def test_lncc_flat_window_convention():
    # identical images with a black background: flat windows in both images count as 1
    image = np.zeros((20, 20))
    image[10:, :] = _image(4, (10, 20))
    assert compute_lncc(image, image) == pytest.approx(1.0)
    # a constant prediction against a textured target: every window has one flat side -> 0
    assert compute_lncc(np.full((12, 12), 0.5), _image(5, (12, 12))) == 0.0


def test_nmi_identity_and_independent_noise():
    image = _image(6)
    assert compute_nmi(image, image) == pytest.approx(2.0)
    a, b = _image(7, (128, 128)), _image(8, (128, 128))
    # independent images: MI = 0, so NMI = 1 up to the plug-in bias (B - 1)^2 / (2 N) nats of the histogram MI,
    # here 225 / 32768 = 0.007 nats over H(A, B) ~ 2 ln 16 = 5.5 nats, i.e. ~ 0.0013
    assert compute_nmi(a, b, bins=16) == pytest.approx(1.0, abs=0.005)


def test_enhancement_metric_class_matches_functional():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 16, 16, generator=g)
    pred = (target + 0.2 * torch.rand(3, 1, 16, 16, generator=g)).clamp(0, 1)
    for name in ("ssim", "lncc", "nmi"):
        metric = EnhancementMetric(name)
        metric(y_pred=pred[:2], y=target[:2])
        metric(y_pred=[pred[2]], y=[target[2]])  # a decollated list works as well
        expected = [enhancement_metrics(pred[i, 0], target[i, 0])[name] for i in range(3)]
        np.testing.assert_allclose(metric.get_buffer()[:, 0].numpy(), expected, rtol=1e-6)
        assert metric.aggregate().item() == pytest.approx(np.mean(expected), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        EnhancementMetric("ssim")(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="win_size"):
        compute_ssim(np.zeros((5, 5)), np.zeros((5, 5)))


def test_summarize_two_dimensional_and_all_nan():
    values = np.array([[1.0, 3.0], [np.nan, 4.0], [np.nan, np.nan]])
    # per-image class means 2 and 4, third image excluded
    assert summarize(values) == (3.0, 1.0, 2)
    mean, std, n = summarize([np.nan])
    assert math.isnan(mean) and math.isnan(std) and n == 0


@pytest.mark.parametrize("num_classes", [2, 3])
def test_monai_dice_without_ignore_empty_follows_our_empty_mask_table(num_classes):
    """The seg bundle scores DSC with MONAI's DiceMetric(ignore_empty=False): it must agree with
    segmentation_metrics on every case of the empty-mask table, label maps of 2 and 3 classes included."""
    from monai.metrics import DiceMetric

    generator = torch.Generator().manual_seed(num_classes)
    pred = torch.randint(0, num_classes, (6, 1, 8, 8), generator=generator)
    label = torch.randint(0, num_classes, (6, 1, 8, 8), generator=generator)
    label[0] = 0  # label empty, prediction not
    pred[1] = 0  # prediction empty, label not
    pred[2], label[2] = 0, 0  # both empty
    monai_dice = DiceMetric(include_background=False, num_classes=num_classes, ignore_empty=False)
    monai_dice(y_pred=pred, y=label)
    expected = torch.tensor([
        [segmentation_metrics(pred[b, 0] == c, label[b, 0] == c)["dsc"] for c in range(1, num_classes)]
        for b in range(6)
    ])
    torch.testing.assert_close(monai_dice.get_buffer().float(), expected.float())
    assert expected[0].tolist() == [0.0] * (num_classes - 1) and expected[2].tolist() == [1.0] * (num_classes - 1)


def test_seg_bundle_scores_dice_with_monai():
    import json
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "seg_tn3k",
                        "configs", "train.json")
    with open(path) as f:
        metric = json.load(f)["validate"]["key_metric"]["dsc"]["metric_fn"]
    assert metric["_target_"] == "DiceMetric" and metric["ignore_empty"] is False
