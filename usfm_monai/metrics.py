"""Evaluation metrics of the USFM downstream tasks (Jiao et al., arXiv 2401.00153, §4.1, Tables 2-4).

Thin, documented wrappers over MONAI and scikit-image, each as a functional form for one image (or one label
vector) and as a MONAI ``CumulativeIterationMetric`` that plugs into
``monai.handlers.IgniteMetricHandler(metric_fn=..., output_transform=from_engine(["pred", "label"]),
save_details=True)``, so that ``MetricsSaver`` writes one CSV row per image.

* **Segmentation (Table 2)**, per image and foreground class: DSC, HD95 (pixels), IoU, ACC (pixel accuracy),
  SEN (recall). Empty-mask conventions, for a binary class mask:

  ===================  =====  =====  =====  ==========  ======
  label / prediction   DSC    IoU    SEN    HD95        ACC
  ===================  =====  =====  =====  ==========  ======
  both empty           1      1      1      0           (formula, = 1)
  label empty only     0      0      1 *    NaN         (formula)
  prediction empty     0      0      0      NaN         (formula)
  ===================  =====  =====  =====  ==========  ======

  \\* sensitivity ``TP / (TP + FN)`` is ``0 / 0`` without foreground in the label; no positive pixel was missed,
  so it is 1, the same reasoning as the both-empty case. HD95 is undefined when exactly one mask is empty: it is
  reported as NaN and **excluded** from means; :func:`summarize` and the ``not_nans`` output of ``aggregate``
  count the images that remain.
* **Classification (Table 3)**: ACC, macro Recall, macro PREC, macro F1 and the multi-class MCC (Gorodkin's
  ``R_K``), from the confusion matrix. Macro averages run over the classes present in the labels or the
  predictions (scikit-learn's default ``labels``); a class never predicted has precision 0 and a class absent
  from the labels has recall 0 (scikit-learn's ``zero_division=0``); F1 is averaged per class.
* **Enhancement (Table 4)**, per image: SSIM (scikit-image, 7x7 uniform window, ``K1=0.01``, ``K2=0.03``,
  sample covariance), signed LNCC (7x7 rectangular windows, see :func:`compute_lncc`) and NMI
  ``(H(A) + H(B)) / H(A, B)`` (scikit-image, 100 bins), whose range is ``[1, 2]``.

Values are fractions (multiply by 100 for the paper's percentages); HD95 is in pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.metrics.hausdorff_distance import compute_hausdorff_distance
from monai.metrics.utils import do_metric_reduction
from monai.networks.utils import one_hot
from monai.utils import MetricReduction
from skimage.metrics import normalized_mutual_information, structural_similarity

__all__ = [
    "SEGMENTATION_METRICS",
    "CLASSIFICATION_METRICS",
    "ENHANCEMENT_METRICS",
    "Summary",
    "summarize",
    "segmentation_metrics",
    "SegmentationMetric",
    "confusion_matrix",
    "classification_metrics",
    "ClassificationMetric",
    "compute_ssim",
    "compute_lncc",
    "compute_nmi",
    "enhancement_metrics",
    "EnhancementMetric",
]

SEGMENTATION_METRICS = ("dsc", "hd95", "iou", "acc", "sen")
CLASSIFICATION_METRICS = ("acc", "recall", "prec", "f1", "mcc")
ENHANCEMENT_METRICS = ("ssim", "lncc", "nmi")


def _check_name(metric_name: str, options: Sequence[str]) -> str:
    name = str(metric_name).lower()
    if name not in options:
        raise ValueError(f"metric_name must be one of {list(options)}, got {metric_name!r}.")
    return name


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (np.ndarray, list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}.")


def _aggregate(metric: CumulativeIterationMetric, reduction: MetricReduction | str, get_not_nans: bool):
    data = metric.get_buffer()
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{type(metric).__name__} has no values to aggregate; call it on a batch first.")
    f, not_nans = do_metric_reduction(data, reduction)
    # MONAI's reduction returns 0 where every value was NaN (e.g. HD95 when every prediction is empty early in
    # training): for HD95 that is the best possible score. Undefined stays NaN, so logs show nan and best-model
    # selection (NaN never compares greater) is not fooled.
    f = torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))
    return (f, not_nans) if get_not_nans else f


class Summary(NamedTuple):
    """Mean, standard deviation and count of the values that entered them (NaN excluded)."""

    mean: float
    std: float
    n: int


def summarize(values: Any) -> Summary:
    """Mean ± std over images, as reported in Tables 2-4, skipping NaN (e.g. an undefined HD95).

    Args:
        values: per-image values, shape ``(N,)``, or ``(N, C)`` per image and class, in which case each image is
            first averaged over its non-NaN classes (as ``MetricsSaver`` does for its summary).

    Returns:
        ``Summary(mean, std, n)``: ``std`` is the population standard deviation (``ddof=0``, like
        ``numpy.nanstd`` in ``MetricsSaver``); ``n`` counts the images that are not NaN, so ``N - n`` images were
        excluded. With ``n == 0``, mean and std are NaN.

    Raises:
        ValueError: when ``values`` is not 1-D or 2-D.
    """
    arr = _to_numpy(values, "values").astype(np.float64)
    if arr.ndim == 2:
        valid = ~np.isnan(arr)
        counts = valid.sum(axis=1)
        sums = np.where(valid, arr, 0.0).sum(axis=1)
        arr = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    elif arr.ndim != 1:
        raise ValueError(f"values must have shape (N,) or (N, C), got {arr.shape}.")
    kept = arr[~np.isnan(arr)]
    if kept.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(kept.mean()), float(kept.std()), int(kept.size))


# --------------------------------------------------------------------------------------------- segmentation
def _binary_mask(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a binary mask of shape (H, W), got shape {arr.shape}.")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be binary (values 0 and 1), got values {np.unique(arr)[:8].tolist()}.")
        arr = arr.astype(bool)
    return arr


def _hd95(pred: np.ndarray, label: np.ndarray) -> float:
    pred_any, label_any = bool(pred.any()), bool(label.any())
    if not pred_any and not label_any:
        return 0.0
    if pred_any != label_any:
        return float("nan")
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument internally; the warning is not actionable here
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(label)[None, None], include_background=True,
            percentile=95,
        )
    return float(hd.item())


def _segmentation_value(metric_name: str, pred: np.ndarray, label: np.ndarray) -> float:
    if metric_name == "hd95":
        return _hd95(pred, label)
    tp = float(np.count_nonzero(pred & label))
    fp = float(np.count_nonzero(pred & ~label))
    fn = float(np.count_nonzero(~pred & label))
    if metric_name == "acc":
        return 1.0 - (fp + fn) / pred.size
    if metric_name == "sen":
        return tp / (tp + fn) if tp + fn > 0 else 1.0
    if tp + fp + fn == 0:  # both empty
        return 1.0
    if metric_name == "dsc":
        return 2.0 * tp / (2.0 * tp + fp + fn)
    return tp / (tp + fp + fn)  # iou


def segmentation_metrics(pred: Any, label: Any) -> dict[str, float]:
    """DSC, HD95, IoU, ACC and SEN of one binary foreground mask (Table 2).

    With ``TP, FP, FN, TN`` the pixel counts: ``DSC = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``,
    ``ACC = (TP + TN) / (H W)``, ``SEN = TP / (TP + FN)``; ``HD95`` is MONAI's
    ``compute_hausdorff_distance(percentile=95)``: the larger of the two directed 95th percentiles of the
    Euclidean distances between the mask edges, in pixels. Empty masks follow the module's table.

    Args:
        pred: predicted mask, shape ``(H, W)``, bool or numbers in ``{0, 1}``, numpy or torch.
        label: ground-truth mask, same shape.

    Returns:
        ``{"dsc", "hd95", "iou", "acc", "sen"}`` as floats; all but HD95 in ``[0, 1]``; HD95 ``>= 0`` or NaN.

    Raises:
        ValueError: when a mask is not 2-D or not binary, or the shapes differ.
    """
    p, lab = _binary_mask(pred, "pred"), _binary_mask(label, "label")
    if p.shape != lab.shape:
        raise ValueError(f"pred and label must have the same shape (H, W), got {p.shape} and {lab.shape}.")
    return {name: _segmentation_value(name, p, lab) for name in SEGMENTATION_METRICS}


def _to_onehot(x: torch.Tensor, name: str, num_classes: int | None) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape (B, C, H, W) (one-hot) or (B, 1, H, W) (label map), got {tuple(x.shape)}."
        )
    if x.shape[1] == 1:
        classes = 2 if num_classes is None else num_classes
        if not torch.all((x >= 0) & (x < classes) & (x == torch.round(x))):
            raise ValueError(
                f"{name} is a label map (B, 1, H, W) and must hold integer class indices in [0, {classes}), "
                f"got values {torch.unique(x)[:8].tolist()}; pass num_classes for more than 2 classes."
            )
        return one_hot(x.long(), num_classes=classes, dim=1).bool()
    if num_classes is not None and x.shape[1] != num_classes:
        raise ValueError(f"{name} has {x.shape[1]} channels but num_classes={num_classes}.")
    if not torch.all((x == 0) | (x == 1)):
        raise ValueError(
            f"{name} must be binarized one-hot (values 0 and 1), e.g. after AsDiscrete(argmax=True, "
            f"to_onehot={x.shape[1]}); got values {torch.unique(x)[:8].tolist()}."
        )
    return x.bool()


class SegmentationMetric(CumulativeIterationMetric):
    """One Table 2 segmentation metric per image and foreground class, accumulated over batches.

    The bundles score DSC with MONAI's ``DiceMetric(ignore_empty=False)``, which follows the module's empty-mask
    table (a test checks they agree); the other four are here because MONAI's differ: ``HausdorffDistanceMetric``
    gives NaN/inf, not 0, when both masks are empty, ``ConfusionMatrixMetric`` gives NaN sensitivity for an empty
    label, and ``MeanIoU`` needs one-hot inputs where the bundles pass label maps.

    Each call appends a ``(B, C')`` tensor (``C'`` classes after dropping the background) to the buffer, so
    ``IgniteMetricHandler(save_details=True)`` hands ``MetricsSaver`` one row per image with one column per class.
    ``aggregate()`` averages each image over its non-NaN classes, then the images with a value (MONAI's
    ``"mean"`` reduction): the multi-class score of the paper is the mean over foreground classes.

    Args:
        metric_name: one of ``"dsc"``, ``"hd95"``, ``"iou"``, ``"acc"``, ``"sen"``.
        num_classes: number of classes including the background; needed for label maps with more than two
            classes, checked against one-hot inputs. ``None``: label maps are binary, one-hot inputs define it.
        include_background: also score channel 0.
        reduction: MONAI ``MetricReduction`` used by ``aggregate``.
        get_not_nans: ``aggregate`` also returns the number of values that were not NaN.

    Raises:
        ValueError: for an unknown ``metric_name`` or ``num_classes < 2``.
    """

    def __init__(
        self,
        metric_name: str = "dsc",
        num_classes: int | None = None,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric_name = _check_name(metric_name, SEGMENTATION_METRICS)
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and foreground), got {num_classes}.")
        self.num_classes = num_classes
        self.include_background = include_background
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Score a batch.

        Args:
            y_pred: binarized one-hot prediction ``(B, C, H, W)`` or label map ``(B, 1, H, W)``.
            y: ground truth in either form, same ``B``, ``H``, ``W``.

        Returns:
            float32 ``(B, C')`` on ``y_pred``'s device, NaN where HD95 is undefined.

        Raises:
            ValueError: for a missing ``y``, malformed inputs or differing shapes.
        """
        if y is None:
            raise ValueError("SegmentationMetric needs the ground truth y.")
        num_classes = self.num_classes
        if num_classes is None:  # a one-hot input defines the classes of a label map next to it
            channels = [x.shape[1] for x in (y_pred, y) if x.ndim == 4 and x.shape[1] > 1]
            num_classes = channels[0] if channels else None
        pred = _to_onehot(y_pred, "y_pred", num_classes)
        label = _to_onehot(y, "y", num_classes)
        if pred.shape != label.shape:
            raise ValueError(
                f"y_pred and y must describe the same classes and size, got one-hot shapes {tuple(pred.shape)} "
                f"and {tuple(label.shape)}; set num_classes when one of them is a label map."
            )
        first = 0 if self.include_background else 1
        pred_np, label_np = pred.cpu().numpy(), label.cpu().numpy()
        out = torch.empty((pred.shape[0], pred.shape[1] - first), dtype=torch.float32)
        for b in range(pred.shape[0]):
            for c in range(first, pred.shape[1]):
                out[b, c - first] = _segmentation_value(self.metric_name, pred_np[b, c], label_np[b, c])
        return out.to(y_pred.device)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the buffer; default: mean over images of the per-image mean over classes, NaN excluded.

        Returns:
            the reduced tensor, and the count of non-NaN entries when ``get_not_nans=True``.

        Raises:
            ValueError: when nothing was accumulated.
        """
        return _aggregate(self, self.reduction if reduction is None else reduction, self.get_not_nans)


# ------------------------------------------------------------------------------------------- classification
def _class_indices(x: Any, name: str, num_classes: int) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must hold class indices of shape (N,), got shape {arr.shape}.")
    if arr.size and (not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must hold integer class indices in [0, {num_classes}), got {np.unique(arr)[:8]}.")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix ``M[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Args:
        y_true: true class indices, shape ``(N,)`` or ``(N, 1)``, integers in ``[0, num_classes)``.
        y_pred: predicted class indices, same shape.
        num_classes: number of classes ``K >= 2``.

    Returns:
        int64 array ``(K, K)``, rows true class, columns predicted class.

    Raises:
        ValueError: for ``num_classes < 2``, non-index values or differing lengths.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    t = _class_indices(y_true, "y_true", num_classes)
    p = _class_indices(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}.")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _from_confusion(cm: np.ndarray) -> dict[str, float]:
    cm = cm.astype(np.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: no samples were scored.")
    tp = np.diag(cm)
    true_count = cm.sum(axis=1)  # t_k
    pred_count = cm.sum(axis=0)  # p_k
    present = (true_count + pred_count) > 0
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros_like(tp), where=true_count > 0)
    pr_sum = precision + recall
    f1 = np.divide(2 * precision * recall, pr_sum, out=np.zeros_like(tp), where=pr_sum > 0)
    # Gorodkin (2004) R_K: (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)), 0 if undefined
    numerator = tp.sum() * total - np.dot(pred_count, true_count)
    denominator = np.sqrt((total**2 - np.dot(pred_count, pred_count)) * (total**2 - np.dot(true_count, true_count)))
    return {
        "acc": float(tp.sum() / total),
        "recall": float(recall[present].mean()),
        "prec": float(precision[present].mean()),
        "f1": float(f1[present].mean()),
        "mcc": float(numerator / denominator) if denominator > 0 else 0.0,
    }


def classification_metrics(y_true: Any, y_pred: Any, num_classes: int) -> dict[str, Any]:
    """ACC, macro Recall/PREC/F1, multi-class MCC and the confusion matrix (Table 3).

    Args:
        y_true: true class indices, shape ``(N,)`` or ``(N, 1)``.
        y_pred: predicted class indices, same shape.
        num_classes: number of classes ``K >= 2``.

    Returns:
        ``{"acc", "recall", "prec", "f1", "mcc"}`` as floats (MCC in ``[-1, 1]``, the others in ``[0, 1]``) and
        ``"confusion_matrix"``, an int64 ``(K, K)`` array. Macro averages use the classes present in either input,
        with ``zero_division=0``; MCC is 0 when undefined (a single class predicted or present).

    Raises:
        ValueError: see :func:`confusion_matrix`, or when there are no samples.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return {**_from_confusion(cm), "confusion_matrix": cm}


