"""Evaluation and inference outputs of the classification bundle (paper §4.1.2, Table 3).

* :class:`ClassificationReport` (evaluator handler): the Table 3 metrics (ACC, macro Recall, macro PREC, macro F1,
  MCC), per-class precision / recall / F1 / support and the confusion matrix of one evaluation run, written as
  ``classification_report.json``, ``confusion_matrix.csv``, ``confusion_matrix.png`` and ``per_image.csv``.
* :class:`ClassificationPredictionSaver` (inference handler): one CSV row per image with the class probabilities,
  the predicted class index and the predicted class name.
* :func:`confusion_matrix_figure`: the confusion-matrix picture (counts and row-normalized fractions), drawn
  off-screen with matplotlib's Agg canvas.

Every file is written to a temporary file in its folder and moved into place with ``os.replace``, on rank 0
only; both handlers gather their samples from all ranks first, so a multi-GPU evaluation reports the whole set.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.utils import string_list_all_gather

from usfm_monai.io import save_text_atomic
from usfm_monai.metrics import (
    CLASSIFICATION_METRICS,
    ClassificationMetric,
    classification_metrics,
)
from usfm_monai.utils import is_main_process
from usfm_monai.visualize import save_png_atomic

__all__ = [
    "ClassificationPredictionSaver",
    "ClassificationReport",
    "confusion_matrix_figure",
    "per_class_scores",
]

logger = logging.getLogger(__name__)


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(f"class_names must be a sequence of class names, got {type(class_names).__name__}.")
    names = tuple(str(c) for c in class_names)
    if len(names) < 2:
        raise ValueError(f"class_names must name at least 2 classes, got {list(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {list(names)}.")
    return names


def _check_confusion(cm: Any, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ValueError(f"confusion matrix must have shape (K, K) with K >= 2, got {arr.shape}.")
    if num_classes is not None and arr.shape[0] != num_classes:
        raise ValueError(f"confusion matrix has {arr.shape[0]} classes but {num_classes} class names were given.")
    if (arr < 0).any() or not np.all(arr == np.round(arr)):
        raise ValueError("confusion matrix must hold non-negative integer counts.")
    return arr.astype(np.int64)


def per_class_scores(cm: Any, class_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of every class, from a confusion matrix.

    Args:
        cm: ``(K, K)`` counts, rows = true class, columns = predicted class (as
            :func:`usfm_monai.metrics.confusion_matrix`).
        class_names: the ``K`` class names, in index order.

    Returns:
        ``{name: {"precision", "recall", "f1", "support"}}``: ``precision = C[k, k] / sum_i C[i, k]``,
        ``recall = C[k, k] / sum_j C[k, j]``, ``f1`` their harmonic mean, each 0 when undefined (scikit-learn's
        ``zero_division=0``); ``support`` = number of true samples of the class.

    Raises:
        ValueError: ``cm`` is not a square matrix of counts matching ``class_names``.
    """
    names = _check_class_names(class_names)
    arr = _check_confusion(cm, len(names)).astype(np.float64)
    tp = np.diag(arr)
    true_count, pred_count = arr.sum(axis=1), arr.sum(axis=0)
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros_like(tp), where=true_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "support": int(true_count[k])}
        for k, name in enumerate(names)
    }


