"""Reconstruction figures like the paper's Fig. 6, written as PNG files and to TensorBoard."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from usfm_monai.transforms.dual_mask import BatchedDualDomainMask, DualMaskDraws
from usfm_monai.utils import is_main_process
from usfm_monai.visualize import reconstruction_figure, save_png_atomic

__all__ = ["masked_views", "ReconstructionFigures"]

logger = logging.getLogger(__name__)


def masked_views(masker: BatchedDualDomainMask, images: torch.Tensor, masks: DualMaskDraws) -> dict[str, torch.Tensor]:
    """The intermediate images of given dual-mask draws, for figures (nothing is drawn here).

    Args:
        masker: the batched dual-domain mask used in training (its geometry).
        images: ``(B, C, H, W)`` originals in ``[0, 1]``.
        masks: the draws the images were masked with, e.g. ``DualMaskPrepareBatch.masks``.

    Returns:
        ``spatial_mask`` ``(B, 1, H, W)`` (1 = block filled with the mean), ``frequency_masked`` (band-stopped
        image, no spatial mask), ``dual_masked`` (the network input, eq. 8), each ``(B, C, H, W)`` float.
    """
    dual, spatial = masker.apply(images, masks, return_masks=True)
    frequency_only = DualMaskDraws(block_grids=torch.zeros_like(masks.block_grids), band_ids=masks.band_ids)
    frequency_masked = masker.apply(images, frequency_only)
    return {"spatial_mask": spatial.float(), "frequency_masked": frequency_masked, "dual_masked": dual}


def _names(images: torch.Tensor, start: int) -> list[str]:
    names = images.meta.get("filename_or_obj") if isinstance(images, MetaTensor) else None
    if isinstance(names, (list, tuple)) and len(names) == images.shape[0]:
        return [os.path.splitext(os.path.basename(str(n)))[0] for n in names]
    return [f"image_{start + i:05d}" for i in range(images.shape[0])]


class ReconstructionFigures:
    """Write original | spatial mask | frequency mask | dual-masked input | reconstruction | spectra figures.

    Attach to an evaluator whose ``prepare_batch`` is a :class:`~usfm_monai.engines.DualMaskPrepareBatch`. The
    figures show what the evaluator itself did, after each forward pass:
    the masks the prepare-batch drew (:attr:`DualMaskPrepareBatch.masks`), the masked input, the original and
    the network output of ``engine.state.output``, taken at ``IterationEvents.FORWARD_COMPLETED``, before
    MONAI decollates the output and runs the postprocessing. Nothing is drawn again, the network is not run again.

    - ``per_image=False`` (validation): the first ``num_images`` images of the first batch; the figure goes to
      ``<output_dir>/reconstruction_epoch<NNNN>.png`` at ``EPOCH_COMPLETED`` and, with ``log_dir``, to
      TensorBoard. A ``deterministic`` validation prepare-batch masks them alike every epoch, so figures are
      comparable over training.
    - ``per_image=True`` (inference): every image of every batch gets its own figure,
      ``<output_dir>/<image name>_reconstruction.png``.

    Args:
        output_dir: folder of the PNG files.
        num_images: rows of the validation figure.
        log_dir: TensorBoard folder (``None``: PNG only).
        per_image: inference mode, see above.
        transpose: show ``(W, H)`` arrays upright. MONAI's PIL reader (the default for PNG/JPG) loads 2-D images
            as ``(W, H)``; the figure transposes them back so anatomy appears as in the file.
    """

    def __init__(
        self,
        output_dir: str,
        num_images: int = 4,
        log_dir: str | None = None,
        per_image: bool = False,
        transpose: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images}.")
        self.output_dir = output_dir
        self.num_images = num_images
        self.log_dir = log_dir
        self.per_image = per_image
        self.transpose = transpose
        self._panels: tuple[list[str], tuple[torch.Tensor, ...]] | None = None
        self._writer: Any = None
        self._count = 0

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if self.per_image:
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._figure_per_image)
        else:
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._keep_first_batch)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._figure_for_epoch)

    def panels(self, engine: Engine, count: int | None = None) -> tuple[list[str], tuple[torch.Tensor, ...]]:
        """Names and the five image panels of the first ``count`` images of the batch just run, on the CPU.

        Panels: original, spatial mask, frequency-masked, dual-masked (the network input), reconstruction.

        Raises:
            TypeError: the engine's ``prepare_batch`` keeps no masks (it is not a ``DualMaskPrepareBatch``).
        """
        prepare = getattr(engine, "prepare_batch", None)
        masks = getattr(prepare, "masks", None)
        if not isinstance(masks, DualMaskDraws):
            raise TypeError(
                "ReconstructionFigures needs an engine whose prepare_batch is a DualMaskPrepareBatch that has "
                f"masked a batch, got {type(prepare).__name__}."
            )
        output = engine.state.output
        original, masked, pred = output[Keys.LABEL], output[Keys.IMAGE], output[Keys.PRED]
        n = original.shape[0] if count is None else min(count, original.shape[0])
        names = _names(original, self._count)[:n]
        views = masked_views(prepare.masker, original[:n], masks[:n])
        panels = (original[:n], views["spatial_mask"], views["frequency_masked"], masked[:n], pred[:n].clamp(0, 1))
        return names, tuple(p.detach().float().cpu() for p in panels)

    def _upright(self, *panels: torch.Tensor) -> list[torch.Tensor]:
        return [p.transpose(-1, -2) if self.transpose else p for p in panels]

    def _keep_first_batch(self, engine: Engine) -> None:
        if engine.state.iteration == 1 or self._panels is None:
            self._panels = self.panels(engine, self.num_images)

    def _figure_for_epoch(self, engine: Engine) -> None:
        if self._panels is None:
            return
        names, panels = self._panels
        rgb = reconstruction_figure(*self._upright(*panels), titles=names)
        epoch = engine.state.epoch
        path = save_png_atomic(rgb, os.path.join(self.output_dir, f"reconstruction_epoch{epoch:04d}.png"))
        logger.info(f"reconstruction figure: {path}")
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_image("reconstruction", rgb, global_step=epoch, dataformats="HWC")
            self._writer.flush()

    def _figure_per_image(self, engine: Engine) -> None:
        names, panels = self.panels(engine)
        for i, name in enumerate(names):
            rgb = reconstruction_figure(*self._upright(*(p[i : i + 1] for p in panels)), titles=[name])
            save_png_atomic(rgb, os.path.join(self.output_dir, f"{name}_reconstruction.png"))
        self._count += len(names)
