"""MONAI's ``CheckpointLoader`` with the package's torch-file loader: a bad ``model.pt`` is named, with the cause.

``monai.handlers.CheckpointLoader`` calls ``torch.load(load_path, weights_only=True)`` directly, so a ``model.pt``
that is text, garbage, empty or truncated fails with whatever the unpickler tripped over (``EOFError``,
``IndexError: pop from empty list``...) and no path. Evaluation and inference configs use this subclass instead:
the file is read by :func:`usfm_monai.io.load_torch_file`, then loaded exactly as MONAI does with
``strict_shape=True`` (the only mode we use; a shape mismatch must fail, never be skipped).
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader

from usfm_monai.io import load_torch_file

__all__ = ["CheckpointLoader"]


class CheckpointLoader(_MonaiCheckpointLoader):
    """Load ``load_dict`` from ``load_path`` when the engine starts; see ``monai.handlers.CheckpointLoader``.

    Args:
        load_path: the checkpoint, e.g. ``models/model.pt``.
        load_dict: ``{"model": network, ...}``; a checkpoint that is a bare state dict is accepted for a single
            object, as in MONAI.
        name: logger name; default: the engine's logger.
        map_location: passed to ``torch.load``.
        strict: passed to ``Checkpoint.load_objects`` (missing/unexpected keys fail).

    Raises:
        FileNotFoundError: at load time, ``load_path`` does not exist.
        ValueError: at load time, the file is empty, not a torch file or refused by ``weights_only=True``, naming
            the file and the cause.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict[str, Any],
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
    ) -> None:
        super().__init__(load_path, load_dict, name=name, map_location=map_location, strict=strict, strict_shape=True)

    def __call__(self, engine: Engine) -> None:
        checkpoint = load_torch_file(self.load_path, "model checkpoint", map_location=self.map_location)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and (not isinstance(checkpoint, dict) or first not in checkpoint):
            checkpoint = {first: checkpoint}  # a bare state dict for a single object, as MONAI accepts
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"Epoch count ({engine.state.epoch}) in checkpoint {self.load_path} is larger than the "
                f"engine's max_epochs ({prior_max_epochs}); to use the checkpoint for inference or evaluation, "
                "load only the network."
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")
