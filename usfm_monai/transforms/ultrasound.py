"""Transforms for ultrasound as scanners write it: one frame of a cine loop, the imaged region of a DICOM frame.

Both act on what MONAI's ``LoadImage`` returns (channel-first, ``(C, W, H[, F])`` for DICOM read by ITK) and
keep the metadata: :class:`SelectFrame` records the frame as ``patch_index`` (so ``SaveImage`` writes
``<stem>_<postfix>_<frame>.png``, one mask per frame), and :class:`CropUltrasoundRegion` is an invertible MONAI
crop, so ``Invertd`` pads a prediction back to the full frame (zeros outside the imaged region).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Crop, InvertibleTransform, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from usfm_monai.data.dicom import is_dicom, ultrasound_region

__all__ = ["SelectFrame", "SelectFramed", "CropUltrasoundRegion", "CropUltrasoundRegiond"]

logger = logging.getLogger(__name__)


class SelectFrame(Transform):
    """Keep one frame of a channel-first multi-frame image ``(C, W, H, F)`` → ``(C, W, H, 1)``.

    The frame index is stored in the metadata as ``patch_index``, which ``SaveImage`` and
    :class:`usfm_monai.handlers.segmentation.SegmentationOverlay` append to the output file name.

    Args:
        frame_dim: the frame axis (default the last one).

    Raises:
        ValueError: the image has no such axis or the index is out of range (message names the file).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, frame_dim: int = -1) -> None:
        self.frame_dim = frame_dim

    def __call__(self, img: torch.Tensor, frame: int) -> torch.Tensor:
        """
        Args:
            img: channel-first image ``(C, spatial_dim_1, ..., F)``.
            frame: index in ``[0, F)``.

        Returns:
            the image with the frame axis of size 1 (a ``MetaTensor`` when metadata is tracked).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        name = img.meta.get("filename_or_obj", "image") if isinstance(img, MetaTensor) else "image"
        if img.ndim < 3:
            raise ValueError(f"{name}: expected a channel-first multi-frame image, got shape {tuple(img.shape)}.")
        n = img.shape[self.frame_dim]
        frame = int(frame)
        if not 0 <= frame < n:
            raise ValueError(f"{name}: frame {frame} is out of range, the image has {n} frame(s) (shape {tuple(img.shape)}).")
        out = img.narrow(self.frame_dim, frame, 1)
        if isinstance(out, MetaTensor):
            out.meta["patch_index"] = frame
        return out


class SelectFramed(MapTransform):
    """Dictionary version of :class:`SelectFrame`: the frame index is read from ``frame_key`` and removed.

    Items without ``frame_key`` (single-frame images) pass unchanged, and the key is removed from the others,
    so single- and multi-frame items collate into one batch.

    Args:
        keys: keys of the images.
        frame_key: key holding the frame index (as written by
            :func:`usfm_monai.data.inference_inputs.inference_items`).
        frame_dim: the frame axis.
        allow_missing_keys: do not raise when an image key is absent.
    """

    backend = SelectFrame.backend

    def __init__(
        self, keys: KeysCollection, frame_key: str = "frame", frame_dim: int = -1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.selector = SelectFrame(frame_dim)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.frame_key not in d:
            return d
        frame = d.pop(self.frame_key)
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key], frame)
        return d


class CropUltrasoundRegion(InvertibleTransform):
    """Crop a DICOM ultrasound frame to its imaged region (``SequenceOfUltrasoundRegions``).

    The region is read from the header of the file named in the image's ``filename_or_obj`` metadata
    (:func:`usfm_monai.data.dicom.ultrasound_region`). Images that are not DICOM, or whose header has no region,
    pass unchanged (the latter is logged once per file). The crop is MONAI's invertible ``Crop``: ``inverse``
    (and ``Invertd``) pads back to the full frame.

    Input: channel-first ``(C, W, H)`` as ``LoadImage`` + ITK returns it (spatial dim 0 = columns = x).

    Raises:
        ValueError: a malformed region header (names the file).
    """

    backend = Crop.backend

    def __init__(self) -> None:
        self.cropper = Crop()
        self._reported: set[str] = set()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
        box = ultrasound_region(name) if isinstance(name, str) and is_dicom(name) else None
        if box is None:
            if isinstance(name, str) and is_dicom(name) and name not in self._reported:
                self._reported.add(name)
                logger.warning("%s has no SequenceOfUltrasoundRegions: the whole frame is used.", os.path.basename(name))
            # record an identity crop so inverse() always has an entry to pop
            box = (0, 0, img.shape[1] - 1, img.shape[2] - 1)
        x0, y0, x1, y1 = box
        if img.ndim != 3 or x1 >= img.shape[1] or y1 >= img.shape[2]:
            raise ValueError(
                f"{name}: ultrasound region {box} (x0, y0, x1, y1) does not fit an image of shape {tuple(img.shape)} "
                "(expected channel-first (C, W, H))."
            )
        return self.cropper(img, (slice(x0, x1 + 1), slice(y0, y1 + 1)))  # spatial dims only: W (x), H (y)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        return self.cropper.inverse(data)


class CropUltrasoundRegiond(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`CropUltrasoundRegion`.

    Args:
        keys: keys of the images (each is cropped to the region of its own file).
        allow_missing_keys: do not raise when a key is absent.
    """

    backend = CropUltrasoundRegion.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cropper = CropUltrasoundRegion()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(d[key])
        return d
