"""Export the pretrained encoder (``models/usfm_encoder.pt``) that the downstream bundles load."""

from __future__ import annotations

import logging
import os

import torch
from ignite.engine import Engine, Events

from usfm_monai.networks.weights import export_encoder
from usfm_monai.utils import is_main_process

__all__ = ["EncoderExport"]

logger = logging.getLogger(__name__)


class EncoderExport:
    """Write the encoder of a masked image model as ``{"state_dict", "config"}`` (atomic, weights-only).

    Use it as a ``BestModelSaver(on_save=...)`` callback (export whenever the key metric improves) or attach it
    to a trainer (export at ``COMPLETED``). Only the main rank writes.

    Args:
        network: a ``USFMMaskedImageModel`` (possibly DDP-wrapped or compiled).
        filepath: destination, e.g. ``<bundle>/models/usfm_encoder.pt``.
    """

    def __init__(self, network: torch.nn.Module, filepath: str) -> None:
        self.network = network
        self.filepath = filepath

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.filepath)), exist_ok=True)
        extra = {"epoch": int(engine.state.epoch)}
        best = getattr(engine.state, "best_metric", None)
        if best is not None and best != -1:
            extra["best_metric"] = float(best)
        path = export_encoder(self.network, self.filepath, config=extra)  # unwraps DDP / compile
        logger.info(f"exported the USFM encoder (epoch {engine.state.epoch}) to {path}")
