"""Stop a run on a non-finite loss without triggering any final save."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

__all__ = ["NaNGuard"]


class NaNGuard:
    """Raise ``FloatingPointError`` as soon as the loss is NaN or infinite.

    ignite's ``TerminateOnNan`` calls ``engine.terminate()``, which still fires ``COMPLETED`` and lets a
    ``save_final`` saver replace the last good checkpoint with NaN weights. Raising instead ends the run
    through ``EXCEPTION_RAISED``: no completion event, no final save.

    Args:
        output_transform: maps ``engine.state.output`` to the loss (a tensor or a number).
    """

    def __init__(self, output_transform: Callable[[Any], Any] = from_engine(["loss"], first=True)) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        if not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            raise FloatingPointError(
                f"non-finite loss {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}. "
                "The last checkpoint was kept; lower the learning rate or check the data, then resume."
            )
