"""Reconstruction figures like the paper's Fig. 6, written as PNG files and to TensorBoard."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from usfm_monai.bundle import is_main_process
from usfm_monai.transforms.dual_mask import BatchedDualDomainMask, DualMaskDraws
from usfm_monai.transforms.spatial_mask import block_grid_to_pixel_mask
from usfm_monai.visualize import reconstruction_figure, save_png_atomic

__all__ = ["masked_views", "ReconstructionFigures"]

logger = logging.getLogger(__name__)


def masked_views(
    masker: BatchedDualDomainMask, images: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The intermediate images of one dual-masking draw, for figures.

    Args:
        masker: the batched dual-domain mask used in training.
        images: ``(B, C, H, W)`` originals in ``[0, 1]``.
        generator: draws the masks (seed it for the same masks every epoch).

    Returns:
        ``spatial_mask`` ``(B, 1, H, W)`` (1 = block filled with the mean), ``frequency_masked`` (band-stopped
        image, no spatial mask), ``dual_masked`` (the network input, eq. 8), each ``(B, C, H, W)`` float.
    """
    draws = masker.draw(images.shape[0], tuple(images.shape[-2:]), generator=generator, device=images.device)
    dual = masker.apply(images, draws)
    frequency_only = DualMaskDraws(block_grids=torch.zeros_like(draws.block_grids), band_ids=draws.band_ids)
    frequency_masked = masker.apply(images, frequency_only)
    spatial = block_grid_to_pixel_mask(draws.block_grids, tuple(images.shape[-2:]), masker.block_size)
    return {"spatial_mask": spatial[:, None].float(), "frequency_masked": frequency_masked, "dual_masked": dual}


def _names(images: torch.Tensor, start: int) -> list[str]:
    names = images.meta.get("filename_or_obj") if isinstance(images, MetaTensor) else None
    if isinstance(names, (list, tuple)) and len(names) == images.shape[0]:
        return [os.path.splitext(os.path.basename(str(n)))[0] for n in names]
    return [f"image_{start + i:05d}" for i in range(images.shape[0])]


class ReconstructionFigures:
    """Write original | spatial mask | frequency mask | dual-masked input | reconstruction | spectra figures.

    Attach to an evaluator whose batches hold the originals under ``image_key``.

    - ``per_image=False`` (validation): the first ``num_images`` images of the first batch are masked with a
      generator re-seeded from ``seed`` (the same masks every epoch, so figures are comparable over training)
      and reconstructed by ``network`` at every ``EPOCH_COMPLETED``; the figure goes to
      ``<output_dir>/reconstruction_epoch<NNNN>.png`` and, with ``log_dir``, to TensorBoard.
    - ``per_image=True`` (inference): every image of every batch gets its own figure,
      ``<output_dir>/<image name>_reconstruction.png``.

    Args:
        network: the masked image model, ``(B, C, H, W) -> (B, C, H, W)`` (DDP wrappers are unwrapped).
        masker: the batched dual-domain mask.
        output_dir: folder of the PNG files.
        num_images: rows of the validation figure.
        log_dir: TensorBoard folder (``None``: PNG only).
        seed: mask seed.
        per_image: inference mode, see above.
        image_key: batch key of the originals.
        transpose: show ``(W, H)`` arrays upright. MONAI's PIL reader (the default for PNG/JPG) loads 2-D images
            as ``(W, H)``; the figure transposes them back so anatomy appears as in the file.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        masker: BatchedDualDomainMask,
        output_dir: str,
        num_images: int = 4,
        log_dir: str | None = None,
        seed: int = 0,
        per_image: bool = False,
        image_key: str = "image",
        transpose: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images}.")
        self.network = network
        self.masker = masker
        self.output_dir = output_dir
        self.num_images = num_images
        self.log_dir = log_dir
        self.seed = seed
        self.per_image = per_image
        self.image_key = image_key
        self.transpose = transpose
        self._images: torch.Tensor | None = None
        self._writer: Any = None
        self._count = 0

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if self.per_image:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._figure_per_image)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep_first_batch)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._figure_for_epoch)

    def _batch_images(self, engine: Engine) -> torch.Tensor:
        batch = engine.state.batch
        if isinstance(batch, (list, tuple)):  # MONAI engines decollate the batch after the model step
            from monai.data import list_data_collate

            batch = list_data_collate([{self.image_key: item[self.image_key]} for item in batch])
        return batch[self.image_key]

    def _keep_first_batch(self, engine: Engine) -> None:
        if engine.state.iteration == 1 or self._images is None:
            self._images = self._batch_images(engine)[: self.num_images].detach().clone()

    @torch.no_grad()
    def _render(self, images: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        network = getattr(self.network, "module", self.network)
        was_training = network.training
        network.eval()
        try:
            images = images.to(device)
            generator = torch.Generator().manual_seed(self.seed)
            views = masked_views(self.masker, images, generator)
            recon = network(views["dual_masked"]).float().clamp(0, 1)
        finally:
            network.train(was_training)
        return views, recon

    def _upright(self, *panels: torch.Tensor) -> list[torch.Tensor]:
        return [p.detach().float().cpu().transpose(-1, -2) if self.transpose else p.detach().float().cpu() for p in panels]

    def _device(self, engine: Engine) -> torch.device:
        device = getattr(engine.state, "device", None) or getattr(engine, "device", None)
        return torch.device(device) if device is not None else next(self.network.parameters()).device

    def _figure_for_epoch(self, engine: Engine) -> None:
        if self._images is None:
            return
        images = torch.as_tensor(self._images)
        views, recon = self._render(images, self._device(engine))
        rgb = reconstruction_figure(
            *self._upright(images, views["spatial_mask"], views["frequency_masked"], views["dual_masked"], recon),
            titles=_names(self._images, 0),
        )
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
        images = self._batch_images(engine)
        views, recon = self._render(torch.as_tensor(images), self._device(engine))
        for i, name in enumerate(_names(images, self._count)):
            panels = (images, views["spatial_mask"], views["frequency_masked"], views["dual_masked"], recon)
            rgb = reconstruction_figure(*self._upright(*(p[i : i + 1] for p in panels)), titles=[name])
            save_png_atomic(rgb, os.path.join(self.output_dir, f"{name}_reconstruction.png"))
        self._count += images.shape[0]