def _batch_indices(x: torch.Tensor, name: str, num_classes: int, one_hot_only: bool) -> torch.Tensor:
    if x.ndim == 0:
        x = x[None]
    if x.ndim == 2 and x.shape[1] == num_classes:
        if one_hot_only and not torch.all(((x == 0) | (x == 1)) & (x.sum(dim=1, keepdim=True) == 1)):
            raise ValueError(f"{name} of shape (B, {num_classes}) must be one-hot (a single 1 per row).")
        return x.argmax(dim=1)
    if x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1):
        return x.reshape(-1)
    raise ValueError(
        f"{name} must have shape (B, {num_classes}) or hold class indices of shape (B,) / (B, 1), "
        f"got {tuple(x.shape)}."
    )


class ClassificationMetric(CumulativeIterationMetric):
    """One Table 3 classification metric over all accumulated samples.

    Each call appends one ``(B, 2)`` row per sample, ``[true class, predicted class]``; ``aggregate()`` builds the
    confusion matrix of everything seen so far (across ranks) and returns the metric, as in
    :func:`classification_metrics`. With ``save_details=True``, ``MetricsSaver`` therefore writes the true and
    predicted class of every image.

    Args:
        metric_name: one of ``"acc"``, ``"recall"``, ``"prec"``, ``"f1"``, ``"mcc"``.
        num_classes: number of classes ``K >= 2``.

    Raises:
        ValueError: for an unknown ``metric_name`` or ``num_classes < 2``.
    """

    def __init__(self, metric_name: str = "acc", num_classes: int = 2) -> None:
        super().__init__()
        self.metric_name = _check_name(metric_name, CLASSIFICATION_METRICS)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Record a batch.

        Args:
            y_pred: class probabilities, logits or one-hot ``(B, K)`` (argmax is taken), or indices ``(B,)`` /
                ``(B, 1)``.
            y: labels, one-hot ``(B, K)`` or indices ``(B,)`` / ``(B, 1)``.

        Returns:
            float32 ``(B, 2)``: true and predicted class index of every sample.

        Raises:
            ValueError: for a missing ``y`` or malformed inputs.
        """
        if y is None:
            raise ValueError("ClassificationMetric needs the ground truth y.")
        pred = _batch_indices(y_pred, "y_pred", self.num_classes, one_hot_only=False)
        label = _batch_indices(y, "y", self.num_classes, one_hot_only=True)
        if pred.shape != label.shape:
            raise ValueError(
                f"y_pred and y must hold the same number of samples, got {pred.numel()} and {label.numel()}."
            )
        return torch.stack([label.float(), pred.float().to(label.device)], dim=1)

    def confusion_matrix(self) -> np.ndarray:
        """Confusion matrix ``(K, K)`` (rows true, columns predicted) of the accumulated samples.

        Raises:
            ValueError: when nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ClassificationMetric has no values to aggregate; call it on a batch first.")
        data = data.cpu().numpy()
        return confusion_matrix(data[:, 0], data[:, 1], self.num_classes)

    def aggregate(self) -> torch.Tensor:
        """The metric over all accumulated samples, a scalar float32 tensor.

        Raises:
            ValueError: when nothing was accumulated.
        """
        return torch.tensor(_from_confusion(self.confusion_matrix())[self.metric_name], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- enhancement
def _image_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(pred, "pred").astype(np.float64)
    t = _to_numpy(target, "target").astype(np.float64)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"pred and target must be 2-D images of the same shape (H, W), got {p.shape} and {t.shape}.")
    return p, t


