"""Masked image modelling as ``SupervisedTrainer`` + a ``PrepareBatch`` (paper eq. 8–9).

The trainer's step stays MONAI's: ``prepare_batch`` moves the batch to the device, draws the spatial-frequency
dual masks there (:meth:`DualMaskPrepareBatch.get_masks`, shaped like MONAI's ``DiffusionPrepareBatch.get_noise``),
applies them (``BatchedDualDomainMask.apply``, i.e. :func:`usfm_monai.transforms.masking.dual_domain_mask`) and
returns ``(dual_masked_image, original_image)``; the network reconstructs the original from the masked input
and the loss (L1 + λ·FFL) compares them. The draws of the last batch stay in :attr:`DualMaskPrepareBatch.masks`
for handlers (the reconstruction figures) that show what the network saw.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch

from usfm_monai.transforms.dual_mask import DualMaskDraws

__all__ = ["DualMaskPrepareBatch"]


class DualMaskPrepareBatch(PrepareBatch):
    """Return ``(masked, original)`` for a batch dict whose ``image_key`` holds ``(B, C, H, W)`` images in [0, 1].

    Args:
        masker: draws and applies the masks on the batch's device: ``masker.draw(batch_size, spatial_shape,
            generator=..., device=...)`` and ``masker.apply(images, draws)``, such as
            ``usfm_monai.transforms.BatchedDualDomainMask``.
        image_key: batch key of the images.
        seed: seed of the mask generator.
        deterministic: draw the same masks every time a batch is seen (validation): the generator is re-seeded
            from ``seed`` and the batch's file names (``MetaTensor`` metadata, without their folders), so every
            validation pass and every rank masks an image identically, wherever the dataset lives. ``False``
            (training): one generator, fresh masks each step.

    Attributes:
        generator: the training mask generator (CPU ``torch.Generator``); checkpoints save and restore it.
        masks: the :class:`~usfm_monai.transforms.DualMaskDraws` of the last batch (on its device), ``None``
            before the first one.
    """

    def __init__(self, masker: Any, image_key: str = "image", seed: int = 0, deterministic: bool = False) -> None:
        if not (callable(getattr(masker, "draw", None)) and callable(getattr(masker, "apply", None))):
            raise TypeError(f"masker needs draw() and apply() like BatchedDualDomainMask, got {type(masker).__name__}.")
        self.masker = masker
        self.image_key = image_key
        self.seed = int(seed)
        self.deterministic = deterministic
        self.generator = torch.Generator().manual_seed(self.seed)
        self.masks: DualMaskDraws | None = None

    def _batch_seed(self, images: torch.Tensor) -> int:
        names = images.meta.get("filename_or_obj") if isinstance(images, MetaTensor) else None
        names = names if isinstance(names, (list, tuple)) else [names]
        # file names without folders: the validation masks (and metrics) must not change when the data moves
        text = "|".join(os.path.basename(str(name)) for name in names)
        return (self.seed + zlib.crc32(f"{text}|{tuple(images.shape)}".encode())) % (2**63)

    def get_generator(self, images: torch.Tensor) -> torch.Generator:
        """The generator the masks of ``images`` are drawn from (re-seeded per batch when ``deterministic``)."""
        if self.deterministic:
            return torch.Generator().manual_seed(self._batch_seed(images))
        return self.generator

    def get_masks(self, images: torch.Tensor) -> DualMaskDraws:
        """Draw the masks of ``images`` on their device; override this for another mask distribution."""
        generator = self.get_generator(images)
        return self.masker.draw(images.shape[0], images.shape[-2:], generator=generator, device=images.device)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batchdata, dict) or self.image_key not in batchdata:
            found = list(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
            raise KeyError(f"DualMaskPrepareBatch expects a batch dict with key '{self.image_key}', found {found}.")
        images = batchdata[self.image_key]
        if images.ndim != 4:
            raise ValueError(f"'{self.image_key}' must be (B, C, H, W) images, got shape {tuple(images.shape)}.")
        images = images.to(device=device, non_blocking=non_blocking, **kwargs)
        with torch.no_grad():
            masks = self.get_masks(images)
            masked = self.masker.apply(images, masks)
        self.masks = masks
        return masked, images
