"""MONAI transforms for the spatial mean mask, USFM paper eq. 2 (Jiao et al., arXiv 2401.00153, sec. 3.2.1).

:class:`RandSpatialMeanMask` and its dictionary twin :class:`RandSpatialMeanMaskd` are thin wrappers of
:mod:`usfm_monai.transforms.masking` (where the equation and the block geometry are documented): they draw with
a ``torch.Generator`` seeded from ``self.R`` and call the core functions on a batch of one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_dst_type

from usfm_monai.transforms.masking import (
    _check_free_key,
    _common_spatial_shape,
    _image_tensor,
    block_grid_to_pixel_mask,
    check_int,
    check_ratio,
    draw_block_grids,
    generator_from_random_state,
    spatial_mean_mask,
)

__all__ = ["RandSpatialMeanMask", "RandSpatialMeanMaskd"]


class RandSpatialMeanMask(Randomizable):
    """Spatial mean masking of USFM (Jiao et al., arXiv 2401.00153, eq. 2).

    The image is partitioned into ``block_size x block_size`` blocks (edge blocks are partial when ``H`` or
    ``W`` is not a multiple of ``block_size``); each block is masked independently with probability
    ``mask_ratio``, and the pixels of masked blocks are replaced by the mean of the whole image, per channel.
    The draw is stored in :attr:`block_grid`, a ``(ceil(H / block_size), ceil(W / block_size))`` bool CPU
    tensor (True = masked), and :meth:`pixel_mask` expands it to ``(H, W)``. The draw comes from a
    ``torch.Generator`` seeded from ``self.R``, so ``set_random_state`` makes it reproducible.

    Data is channel-first ``(num_channels, H, W)``, floating point, numpy or torch; the result is a tensor
    with the input's dtype and device (a ``MetaTensor`` when metadata is tracked).

    Args:
        block_size: side of the square blocks in pixels, ``>= 1`` (the paper's default is 32).
        mask_ratio: probability that a block is masked, in ``[0, 1]``; 0 is the identity mapping
            (the paper uses 0.4).

    Raises:
        TypeError: when ``block_size`` is not an integer or ``mask_ratio`` is not a number.
        ValueError: when ``block_size < 1`` or ``mask_ratio`` is outside ``[0, 1]``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, block_size: int = 32, mask_ratio: float = 0.4) -> None:
        self.block_size = check_int("block_size", block_size, 1)
        self.mask_ratio = check_ratio("mask_ratio", mask_ratio)
        self.block_grid: torch.Tensor | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Draw :attr:`block_grid` for the spatial shape of ``img`` (``(C, H, W)``), from ``self.R`` only."""
        if len(img.shape) != 3:
            raise ValueError(f"{type(self).__name__} expects a (C, H, W) image, got shape {tuple(img.shape)}.")
        generator = generator_from_random_state(self.R)
        self.block_grid = draw_block_grids(1, img.shape[1:], self.block_size, self.mask_ratio, generator)[0]

    def pixel_mask(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The drawn block grid as an ``(H, W)`` bool pixel mask, True = masked.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when the drawn grid does not fit ``spatial_shape``.
        """
        if self.block_grid is None:
            raise RuntimeError(f"{type(self).__name__}: please call the `randomize()` function first.")
        return block_grid_to_pixel_mask(self.block_grid, spatial_shape, self.block_size)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Mask ``img``, ``(C, H, W)``; with ``randomize=False`` the last draw is replayed.

        Raises:
            RuntimeError: ``randomize=False`` before any draw.
            ValueError: the image is not ``(C, H, W)``, or the replayed grid does not fit it.
            TypeError: the image is not floating point.
        """
        img, img_t = _image_tensor(img, type(self).__name__)
        if randomize:
            self.randomize(img_t)
        pixel = self.pixel_mask(img_t.shape[1:]).to(img_t.device)
        out = spatial_mean_mask(img_t[None], pixel[None])[0]
        out, *_ = convert_to_dst_type(out, dst=img)
        return out


class RandSpatialMeanMaskd(Randomizable, MapTransform):
    """Dictionary-based version of :class:`RandSpatialMeanMask`.

    One block grid is drawn per call and applied to every key (each key is filled with its own per-channel
    mean). All keys must share the spatial shape ``(H, W)``.

    Args:
        keys: keys of the items to mask. See also: :py:class:`monai.transforms.MapTransform`.
        block_size: side of the square blocks in pixels, ``>= 1``.
        mask_ratio: probability that a block is masked, in ``[0, 1]``; 0 is the identity mapping.
        mask_key: if given, the pixel mask is written there as a ``(1, H, W)`` tensor with the dtype and
            device of the first key's image, 1 = masked.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        ValueError: bad ``block_size`` / ``mask_ratio`` (see :class:`RandSpatialMeanMask`), or ``mask_key`` is
            one of ``keys``; at call time, keys whose spatial shapes differ.
        KeyError: a missing key (unless ``allow_missing_keys``), or ``mask_key`` already in the data.
    """

    backend = RandSpatialMeanMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        block_size: int = 32,
        mask_ratio: float = 0.4,
        mask_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if mask_key is not None and mask_key in self.keys:
            raise ValueError(f"mask_key {mask_key!r} must differ from the masked keys {self.keys}.")
        self.mask_key = mask_key
        self.masker = RandSpatialMeanMask(block_size=block_size, mask_ratio=mask_ratio)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSpatialMeanMaskd:
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def randomize(self, data: NdarrayOrTensor) -> None:
        """Draw the block grid for the image ``data`` (``(C, H, W)``)."""
        self.masker.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        spatial_shape = _common_spatial_shape(d, self.key_iterator(d), type(self).__name__)
        if self.mask_key is not None:
            _check_free_key(d, self.mask_key, type(self).__name__)
        self.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key], randomize=False)
        if self.mask_key is not None:
            mask = self.masker.pixel_mask(spatial_shape)[None]  # 1, H, W
            d[self.mask_key], *_ = convert_to_dst_type(mask, dst=d[first_key])
        return d
