"""Segmentation overlays: the image in gray with the predicted mask blended in color (paper Fig. 8 style).

The overlay is MONAI's :func:`monai.visualize.utils.blend_images` (per pixel,
``(1 - w) * gray + w * cmap(class / (K - 1))`` with ``w = alpha`` on foreground pixels and ``w = 0`` on the
background), written by MONAI's ``PILWriter`` and named by MONAI's ``FolderLayout``, so an overlay has exactly
the orientation, size and file stem of the mask PNG that ``SaveImaged`` writes next to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, PILWriter
from monai.data.folder_layout import FolderLayout
from monai.visualize.utils import blend_images

from usfm_monai.utils import is_main_process

__all__ = ["overlay_mask", "SegmentationOverlay"]

logger = logging.getLogger(__name__)


def _channel_first(x: Any, name: str, spatial_ndim: int) -> torch.Tensor:
    t = torch.as_tensor(x.as_tensor() if isinstance(x, MetaTensor) else x).detach().cpu().float()
    if t.ndim == spatial_ndim:
        t = t[None]
    if t.ndim != spatial_ndim + 1:
        raise ValueError(
            f"{name} must have shape (C, H, W) or (H, W) (spatial_ndim={spatial_ndim}), got {tuple(t.shape)}."
        )
    return t


def overlay_mask(
    image: Any,
    mask: Any,
    alpha: float = 0.4,
    cmap: str = "hsv",
    num_classes: int = 2,
) -> np.ndarray:
    """Blend a class-index mask over a gray image.

    Args:
        image: ``(1, H, W)``, ``(3, H, W)`` or ``(H, W)``, float intensity in ``[0, 1]`` (values outside are
            clipped, no rescaling, so the gray levels are those the network saw).
        mask: ``(1, H, W)`` or ``(H, W)`` class indices in ``[0, num_classes)`` (0 = background, left uncolored).
        alpha: opacity of the colored classes, in ``[0, 1]``.
        cmap: matplotlib colormap; class ``k`` gets ``cmap(k / (num_classes - 1))`` (``"hsv"``: the foreground
            of a binary mask is red).
        num_classes: ``K`` including the background.

    Returns:
        uint8 array ``(3, H, W)``, RGB in ``[0, 255]``, in the same (channel-first, MONAI) layout as the inputs.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``, ``num_classes < 2``, malformed shapes, spatial sizes that differ,
            or mask values that are not class indices.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and foreground), got {num_classes}.")
    img = _channel_first(image, "image", 2).clamp(0.0, 1.0)
    lab = _channel_first(mask, "mask", 2)
    if img.shape[0] not in (1, 3) or lab.shape[0] != 1:
        raise ValueError(
            f"image must have 1 or 3 channels and mask 1, got image {tuple(img.shape)} and mask {tuple(lab.shape)}."
        )
    if img.shape[1:] != lab.shape[1:]:
        raise ValueError(
            f"image and mask must have the same spatial size, got {tuple(img.shape[1:])} and {tuple(lab.shape[1:])}."
        )
    if not torch.all((lab >= 0) & (lab < num_classes) & (lab == torch.round(lab))):
        raise ValueError(
            f"mask must hold class indices in [0, {num_classes}), got values {torch.unique(lab)[:8].tolist()}."
        )
    rgb = blend_images(img, lab / (num_classes - 1), alpha=alpha, cmap=cmap, rescale_arrays=False)
    return (rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


class SegmentationOverlay:
    """Write one overlay PNG per image (``<output_dir>/<stem>_<output_postfix>.png``) for an evaluator.

    Attach to a MONAI evaluator whose postprocessing leaves, in each decollated output item, the image under
    ``image_key`` and the predicted class-index mask under ``pred_key`` on the same grid: e.g. after
    ``Invertd(keys=["pred", "image"], orig_keys="image")`` and ``AsDiscreted(keys="pred", argmax=True)`` for
    overlays at the input file's size, or directly at the network's size. Masks without a channel axis
    (``(H, W)``, as MONAI Label expects) are accepted. The file stem comes from the image's
    ``filename_or_obj`` metadata (as ``SaveImaged`` names files); items without one are numbered. Only the main
    process writes: under ``torch.distributed`` that is rank 0's share of the images.

    Args:
        output_dir: folder of the PNG files (created).
        image_key: output key of the image, intensity in ``[0, 1]``.
        pred_key: output key of the class-index mask.
        alpha: opacity of the colored classes.
        cmap: matplotlib colormap (see :func:`overlay_mask`).
        num_classes: ``K`` including the background.
        output_postfix: appended to the file stem.
        mask_scale: the class index ``k`` is stored as ``k * mask_scale`` under ``pred_key`` (e.g. 255 for 0/255
            binary mask files); the overlay divides it back out.

    Raises:
        ValueError: bad ``alpha``, ``num_classes`` or ``mask_scale`` (at construction); at run time, see
            :func:`overlay_mask`.
        KeyError: an output item lacks ``image_key`` or ``pred_key``.
    """

    def __init__(
        self,
        output_dir: str,
        image_key: str = "image",
        pred_key: str = "pred",
        alpha: float = 0.4,
        cmap: str = "hsv",
        num_classes: int = 2,
        output_postfix: str = "overlay",
        mask_scale: float = 1,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and foreground), got {num_classes}.")
        if mask_scale <= 0:
            raise ValueError(f"mask_scale must be > 0, got {mask_scale}.")
        self.output_dir = output_dir
        self.mask_scale = mask_scale
        self.image_key = image_key
        self.pred_key = pred_key
        self.alpha = alpha
        self.cmap = cmap
        self.num_classes = num_classes
        self.folder_layout = FolderLayout(output_dir, postfix=output_postfix, extension=".png", makedirs=True)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _items(self, engine: Engine) -> Sequence[Mapping[str, Any]]:
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        for item in items:
            for key in (self.image_key, self.pred_key):
                if not isinstance(item, Mapping) or key not in item:
                    found = sorted(item) if isinstance(item, Mapping) else type(item).__name__
                    raise KeyError(f"SegmentationOverlay needs key {key!r} in each output item, found {found}.")
        return items

    def _name(self, item: Mapping[str, Any]) -> str:
        for key in (self.image_key, self.pred_key):
            value = item[key]
            name = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
            if isinstance(name, str) and name:
                return name
        return f"image_{self._count:05d}"

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        for item in self._items(engine):
            mask = torch.as_tensor(item[self.pred_key]).float() / self.mask_scale
            rgb = overlay_mask(item[self.image_key], mask, self.alpha, self.cmap, self.num_classes)
            image = item[self.image_key]
            # the frame of a multi-frame input (SelectFrame's patch_index), named as SaveImaged names its mask
            frame = image.meta.get("patch_index") if isinstance(image, MetaTensor) else None
            path = self.folder_layout.filename(subject=self._name(item), idx=frame)
            writer = PILWriter(output_dtype=np.uint8, scale=None)
            # channel-first (3, d0, d1) like the masks SaveImaged writes; PILWriter applies the same axis order
            writer.set_data_array(rgb, channel_dim=0)
            writer.write(path)
            self._count += 1
        logger.debug(f"segmentation overlays written to {os.path.abspath(self.output_dir)}")
