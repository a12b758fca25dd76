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
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from usfm_monai.io import load_torch_file, save_torch_atomic
from usfm_monai.networks.weights import unwrap_model
from usfm_monai.utils import ensure_bool, is_main_process

__all__ = [
    "state_dicts",
    "GeneratorState",
    "TorchRNGState",
    "BestMetricState",
    "TrainingCheckpoint",
    "BestModelSaver",
]

logger = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class GeneratorState:
    """Give a ``torch.Generator`` the ``state_dict()`` / ``load_state_dict()`` pair that checkpoints use.

    The pretraining mask generator and the samplers' generators decide which masks and which images a run sees;
    without their state a resumed run replays the draws of the first run's first epochs. Only the main rank
    writes checkpoints, so on the other ranks the saved (rank 0) state is not restored verbatim, which would make
    every rank draw the same numbers: each rank instead re-seeds from the saved state and its rank, which is
    reproducible and keeps the ranks' streams distinct.

    Args:
        generator: the generator to save and restore in place.
    """

    def __init__(self, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"GeneratorState wraps a torch.Generator, got {type(generator).__name__}.")
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state(), "rank": _rank()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or "state" not in state_dict:
            found = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise KeyError(f"a generator entry needs the key 'state' (GeneratorState.state_dict()), found {found}.")
        state = torch.as_tensor(state_dict["state"], dtype=torch.uint8).cpu()
        rank = _rank()
        if int(state_dict.get("rank", 0)) == rank:
            self.generator.set_state(state)
        else:
            self.generator.manual_seed((zlib.crc32(state.numpy().tobytes()) * 1_000_003 + rank) % 2**63)


class TorchRNGState:
    """``state_dict()`` / ``load_state_dict()`` of torch's global random state (CPU, and CUDA once initialised).

    The global generator shuffles ``DataLoader(shuffle=True)`` (``RandomSampler`` without a generator), seeds the
    loader workers and drives dropout/drop-path: restoring it keeps a resumed run from replaying the first run's
    data order. Every rank starts from the same global state (``set_determinism``), so restoring the main rank's
    state on every rank keeps that property.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # never initialise CUDA just to save
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        torch.set_rng_state(torch.as_tensor(state_dict["cpu"], dtype=torch.uint8).cpu())
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
            else:
                logger.warning(
                    f"the checkpoint holds the CUDA random state of {len(cuda)} devices, this machine has "
                    f"{torch.cuda.device_count()}: the CUDA random state is not restored."
                )


class BestMetricState:
    """``state_dict()`` / ``load_state_dict()`` of a MONAI workflow's best key metric and its epoch.

    MONAI workflows accept any score as the new best while ``state.best_metric_epoch == -1``: a resumed run
    that does not restore them treats its first validation as an improvement and ``BestModelSaver`` overwrites
    the best model with a possibly worse one.

    Args:
        workflow: a MONAI ``Workflow`` (evaluator or trainer); its ``state.best_metric`` and
            ``state.best_metric_epoch`` are saved and restored.
    """

    def __init__(self, workflow: Engine) -> None:
        if not hasattr(getattr(workflow, "state", None), "best_metric_epoch"):
            raise TypeError(
                f"BestMetricState needs a MONAI workflow (state.best_metric, state.best_metric_epoch), "
                f"got {type(workflow).__name__}."
            )
        self.workflow = workflow

    def state_dict(self) -> dict[str, Any]:
        best = self.workflow.state.best_metric
        return {
            "best_metric": float(torch.as_tensor(best).item()),
            "best_metric_epoch": int(self.workflow.state.best_metric_epoch),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = {"best_metric", "best_metric_epoch"} - set(state_dict)
        if missing:
            raise KeyError(f"a best-metric entry needs {sorted(missing)}, found {sorted(map(str, state_dict))}.")
        self.workflow.state.best_metric = float(state_dict["best_metric"])
        self.workflow.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


def _checkpointable(obj: Any) -> Any:
    return GeneratorState(obj) if isinstance(obj, torch.Generator) else obj


def _same_setting(saved: Any, current: Any) -> bool:
    if isinstance(saved, (int, float)) and isinstance(current, (int, float)) and not isinstance(saved, bool):
        return math.isclose(float(saved), float(current), rel_tol=1e-9, abs_tol=0.0)
    return saved == current


def state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` for every object that has one (DDP wrappers unwrapped), skipping ``None``.

    A ``torch.Generator`` is saved through :class:`GeneratorState`.
    """
    out = {}
    for name, obj in objects.items():
        if obj is None:
            continue
        obj = _checkpointable(obj)
        if not hasattr(obj, "state_dict"):
            raise TypeError(f"checkpoint entry '{name}' has no state_dict(): got {type(obj).__name__}.")
        out[name] = unwrap_model(obj).state_dict()
    return out


