"""Write an evaluator's per-image metrics as a summary JSON: mean ± std per metric (optionally per group).

MONAI's ``MetricsSaver`` writes the per-image CSV files (``<metric>_raw.csv``); this handler adds the
mean ± std table the paper reports (Tables 2-4) as one machine-readable file, grouped e.g. by organ.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from usfm_monai.io import save_json_atomic
from usfm_monai.metrics import summarize
from usfm_monai.utils import is_main_process

__all__ = ["MetricSummary"]

logger = logging.getLogger(__name__)


def _summary(values: Any) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=np.float64)
    mean, std, n = summarize(arr)
    return {"mean": mean, "std": std, "n": n, "n_nan": int(arr.shape[0] - n)}


class MetricSummary:
    """Collect per-image metric values from ``engine.state.metric_details`` and write ``summary.json``.

    Metric handlers must be created with ``save_details=True`` (MONAI's default for ``IgniteMetricHandler``).
    Per-image values of multi-channel details are averaged over channels. With ``group_key``, items are also
    summarized per value of that batch key (e.g. ``organ``), read from each iteration's batch.

    Args:
        output_dir: folder of the JSON file.
        filename: JSON file name.
        group_key: optional batch key to group images by.
        extra: plain values stored under ``"info"`` (e.g. the checkpoint evaluated).
    """

    def __init__(
        self, output_dir: str, filename: str = "summary.json", group_key: str | None = None, extra: Any = None
    ) -> None:
        self.output_dir = output_dir
        self.filename = filename
        self.group_key = group_key
        self.extra = extra
        self._groups: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._groups.clear())
        if self.group_key is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_groups)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect_groups(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, (list, tuple)) else [
            {self.group_key: v} for v in batch.get(self.group_key, [None] * len(next(iter(batch.values()))))
        ]
        for item in items:
            value = item.get(self.group_key) if isinstance(item, dict) else None
            self._groups.append(str(value))

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        details = getattr(engine.state, "metric_details", {}) or {}
        if not details:
            raise RuntimeError(
                "MetricSummary found no per-image metric values: create the metric handlers with save_details=True."
            )
        summary: dict[str, Any] = {"metrics": {}, "info": self.extra}
        per_image: dict[str, np.ndarray] = {}
        for name, values in details.items():
            arr = torch.as_tensor(values, dtype=torch.float64).cpu().numpy()
            arr = arr.reshape(arr.shape[0], -1)
            # an image's value is the mean over its defined channels; NaN only when none is defined
            defined = ~np.isnan(arr)
            total = np.where(defined, arr, 0.0).sum(1)
            count = defined.sum(1)
            per_image[name] = np.divide(total, count, out=np.full(len(arr), np.nan), where=count > 0)
            summary["metrics"][name] = _summary(per_image[name])
        if self.group_key is not None:
            n = len(next(iter(per_image.values())))
            if len(self._groups) != n:
                raise RuntimeError(
                    f"MetricSummary saw {len(self._groups)} '{self.group_key}' values for {n} images: the "
                    "evaluator's batches must carry the group key for every image."
                )
            groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for name, values in per_image.items():
                for g, v in zip(self._groups, values):
                    groups[g][name].append(float(v))
            summary["groups"] = {
                g: {name: _summary(v) for name, v in metrics.items()} for g, metrics in sorted(groups.items())
            }
        path = save_json_atomic(summary, os.path.join(self.output_dir, self.filename))
        lines = [
            f"{k}: {v['mean']:.4f} ± {v['std']:.4f} (n={v['n']})" if v["n"] else f"{k}: n/a (undefined for all images)"
            for k, v in summary["metrics"].items()
        ]
        logger.info(f"metric summary written to {path}: " + "; ".join(lines))