def confusion_matrix_figure(
    cm: Any, class_names: Sequence[str], title: str | None = None, cmap: str = "Blues", dpi: int = 100
) -> np.ndarray:
    """Picture of a confusion matrix: each cell colored by its row-normalized fraction, labeled with the count.

    Args:
        cm: ``(K, K)`` counts, rows = true class, columns = predicted class.
        class_names: the ``K`` class names, in index order.
        title: optional figure title.
        cmap: matplotlib colormap; cell ``(i, j)`` has the color ``cmap(C[i, j] / sum_j C[i, j])`` (0 for an
            empty row), on a fixed ``[0, 1]`` scale so figures of different runs compare directly.
        dpi: resolution.

    Returns:
        RGB ``uint8`` array ``(H_fig, W_fig, 3)``.

    Raises:
        ValueError: ``cm`` is not a square matrix of counts matching ``class_names``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _check_class_names(class_names)
    counts = _check_confusion(cm, len(names))
    rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    k = len(names)
    side = 1.2 + 0.9 * k
    fig = Figure(figsize=(side + 1.2, side), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(fractions, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(k):
        for j in range(k):
            # dark text on light cells and vice versa, so every count stays readable
            color = "white" if fractions[i, j] > 0.5 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{100 * fractions[i, j]:.1f}%", ha="center", va="center", color=color,
                    fontsize=8)
    ax.set_xticks(range(k), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    canvas = FigureCanvasAgg(fig)  # off-screen: no display or pyplot state involved
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ClassificationReport:
    """Write the Table 3 metrics, per-class scores and the confusion matrix of each evaluation epoch.

    Attach it to an evaluator. It accumulates ``(pred, label)`` of every sample with its own
    :class:`~usfm_monai.metrics.ClassificationMetric` (argmax of ``pred``), gathers them from all ranks at
    ``EPOCH_COMPLETED`` and, on rank 0, writes into ``output_dir``:

    - ``classification_report.json``: ``{"metrics": {"acc", "recall", "prec", "f1", "mcc"}, "per_class":
      {name: {"precision", "recall", "f1", "support"}}, "confusion_matrix": [[...]], "class_names": [...],
      "num_samples": N, "epoch": e, "info": extra}``; values are fractions (MCC in ``[-1, 1]``).
    - ``confusion_matrix.csv``: header ``true \\ predicted,<names>``, then one row per true class.
    - ``confusion_matrix.png``: :func:`confusion_matrix_figure`.
    - ``per_image.csv`` (``per_image=True``): ``image,true_label,true_class,pred_label,pred_class,prob_<name>...``,
      one row per image in the order seen (rank by rank), ``prob_*`` = the ``y_pred`` values as given
      (probabilities when the postprocessing applies a softmax, as the bundle does).

    Args:
        output_dir: destination folder.
        class_names: the ``K`` class names, in label-index order.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``: ``y_pred`` logits or probabilities
            ``(B, K)`` (or a list of ``(K,)``), ``y`` class indices ``(B,)`` / ``(B, 1)`` or one-hot ``(B, K)``;
            default ``from_engine(["pred", "label"])``.
        prefix: prepended to the file names (e.g. ``"test_"``).
        save_figure: also write the PNG.
        per_image: also write ``per_image.csv``; needs decollated outputs whose ``image_key`` is a ``MetaTensor``
            with ``filename_or_obj``.
        image_key: output key of the input image.
        extra: plain values stored under ``"info"`` (e.g. the checkpoint evaluated).

    Raises:
        ValueError, TypeError: bad ``class_names``.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        output_transform: Callable[[Any], Any] | None = None,
        prefix: str = "",
        save_figure: bool = True,
        per_image: bool = True,
        image_key: str = "image",
        extra: Any = None,
    ) -> None:
        self.output_dir = output_dir
        self.class_names = _check_class_names(class_names)
        self.output_transform = from_engine(["pred", "label"]) if output_transform is None else output_transform
        self.prefix = prefix
        self.save_figure = save_figure
        self.per_image = per_image
        self.image_key = image_key
        self.extra = extra
        self._rows: list[str] = []
        self._metric = ClassificationMetric("acc", num_classes=len(self.class_names))
        self.report: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._metric.reset()
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        y_pred, y = self.output_transform(engine.state.output)
        # decollated labels can be plain ints; ignite's metrics convert them the same way
        if isinstance(y_pred, (list, tuple)):
            y_pred = [torch.as_tensor(v) for v in y_pred]
        if isinstance(y, (list, tuple)):
            y = [torch.as_tensor(v) for v in y]
        pairs = self._metric(y_pred=y_pred, y=y)  # B, 2: true and predicted class of each sample
        if not self.per_image:
            return
        output = engine.state.output
        if not isinstance(output, (list, tuple)) or len(output) != len(pairs):
            raise ValueError(
                "ClassificationReport(per_image=True) expects decollated outputs (one dict per image); keep the "
                "evaluator's decollate=True or pass per_image=False."
            )
        scores = y_pred if isinstance(y_pred, (list, tuple)) else list(y_pred)
        for item, pair, score in zip(output, pairs.tolist(), scores):
            image = item.get(self.image_key) if isinstance(item, dict) else None
            name = (getattr(image, "meta", None) or {}).get("filename_or_obj")
            if name is None:
                raise KeyError(
                    f"output key {self.image_key!r} carries no 'filename_or_obj' metadata: load the images with "
                    "LoadImaged(image_only=True), which keeps it in the MetaTensor, or pass per_image=False."
                )
            true, pred = int(pair[0]), int(pair[1])
            values = torch.as_tensor(score).detach().float().cpu().reshape(-1).tolist()
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(
                [str(name), true, self.class_names[true], pred, self.class_names[pred], *(f"{v:.6f}" for v in values)]
            )
            self._rows.append(buffer.getvalue())

    def path(self, name: str) -> str:
        """Absolute path of one of the written files (``"classification_report.json"``, ...)."""
        return os.path.abspath(os.path.join(self.output_dir, self.prefix + name))

    def __call__(self, engine: Engine) -> None:
        # collectives on every rank (buffers are all-gathered), so they come before the rank check
        cm = self._metric.confusion_matrix()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rows = string_list_all_gather(self._rows) if distributed and self.per_image else list(self._rows)
        if not is_main_process():
            return
        data = self._metric.get_buffer().cpu().numpy()
        scores = classification_metrics(data[:, 0], data[:, 1], len(self.class_names))
        self.report = {
            "metrics": {name: scores[name] for name in CLASSIFICATION_METRICS},
            "per_class": per_class_scores(cm, self.class_names),
            "confusion_matrix": cm.tolist(),
            "class_names": list(self.class_names),
            "num_samples": int(cm.sum()),
            "epoch": int(engine.state.epoch),
            "info": self.extra,
        }
        report_text = json.dumps(self.report, indent=2) + "\n"
        json_path = save_text_atomic(report_text, self.path("classification_report.json"))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["true \\ predicted", *self.class_names])
        for name, row in zip(self.class_names, cm.tolist()):
            writer.writerow([name, *row])
        save_text_atomic(buffer.getvalue(), self.path("confusion_matrix.csv"))
        if self.per_image:
            buffer = io.StringIO()
            header = ["image", "true_label", "true_class", "pred_label", "pred_class"]
            csv.writer(buffer, lineterminator="\n").writerow(header + [f"prob_{c}" for c in self.class_names])
            save_text_atomic(buffer.getvalue() + "".join(r + "\n" for r in rows), self.path("per_image.csv"))
        if self.save_figure:
            title = f"confusion matrix (n={int(cm.sum())}, acc={scores['acc']:.3f}, F1={scores['f1']:.3f})"
            figure = confusion_matrix_figure(cm, self.class_names, title=title)
            save_png_atomic(figure, self.path("confusion_matrix.png"))
        summary = ", ".join(f"{k}={v:.4f}" for k, v in self.report["metrics"].items())
        logger.info(f"classification report ({self.report['num_samples']} images) written to {json_path}: {summary}")


