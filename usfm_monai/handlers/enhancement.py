"""Side-by-side PNG figures of image enhancement: input | enhanced | target (USFM paper §4.1.2, Fig. 9).

The enhancement bundle writes one figure per image from its evaluator or inference run, so enhanced images can be
compared with the low-quality input and, when known, the high-quality target at a glance. Panels are joined as
plain gray levels (no plotting library, no resampling of intensities), so a figure is an exact, testable picture
of the tensors the network saw and produced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch

from usfm_monai.utils import is_main_process
from usfm_monai.visualize import save_png_atomic

__all__ = ["side_by_side", "load_target_image", "SideBySideWriter"]

logger = logging.getLogger(__name__)


def _plane(panel: Any, name: str) -> torch.Tensor:
    """A ``(X, Y)`` float tensor from a ``(X, Y)`` or single-channel ``(1, X, Y)`` image."""
    t = torch.as_tensor(panel.as_tensor() if isinstance(panel, MetaTensor) else panel).detach().float().cpu()
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (X, Y) or (1, X, Y), got shape {tuple(t.shape)}.")
    return t


def side_by_side(
    panels: Sequence[Any], size: Sequence[int] | None = None, gap: int = 4, gap_value: int = 255, transpose: bool = True
) -> np.ndarray:
    """Join grayscale images left to right into one ``uint8`` picture.

    Each panel is clipped to ``[0, 1]``, resized (bilinear, ``align_corners=False``) to ``size`` when its
    spatial shape differs, and mapped to gray levels ``round(255 x)``. Panels are separated by ``gap`` columns of
    ``gap_value``.

    Args:
        panels: images in ``[0, 1]``, each ``(X, Y)`` or ``(1, X, Y)``, numpy or torch.
        size: common ``(X, Y)`` of the panels; default: the first panel's shape.
        gap: separator width in pixels (``>= 0``).
        gap_value: separator gray level in ``[0, 255]``.
        transpose: MONAI's PIL reader loads a PNG of width ``W`` and height ``H`` as ``(W, H)``; with ``True``
            each panel is transposed back so the figure shows the anatomy as in the file.

    Returns:
        ``uint8`` array ``(H, n * W + (n - 1) * gap)`` (``(X, ...)`` rows when ``transpose=False``).

    Raises:
        ValueError: no panel, a panel that is not 2-D / single-channel, a negative ``gap`` or a ``gap_value``
            outside ``[0, 255]``.
    """
    if len(panels) == 0:
        raise ValueError("side_by_side needs at least one panel.")
    if not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be an int >= 0, got {gap!r}.")
    if not 0 <= int(gap_value) <= 255:
        raise ValueError(f"gap_value must be in [0, 255], got {gap_value!r}.")
    planes = [_plane(p, f"panels[{i}]") for i, p in enumerate(panels)]
    target = tuple(int(s) for s in (size if size is not None else planes[0].shape))
    columns: list[np.ndarray] = []
    for plane in planes:
        if tuple(plane.shape) != target:
            plane = F.interpolate(plane[None, None], size=target, mode="bilinear", align_corners=False)[0, 0]
        gray = torch.round(plane.clamp(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
        columns.append(gray.T if transpose else gray)
    rows = columns[0].shape[0]
    separator = np.full((rows, gap), int(gap_value), dtype=np.uint8)
    joined: list[np.ndarray] = []
    for i, column in enumerate(columns):
        if i:
            joined.append(separator)
        joined.append(column)
    return np.ascontiguousarray(np.concatenate(joined, axis=1))


def load_target_image(path: str) -> torch.Tensor:
    """Load a high-quality target the way the bundle loads its images: ``(1, X, Y)`` float32 in ``[0, 1]``.

    MONAI ``LoadImage`` (PIL for PNG/JPG, so ``X`` is the width), ``EnsureGrayscale``, then
    ``ScaleIntensity8Bit`` (``/ 255``; other bit depths are rejected, as in the bundles).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the image is not 8-bit (values outside ``[0, 255]``).
    """
    from monai.transforms import LoadImage

    from usfm_monai.transforms.grayscale import EnsureGrayscale
    from usfm_monai.transforms.intensity import ScaleIntensity8Bit

    if not os.path.isfile(path):
        raise FileNotFoundError(f"target image {path} does not exist.")
    img = LoadImage(image_only=True, ensure_channel_first=True)(path)
    img = EnsureGrayscale()(img)
    return torch.as_tensor(ScaleIntensity8Bit()(img)).float()


def _filename(*tensors: Any) -> str | None:
    for t in tensors:
        if isinstance(t, MetaTensor):
            name = t.meta.get("filename_or_obj")
            if isinstance(name, (list, tuple)):
                name = name[0] if name else None
            if name:
                return str(name)
    return None


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


class SideBySideWriter:
    """Write ``input | enhanced | target`` PNG figures for every image an evaluator processes.

    Attach to a MONAI evaluator (``val_handlers``). At each ``ITERATION_COMPLETED`` the (decollated) output items
    are read: ``image_key`` (the network input), ``pred_key`` (the enhanced image) and, when present and not
    ``None``, ``target_key`` (the evaluator's ``label``, i.e. the high-quality target with
    ``PrepareBatchImageTarget``). Without one in the output, and with ``target_dir`` set, the file of the same
    name in ``target_dir`` is loaded with ``target_loader`` (USEnhance keeps low- and high-quality images under
    the same name in sibling folders). A target that cannot be found is left out of that figure (two panels).

    Each figure is ``<output_dir>/<input name>_<postfix>.png``; the panels are resized to the enhanced image's
    size (the inference bundle inverts the resize, so that is the input file's size) and joined by
    :func:`side_by_side`. All images are expected in ``[0, 1]`` (write PNGs with ``SaveImaged(scale=255)`` so the
    output keeps that range). Only the main rank writes.

    Args:
        output_dir: folder of the figures.
        image_key: output key of the low-quality input.
        pred_key: output key of the enhanced image.
        target_key: output key of the high-quality target.
        target_dir: folder to look up targets by file name when the output has none (``None``: no look-up).
        target_loader: ``path -> (1, X, Y)`` image in ``[0, 1]``; default :func:`load_target_image`.
        postfix: file name postfix.
        gap: separator width in pixels.
        transpose: show MONAI's ``(W, H)`` arrays upright (see :func:`side_by_side`).

    Raises:
        ValueError: an empty ``postfix`` or a negative ``gap``.
    """

    def __init__(
        self,
        output_dir: str,
        image_key: str = "image",
        pred_key: str = "pred",
        target_key: str = "label",
        target_dir: str | None = None,
        target_loader: Callable[[str], Any] | None = None,
        postfix: str = "side_by_side",
        gap: int = 4,
        transpose: bool = True,
    ) -> None:
        if not postfix:
            raise ValueError("postfix must be a non-empty string, otherwise figures would overwrite the inputs' names.")
        if not isinstance(gap, int) or gap < 0:
            raise ValueError(f"gap must be an int >= 0, got {gap!r}.")
        self.output_dir = output_dir
        self.image_key = image_key
        self.pred_key = pred_key
        self.target_key = target_key
        self.target_dir = target_dir
        self.target_loader = load_target_image if target_loader is None else target_loader
        self.postfix = postfix
        self.gap = gap
        self.transpose = transpose
        self._count = 0
        self._warned_missing = False

    def attach(self, engine: Engine) -> None:
        if is_main_process():
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _items(self, output: Any) -> list[Mapping[str, Any]]:
        if isinstance(output, Mapping):  # an engine run with decollate=False
            return list(decollate_batch(output, detach=True))
        if isinstance(output, (list, tuple)):
            return list(output)
        raise TypeError(
            f"SideBySideWriter expects a dict or a list of dicts as engine output, got {type(output).__name__}."
        )

    def _target(self, item: Mapping[str, Any], filename: str | None) -> Any:
        target = item.get(self.target_key)
        if target is not None:
            return target
        if self.target_dir is None or filename is None:
            return None
        path = os.path.join(self.target_dir, os.path.basename(filename))
        if not os.path.isfile(path):
            if not self._warned_missing:
                logger.warning(f"no target {path} for {filename}: figures without a target column are written.")
                self._warned_missing = True
            return None
        return self.target_loader(path)

    def __call__(self, engine: Engine) -> None:
        for item in self._items(engine.state.output):
            for key in (self.image_key, self.pred_key):
                if key not in item:
                    raise KeyError(f"SideBySideWriter: engine output has no key {key!r} (found {sorted(item)}).")
            image, pred = item[self.image_key], item[self.pred_key]
            filename = _filename(image, pred)
            stem = _stem(filename) if filename else f"image_{self._count:05d}"
            panels = [image, pred]
            target = self._target(item, filename)
            if target is not None:
                panels.append(target)
            size = _plane(pred, self.pred_key).shape
            rgb = side_by_side(panels, size=tuple(size), gap=self.gap, transpose=self.transpose)
            save_png_atomic(rgb, os.path.join(self.output_dir, f"{stem}_{self.postfix}.png"))
            self._count += 1