def compute_ssim(pred: Any, target: Any, data_range: float = 1.0, win_size: int = 7) -> float:
    """Structural similarity of two grayscale images (scikit-image ``structural_similarity``).

    Uniform ``win_size x win_size`` window, ``K1 = 0.01``, ``K2 = 0.03``, sample covariance, mean over the
    windows that fit inside the image.

    Args:
        pred: enhanced image, shape ``(H, W)``, values in ``[0, data_range]``.
        target: reference high-quality image, same shape.
        data_range: intensity range of the images (1.0 for our ``[0, 1]`` convention).
        win_size: odd window side, ``<= min(H, W)``.

    Returns:
        SSIM in ``[-1, 1]``; 1 for identical images.

    Raises:
        ValueError: for differing or non-2-D shapes, or an image smaller than the window.
    """
    p, t = _image_pair(pred, target)
    if min(p.shape) < win_size:
        raise ValueError(f"images must be at least win_size={win_size} pixels per side, got {p.shape}.")
    return float(structural_similarity(p, t, data_range=data_range, win_size=win_size, gaussian_weights=False))


def compute_lncc(pred: Any, target: Any, kernel_size: int = 7, eps: float = 1e-10) -> float:
    """Signed local normalized cross-correlation, the mean Pearson correlation over sliding windows.

    For every ``kernel_size x kernel_size`` window that lies fully inside the image (no padding, so borders
    carry no artificial zeros), ``cov(p, t) / sqrt(var(p) var(t))``; the result is the mean over windows.
    Unlike MONAI's ``LocalNormalizedCrossCorrelationLoss`` (which returns the negated *squared* correlation
    and zero-pads), the sign is kept, so an inverted image scores -1. A window whose variance is below
    ``eps`` (after each image is standardized by its global mean and std) is flat: two flat windows score 1
    (they differ by an offset, to which the correlation is invariant) and one flat window scores 0 (no linear
    relation can be measured), so identical images with a black background still score 1.

    Args:
        pred: enhanced image, shape ``(H, W)``, any range.
        target: reference image, same shape.
        kernel_size: odd window side, ``<= min(H, W)``.
        eps: flatness threshold on the standardized window variance.

    Returns:
        LNCC in ``[-1, 1]``; 1 for ``pred = a * target + b`` with ``a > 0``, -1 with ``a < 0``.

    Raises:
        ValueError: for differing or non-2-D shapes, an even ``kernel_size`` or one larger than the image.
    """
    p, t = _image_pair(pred, target)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}.")
    if min(p.shape) < kernel_size:
        raise ValueError(f"images must be at least kernel_size={kernel_size} pixels per side, got {p.shape}.")

    def standardized(x: np.ndarray) -> torch.Tensor:
        # global standardization makes eps scale-free and keeps E[x^2] - E[x]^2 free of cancellation
        std = x.std()
        return torch.from_numpy((x - x.mean()) / (std if std > 0 else 1.0))[None, None]  # 1, 1, H, W

    x, y = standardized(p), standardized(t)

    def local_mean(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, kernel_size, stride=1)  # 1, 1, H - k + 1, W - k + 1

    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(y * y) - my * my
    cov = local_mean(x * y) - mx * my
    flat_x, flat_y = vx <= eps, vy <= eps
    cc = cov / torch.sqrt(vx.clamp_min(eps) * vy.clamp_min(eps))
    cc = torch.where(flat_x | flat_y, (flat_x & flat_y).to(cc.dtype), cc.clamp(-1.0, 1.0))
    return float(cc.mean())