class ClassificationPredictionSaver:
    """Write one CSV row per image: the file, the class probabilities and the predicted class.

    Attach it to an inference evaluator whose postprocessing turns ``pred`` into probabilities (e.g.
    ``Activationsd(keys="pred", softmax=True)``) and whose outputs are decollated (MONAI's default). The file
    ``<output_dir>/<filename>`` has the header ``image,prob_<name>...,pred_label,pred_class``; ties go to the
    lowest index (``argmax``). Rows are gathered from all ranks and written on rank 0, in the order seen.

    Args:
        output_dir: destination folder.
        class_names: the ``K`` class names, in label-index order.
        filename: CSV file name.
        pred_key: output key of the probabilities ``(K,)``.
        image_key: output key of the input image, a ``MetaTensor`` whose ``filename_or_obj`` names the file.
        atol: tolerance on ``sum(probabilities) == 1``.

    Raises:
        ValueError, TypeError: bad ``class_names``; at run time, predictions that are not ``K`` probabilities
            (values outside ``[0, 1]`` or not summing to 1: the softmax is missing) or outputs that are not
            decollated.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        filename: str = "predictions.csv",
        pred_key: str = "pred",
        image_key: str = "image",
        atol: float = 1e-3,
    ) -> None:
        self.output_dir = output_dir
        self.class_names = _check_class_names(class_names)
        self.filename = filename
        self.pred_key = pred_key
        self.image_key = image_key
        self.atol = atol
        self._rows: list[str] = []

    @property
    def path(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, self.filename))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _row(self, item: Any) -> str:
        if not isinstance(item, dict) or self.pred_key not in item:
            raise ValueError(
                f"ClassificationPredictionSaver expects decollated outputs (a list of dicts with {self.pred_key!r}), "
                f"got {type(item).__name__}; keep the evaluator's decollate=True."
            )
        probs = torch.as_tensor(item[self.pred_key]).detach().float().cpu().reshape(-1)
        k = len(self.class_names)
        if probs.numel() != k:
            raise ValueError(f"{self.pred_key!r} must hold {k} class probabilities, got shape {tuple(probs.shape)}.")
        if probs.min() < -self.atol or probs.max() > 1 + self.atol or abs(float(probs.sum()) - 1.0) > self.atol:
            raise ValueError(
                f"{self.pred_key!r} must hold probabilities summing to 1, got {probs.tolist()}; add "
                "Activationsd(keys='pred', softmax=True) to the postprocessing."
            )
        image = item.get(self.image_key)
        meta = getattr(image, "meta", None) or {}
        name = meta.get("filename_or_obj")
        if name is None:
            raise KeyError(
                f"output key {self.image_key!r} carries no 'filename_or_obj' metadata: load the images with "
                "LoadImaged(image_only=True), which keeps it in the MetaTensor."
            )
        label = int(torch.argmax(probs))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(
            [str(name), *(f"{p:.6f}" for p in probs.tolist()), label, self.class_names[label]]
        )
        return buffer.getvalue()

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        self._rows.extend(self._row(item) for item in items)

    def __call__(self, engine: Engine) -> None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rows = string_list_all_gather(self._rows) if distributed else list(self._rows)
        if not is_main_process():
            return
        header = ["image", *(f"prob_{c}" for c in self.class_names), "pred_label", "pred_class"]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(header)
        text = buffer.getvalue() + "".join(row + "\n" for row in rows)
        path = save_text_atomic(text, self.path)
        logger.info(f"predictions of {len(rows)} images written to {path}")
