"""Checkpoints that cannot lose work: atomic writes, full-state resume, best-model saves.

MONAI's ``CheckpointSaver`` writes non-atomically and ignite's ``Checkpoint`` removes the previous file before
writing the next one, so an interrupted save can leave no usable checkpoint. Here every file is written to a
temporary file in the destination folder and moved into place with ``os.replace``: the previous copy stays
intact until the new one is complete. Checkpoints hold tensors and plain containers only and load with
``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from usfm_monai.bundle import ensure_bool, is_main_process
from usfm_monai.io import save_torch_atomic

__all__ = ["state_dicts", "TrainingCheckpoint", "BestModelSaver"]

logger = logging.getLogger(__name__)


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` for every object that has one (DDP wrappers unwrapped), skipping ``None``."""
    out = {}
    for name, obj in objects.items():
        if obj is None:
            continue
        if not hasattr(obj, "state_dict"):
            raise TypeError(f"checkpoint entry '{name}' has no state_dict(): got {type(obj).__name__}.")
        out[name] = _unwrap(obj).state_dict()
    return out


class TrainingCheckpoint:
    """Save the full training state periodically and resume from it when the run starts again.

    Saves ``{name: obj.state_dict()}`` for ``save_dict`` (network, optimizer, scheduler...) plus the engine it is
    attached to (key ``trainer``: epoch, iteration; a config cannot name the trainer inside its own handler list)
    to ``<save_dir>/<filename>`` every ``every_n_iterations`` iterations (if given) and at every epoch end, and
    once more when training completes. The AMP ``GradScaler`` that MONAI trainers create inside ``run()`` is
    added automatically as ``scaler`` when present. On ``Events.STARTED`` an existing file is loaded back
    (``resume=True``), so a killed run started again with the same command continues from its last save.

    Nothing is saved when the run fails: saves happen only on completed iterations/epochs whose loss is finite,
    so a NaN loss or an exception never overwrites the last good checkpoint.
    Only the main rank writes (``torch.distributed``); every rank resumes. A checkpoint saved at an epoch end
    resumes exactly (same weights as an uninterrupted run with deterministic data order); one saved mid-epoch
    resumes at its iteration with the saved weights, optimizer and schedule, and the rest of that epoch takes
    fresh batches from the loader (the sampler's position inside the epoch is not stored). Raising ``epochs``
    on a resumed run extends the engine, but a learning-rate schedule restores its own saved horizon (e.g.
    ``WarmupCosineSchedule.t_total``): to train longer on a fresh schedule, start from the exported weights instead.

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: objects to save besides the engine.
        filename: checkpoint file name.
        every_n_iterations: extra saves every this many iterations (``None``: epoch ends only).
        resume: load ``<save_dir>/<filename>`` at start when it exists.
        map_location: passed to ``torch.load`` when resuming.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        every_n_iterations: int | None = None,
        resume: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to checkpoint.")
        if every_n_iterations is not None and every_n_iterations < 1:
            raise ValueError(f"every_n_iterations must be a positive integer or None, got {every_n_iterations}.")
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.every_n_iterations = every_n_iterations
        self.resume = ensure_bool("resume", resume)
        self.map_location = map_location

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        if self.every_n_iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iterations), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = dict(self.save_dict)
        objects.setdefault("trainer", engine)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" not in objects:
            objects["scaler"] = scaler
        return objects

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        loss = engine.state.output.get("loss") if isinstance(engine.state.output, Mapping) else None
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            logger.error(f"loss is not finite at iteration {engine.state.iteration}: checkpoint {self.path} kept as is.")
            return
        save_torch_atomic(state_dicts(self._objects(engine)), self.path)
        logger.info(f"saved training checkpoint (epoch {engine.state.epoch}, iteration {engine.state.iteration}) "
                    f"to {self.path}")

    def load(self, engine: Engine) -> None:
        if not self.resume or not os.path.isfile(self.path):
            return
        try:
            checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=True)
        except Exception as e:  # re-raised with the file name: a corrupt file is the user's to resolve
            raise RuntimeError(
                f"cannot read the training checkpoint {self.path}: {e}. Delete it to start afresh, "
                "or set resume to false."
            ) from e
        objects = {k: _unwrap(v) for k, v in self._objects(engine).items() if k in checkpoint}
        missing = sorted(set(self._objects(engine)) - set(checkpoint))
        if missing:
            logger.warning(f"checkpoint {self.path} has no entries for {missing}; they keep their initial state.")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        if max_epochs is not None and engine.state.max_epochs is not None and max_epochs > engine.state.max_epochs:
            engine.state.max_epochs = max_epochs  # the config may extend a finished schedule
        logger.info(
            f"resumed from {self.path}: epoch {engine.state.epoch}, iteration {engine.state.iteration} "
            f"of max_epochs {engine.state.max_epochs}."
        )
        if engine.state.epoch >= (engine.state.max_epochs or math.inf):
            logger.warning(
                f"the checkpoint {self.path} already reached max_epochs={engine.state.max_epochs}: nothing to train. "
                "Raise `epochs` to continue, or remove the checkpoint to start afresh."
            )


class BestModelSaver:
    """Save a model (and optionally run extra exports) each time the evaluator's key metric improves.

    Attach it to the *evaluator*: MONAI workflows update ``engine.state.best_metric`` at ``EPOCH_COMPLETED``
    before later handlers run, so this handler sees the new best in the same event. The file is written
    atomically (``save_torch_atomic``) and holds ``{name: state_dict}`` for ``save_dict``, the layout MONAI's
    ``CheckpointLoader`` and ``ckpt_export`` read.

    Args:
        save_dir: destination folder.
        save_dict: objects to save, e.g. ``{"model": network}``.
        filename: file name (MONAI convention: ``model.pt``).
        on_save: optional callables run after each save (e.g. an encoder export), each given the engine.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        on_save: Callable[[Engine], Any] | list[Callable[[Engine], Any]] | None = None,
    ) -> None:
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.on_save = [] if on_save is None else (list(on_save) if isinstance(on_save, (list, tuple)) else [on_save])
        self._best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        best_epoch = getattr(engine.state, "best_metric_epoch", -1)
        if best_epoch == self._best_epoch or best_epoch != engine.state.epoch:
            return
        self._best_epoch = best_epoch
        path = save_torch_atomic(state_dicts(self.save_dict), os.path.join(self.save_dir, self.filename))
        logger.info(f"new best key metric {engine.state.best_metric:.4f} at epoch {best_epoch}: saved {path}")
        for fn in self.on_save:
            fn(engine)