def compute_nmi(pred: Any, target: Any, bins: int = 100) -> float:
    """Normalized mutual information ``(H(A) + H(B)) / H(A, B)`` (scikit-image, Studholme et al. 1998).

    Entropies come from a ``bins x bins`` joint histogram spanning each image's own min-max range.

    Args:
        pred: enhanced image, shape ``(H, W)``.
        target: reference image, same shape.
        bins: histogram bins per image.

    Returns:
        NMI in ``[1, 2]``: 2 for images related by a one-to-one intensity map, near 1 for independent images
        (finite-sample histograms bias it slightly above 1).

    Raises:
        ValueError: for differing or non-2-D shapes.
    """
    p, t = _image_pair(pred, target)
    return float(normalized_mutual_information(p, t, bins=bins))


def enhancement_metrics(pred: Any, target: Any, data_range: float = 1.0) -> dict[str, float]:
    """SSIM, LNCC and NMI of one enhanced image against its reference (Table 4), with the default settings.

    Args:
        pred: enhanced image, shape ``(H, W)``, values in ``[0, data_range]``.
        target: reference high-quality image, same shape.
        data_range: intensity range, used by SSIM.

    Returns:
        ``{"ssim", "lncc", "nmi"}`` as floats.

    Raises:
        ValueError: see :func:`compute_ssim`.
    """
    return {
        "ssim": compute_ssim(pred, target, data_range=data_range),
        "lncc": compute_lncc(pred, target),
        "nmi": compute_nmi(pred, target),
    }


