"""Representation probe during pretraining: "did the encoder learn anything?" as a number per epoch."""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Optional

import torch
from ignite.engine import Engine, Events
from monai.config import PathLike

from usfm_monai.networks.weights import find_encoder
from usfm_monai.utils import is_main_process

__all__ = ["RepresentationProbe"]

logger = logging.getLogger(__name__)

_COLUMNS = ("epoch", "knn_acc", "knn_f1", "linear_acc", "linear_f1", "linear_val_f1", "linear_C", "prior_acc")


class RepresentationProbe:
    """Probe the frozen encoder of a masked image model every ``interval`` epochs (:mod:`usfm_monai.probe`).

    Attached to the pretraining trainer, it runs before the first epoch of a fresh run (epoch 0: the random
    initialisation, the reference), every ``interval`` epochs and at the end. Each probe puts
    ``probe_knn_acc``, ``probe_knn_f1``, ``probe_linear_acc`` and ``probe_linear_f1`` into
    ``engine.state.metrics``, logs them, appends a row to ``output_file`` (CSV, the probe curve) and to
    TensorBoard when ``log_dir`` is set. Only the main rank probes. The images are decoded once, at the first
    probe, so reading a config costs nothing.

    Args:
        network: the masked image model (its ``encoder`` is probed; DDP-wrapped is fine).
        dataset_dir: classification dataset folder (or ``"synthetic"`` with ``synthetic_dir``).
        datalist_file: classification datalist with ``training``, ``validation`` and ``test`` sections (labels
            are used only by the probe classifiers, never by pretraining).
        image_size: probe input size; default: the encoder's input size.
        interval: probe every ``interval`` epochs.
        output_file: CSV of the probe curve (one row per probe).
        k: neighbours of the kNN probe.
        log_dir: TensorBoard folder (``probe/<metric>`` scalars), or ``None``.
        synthetic_dir: folder of the synthetic classification set when ``dataset_dir="synthetic"``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataset_dir: PathLike,
        datalist_file: Optional[PathLike] = None,
        image_size: Optional[int] = None,
        interval: int = 10,
        output_file: Optional[PathLike] = None,
        k: int = 10,
        log_dir: Optional[PathLike] = None,
        synthetic_dir: Optional[PathLike] = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive int (epochs), got {interval!r}.")
        self.network = network
        self.dataset_dir = dataset_dir
        self.datalist_file = datalist_file
        self.image_size = image_size
        self.interval = interval
        self.output_file = None if output_file is None else os.fspath(output_file)
        self.k = k
        self.log_dir = log_dir
        self.synthetic_dir = synthetic_dir
        self._data: Any = None
        self._writer: Any = None
        self._last_epoch: Optional[int] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _encoder(self) -> torch.nn.Module:
        return find_encoder(self.network)[0]

    def _on_started(self, engine: Engine) -> None:
        if engine.state.epoch == 0:  # a fresh run: probe the initialisation as the reference
            self(engine)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if not is_main_process() or epoch == self._last_epoch:
            return
        self._last_epoch = epoch
        from usfm_monai.probe import ProbeFeatures

        encoder = self._encoder()
        if self._data is None:
            size = self.image_size or int(encoder.patch_embed.img_size[0])
            self._data = ProbeFeatures.from_datalist(
                self.dataset_dir, self.datalist_file, size, synthetic_dir=self.synthetic_dir
            )
        result = self._data.probe(encoder, k=self.k, per_level=False)
        row = {"epoch": epoch, **{c: result[c] for c in _COLUMNS[1:]}}
        for name in ("knn_acc", "knn_f1", "linear_acc", "linear_f1"):
            engine.state.metrics[f"probe_{name}"] = result[name]
        logger.info(
            "probe epoch %d: kNN acc %.3f F1 %.3f | linear acc %.3f F1 %.3f (C=%g) | prior acc %.3f",
            epoch, result["knn_acc"], result["knn_f1"], result["linear_acc"], result["linear_f1"],
            result["linear_C"], result["prior_acc"],
        )
        if self.output_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.output_file)), exist_ok=True)
            new = not os.path.exists(self.output_file)
            with open(self.output_file, "a", newline="") as f:  # appended row by row: a resumed run continues it
                writer = csv.DictWriter(f, fieldnames=_COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=os.fspath(self.log_dir))
            for name in ("knn_acc", "knn_f1", "linear_acc", "linear_f1"):
                self._writer.add_scalar(f"probe/{name}", result[name], epoch)
            self._writer.flush()