class TrainingCheckpoint:
    """Save the full training state periodically and resume from it when the run starts again.

    Saves ``{name: obj.state_dict()}`` for ``save_dict`` (network, optimizer, scheduler...) plus the engine it is
    attached to (key ``trainer``: epoch, iteration; a config cannot name the trainer inside its own handler list)
    to ``<save_dir>/<filename>`` every ``every_n_iterations`` iterations (if given) and at every epoch end, and
    once more when training completes. The AMP ``GradScaler`` that MONAI trainers create inside ``run()`` is
    added automatically as ``scaler`` when present, and so are the trainer's best key metric
    (``trainer_best_metric``), the evaluator's (``evaluator_best_metric``, when ``evaluator`` is given: without
    it a resumed run counts its first validation as a new best and overwrites the best model) and torch's global
    random state (``torch_rng``: the data order of ``shuffle=True`` loaders). ``torch.Generator`` entries of
    ``save_dict`` (mask or sampler generators) are saved through :class:`GeneratorState`. On ``Events.STARTED``
    an existing file is loaded back (``resume=True``), so a killed run started again with the same command
    continues from its last save.

    ``fixed_settings`` (e.g. ``{"learning_rate": ...}``) are recorded in the file and compared on resume: the
    saved optimizer and schedule would silently override a changed value, so a difference raises a
    ``ValueError`` that says how to start afresh instead.

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
        evaluator: the validation workflow whose best key metric (``state.best_metric``,
            ``state.best_metric_epoch``) is saved and restored with the rest.
        fixed_settings: ``{name: value}`` of plain values (numbers, strings, bools) that a resumed run must not
            change; stored under the key ``settings``.

    Raises:
        ValueError: on resume, when a ``fixed_settings`` value differs from the one in the checkpoint.
        RuntimeError: on resume, when the checkpoint cannot be read.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        every_n_iterations: int | None = None,
        resume: bool = True,
        map_location: Any = "cpu",
        evaluator: Engine | None = None,
        fixed_settings: Mapping[str, Any] | None = None,
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
        self.evaluator = evaluator
        self.fixed_settings = dict(fixed_settings or {})
        reserved = {"settings", "trainer_best_metric", "evaluator_best_metric", "torch_rng"} & set(self.save_dict)
        if reserved:
            raise ValueError(f"save_dict names {sorted(reserved)}, which TrainingCheckpoint writes itself.")
        for name, value in self.fixed_settings.items():
            if not isinstance(value, (bool, int, float, str, type(None))):
                raise TypeError(
                    f"fixed_settings['{name}'] must be a number, string, bool or None, got {type(value).__name__}."
                )

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        if self.every_n_iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iterations), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {name: _checkpointable(obj) for name, obj in self.save_dict.items()}
        objects.setdefault("trainer", engine)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" not in objects:
            objects["scaler"] = scaler
        if hasattr(engine.state, "best_metric_epoch"):
            objects["trainer_best_metric"] = BestMetricState(engine)
        if self.evaluator is not None:
            objects["evaluator_best_metric"] = BestMetricState(self.evaluator)
        objects["torch_rng"] = TorchRNGState()
        return objects

    def _check_settings(self, checkpoint: Mapping[str, Any]) -> None:
        if not self.fixed_settings:
            return
        saved = checkpoint.get("settings")
        if not isinstance(saved, Mapping):
            logger.warning(
                f"checkpoint {self.path} records no settings: cannot check that {sorted(self.fixed_settings)} "
                "match the run being resumed."
            )
            return
        changed = {
            name: (saved[name], value)
            for name, value in self.fixed_settings.items()
            if name in saved and not _same_setting(saved[name], value)
        }
        if changed:
            what = ", ".join(f"{name}={old!r} in the checkpoint, {new!r} now" for name, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume from {self.path} with changed settings ({what}): the saved optimizer and schedule "
                "would silently keep the old values. Start afresh with --resume False (this overwrites the files "
                f"in {self.save_dir}) or with a new --bundle_root, or drop the override to continue the saved run."
            )

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        loss = engine.state.output.get("loss") if isinstance(engine.state.output, Mapping) else None
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            logger.error(f"loss is not finite at iteration {engine.state.iteration}: checkpoint {self.path} kept as is.")
            return
        payload = state_dicts(self._objects(engine))
        if self.fixed_settings:
            payload["settings"] = dict(self.fixed_settings)
        save_torch_atomic(payload, self.path)
        logger.info(f"saved training checkpoint (epoch {engine.state.epoch}, iteration {engine.state.iteration}) "
                    f"to {self.path}")

    def load(self, engine: Engine) -> None:
        if not self.resume or not os.path.isfile(self.path):
            return
        try:
            checkpoint = load_torch_file(self.path, "training checkpoint", map_location=self.map_location)
        except Exception as e:  # re-raised with the file name: a corrupt file is the user's to resolve
            raise RuntimeError(
                f"cannot read the training checkpoint {self.path}: {e}. Delete it to start afresh, "
                "or set resume to false."
            ) from e
        self._check_settings(checkpoint)
        objects = {k: unwrap_model(v) for k, v in self._objects(engine).items() if k in checkpoint}
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