class EnhancementMetric(CumulativeIterationMetric):
    """One Table 4 enhancement metric per image and channel, accumulated over batches.

    Each call appends a ``(B, C)`` tensor; ``aggregate()`` averages over channels, then images (MONAI ``"mean"``).

    Args:
        metric_name: one of ``"ssim"``, ``"lncc"``, ``"nmi"``.
        data_range: intensity range for SSIM.
        win_size: SSIM window and LNCC kernel side (odd).
        bins: NMI histogram bins.
        reduction: MONAI ``MetricReduction`` used by ``aggregate``.
        get_not_nans: ``aggregate`` also returns the number of values that were not NaN.

    Raises:
        ValueError: for an unknown ``metric_name``.
    """

    def __init__(
        self,
        metric_name: str = "ssim",
        data_range: float = 1.0,
        win_size: int = 7,
        bins: int = 100,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric_name = _check_name(metric_name, ENHANCEMENT_METRICS)
        self.data_range = data_range
        self.win_size = win_size
        self.bins = bins
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _one(self, pred: np.ndarray, target: np.ndarray) -> float:
        if self.metric_name == "ssim":
            return compute_ssim(pred, target, data_range=self.data_range, win_size=self.win_size)
        if self.metric_name == "lncc":
            return compute_lncc(pred, target, kernel_size=self.win_size)
        return compute_nmi(pred, target, bins=self.bins)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Score a batch.

        Args:
            y_pred: enhanced images ``(B, C, H, W)``, values in ``[0, data_range]``.
            y: reference images, same shape.

        Returns:
            float32 ``(B, C)`` on ``y_pred``'s device.

        Raises:
            ValueError: for a missing ``y`` or differing / non-4-D shapes.
        """
        if y is None:
            raise ValueError("EnhancementMetric needs the reference image y.")
        if y_pred.ndim != 4 or y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred and y must have the same shape (B, C, H, W), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        pred, target = y_pred.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
        out = torch.empty(pred.shape[:2], dtype=torch.float32)
        for b in range(pred.shape[0]):
            for c in range(pred.shape[1]):
                out[b, c] = self._one(pred[b, c], target[b, c])
        return out.to(y_pred.device)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the buffer; default: mean over channels, then over images.

        Raises:
            ValueError: when nothing was accumulated.
        """
        return _aggregate(self, self.reduction if reduction is None else reduction, self.get_not_nans)
