"""Load a pretrained encoder into the network when training starts: the model zoo's ``CheckpointLoader`` pattern for
encoder files.

The zoo's bundles fine-tune from pretrained weights with a ``CheckpointLoader`` in the trainer's handlers
(``_disabled_`` when there is nothing to load), so building the network reads no file. MONAI's loader reads a
whole-network state dict; an encoder file needs :func:`usfm_monai.networks.weights.load_encoder_weights`, which
finds the encoder in any of our layouts or the authors' release, converts it and resizes the position tables.
Loading when the engine starts also leaves the order in which a config builds its objects (and so the random
streams they draw from) as it is without weights.
"""

from __future__ import annotations

import torch.nn as nn
from ignite.engine import Engine, Events
from monai.config import PathLike

from usfm_monai.networks.weights import WeightLoadReport, existing_encoder_file, load_encoder_weights

__all__ = ["EncoderWeightsLoader"]


class EncoderWeightsLoader:
    """Load encoder weights into ``network`` at ``Events.STARTED``, before the other start-up handlers.

    Attach it before a resuming checkpoint handler (which then replaces the weights with the checkpoint's) and before
    :class:`~usfm_monai.handlers.LinearProbeHeadInit` (which probes the loaded features): handlers of one event run
    in the order they were attached.

    Args:
        load_path: the encoder file (any layout of :func:`~usfm_monai.networks.weights.load_encoder_weights`).
        network: the network holding the encoder (a classifier, a segmenter, or the encoder itself; DDP and
            ``torch.compile`` wrappers are looked through).
        strict: raise when keys are missing or unexpected after conversion.

    Attributes:
        report: the :class:`~usfm_monai.networks.weights.WeightLoadReport` of the last load (``None`` before).

    Raises:
        FileNotFoundError: ``load_path`` does not exist (when the handler is built, so a run fails before it starts).
    """

    def __init__(self, load_path: PathLike, network: nn.Module, strict: bool = True) -> None:
        self.load_path = existing_encoder_file(load_path)
        self.network = network
        self.strict = strict
        self.report: WeightLoadReport | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.report = load_encoder_weights(self.network, self.load_path, strict=self.strict)
