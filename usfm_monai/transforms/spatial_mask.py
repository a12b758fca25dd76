"""Spatial mean masking, USFM paper eq. 2 (Jiao et al., arXiv 2401.00153, sec. 3.2.1).

The image is cut into square ``block_size x block_size`` blocks (the last row and column of blocks are
partial when ``H`` or ``W`` is not a multiple of ``block_size``). Each block is masked independently with
probability ``mask_ratio`` and every pixel of a masked block is replaced by the mean of the *whole* image,
per channel:

    M_spa(U)(c, x, y) = mean_{x', y'} U(c, x', y')   if (x, y) lies in a masked block
                        U(c, x, y)                    otherwise

This module holds the array transform :class:`RandSpatialMeanMask`, its dictionary twin
:class:`RandSpatialMeanMaskd`, and the pieces the batched torch version reuses
(:func:`draw_block_grids`, :func:`block_grid_to_pixel_mask`, :func:`spatial_mean_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "RandSpatialMeanMask",
    "RandSpatialMeanMaskd",
    "block_grid_shape",
    "draw_block_grid",
    "draw_block_grids",
    "block_grid_to_pixel_mask",
    "spatial_mean_mask",
]


# ---------------------------------------------------------------------------------------------------------
# argument and input checks shared by the masking modules


def _check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as ``int`` if it is an integer (not a bool) ``>= minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_ratio(name: str, value: Any) -> float:
    """Return ``value`` as ``float`` if it is a real number in ``[0, 1]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__}).")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    return float(value)


def _check_spatial_shape(spatial_shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(H, W)`` as ints, raising if it is not two positive integers."""
    shape = tuple(spatial_shape)
    if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape):
        raise ValueError(f"spatial_shape must be two positive integers (H, W), got {spatial_shape!r}.")
    return int(shape[0]), int(shape[1])


def _image_tensor(img: NdarrayOrTensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise a channel-first 2-D image on entry.

    Returns:
        ``(img, img_t)``: ``img`` converted with ``convert_to_tensor(track_meta=get_track_meta())`` (the
        destination for ``convert_to_dst_type``), and ``img_t``, the same data as a plain tensor to compute on.

    Raises:
        ValueError: when the image is not ``(C, H, W)``.
        TypeError: when the image is not floating point.
    """
    img = convert_to_tensor(img, track_meta=get_track_meta())
    img_t = convert_to_tensor(img, track_meta=False)
    if img_t.ndim != 3 or min(img_t.shape) < 1:
        raise ValueError(
            f"{owner} expects a channel-first 2-D image of shape (C, H, W), got shape {tuple(img_t.shape)}."
        )
    if not torch.is_floating_point(img_t):
        raise TypeError(
            f"{owner} expects a floating-point image (intensities in [0, 1]), got dtype {img_t.dtype}; "
            "convert it first, e.g. with monai.transforms.EnsureType(dtype=torch.float32)."
        )
    return img, img_t


def _common_spatial_shape(data: Mapping[Hashable, Any], keys: Iterable[Hashable], owner: str) -> tuple[int, int]:
    """Return the spatial shape ``(H, W)`` shared by ``data[key]`` for all ``keys``, raising if they differ."""
    shapes = {key: tuple(data[key].shape) for key in keys}
    for key, shape in shapes.items():
        if len(shape) != 3:
            raise ValueError(f"{owner} expects data[{key!r}] to have shape (C, H, W), got shape {shape}.")
    spatial = {shape[1:] for shape in shapes.values()}
    if len(spatial) > 1:
        found = ", ".join(f"{key!r}: {shape}" for key, shape in shapes.items())
        raise ValueError(f"{owner} applies one mask to all keys, so they must share (H, W); got {found}.")
    (hw,) = spatial
    return hw  # type: ignore[return-value]


def _check_free_key(data: Mapping[Hashable, Any], key: Hashable, owner: str) -> None:
    """Raise if an output key of ``owner`` would overwrite an item already in ``data``."""
    if key in data:
        raise KeyError(f"{owner} writes to key {key!r}, but the data already holds {key!r}; pick another key name.")


# ---------------------------------------------------------------------------------------------------------
# functional pieces (per-sample numpy draws, batched torch draws, torch application)


def block_grid_shape(spatial_shape: Sequence[int], block_size: int) -> tuple[int, int]:
    """Shape ``(ceil(H / block_size), ceil(W / block_size))`` of the block grid of an ``(H, W)`` image."""
    h, w = _check_spatial_shape(spatial_shape)
    return math.ceil(h / block_size), math.ceil(w / block_size)


def draw_block_grid(
    rng: np.random.RandomState, spatial_shape: Sequence[int], block_size: int, mask_ratio: float
) -> np.ndarray:
    """Draw which blocks of one image are masked.

    Args:
        rng: the random state to draw from (a transform's ``self.R``).
        spatial_shape: ``(H, W)`` of the image.
        block_size: side of the square blocks, in pixels.
        mask_ratio: probability that a block is masked, in ``[0, 1]``; 0 masks nothing, 1 masks everything.

    Returns:
        ``(ceil(H / block_size), ceil(W / block_size))`` bool array, True = masked block.
    """
    return rng.random_sample(block_grid_shape(spatial_shape, block_size)) < mask_ratio


def draw_block_grids(
    batch_size: int,
    spatial_shape: Sequence[int],
    block_size: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Batched torch version of :func:`draw_block_grid`.

    The numbers are drawn on ``generator.device`` (CPU when ``generator`` is None and ``device`` is None)
    and the result is moved to ``device``.

    Returns:
        ``(B, ceil(H / block_size), ceil(W / block_size))`` bool tensor, True = masked block.
    """
    gh, gw = block_grid_shape(spatial_shape, block_size)
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    grids = torch.rand((batch_size, gh, gw), generator=generator, device=draw_device) < mask_ratio
    return grids.to(device) if device is not None else grids


def block_grid_to_pixel_mask(
    block_grid: NdarrayOrTensor, spatial_shape: Sequence[int], block_size: int
) -> NdarrayOrTensor:
    """Expand a block grid to a pixel mask; edge blocks are cropped to the image.

    Args:
        block_grid: ``(..., ceil(H / block_size), ceil(W / block_size))`` bool numpy array or tensor.
        spatial_shape: ``(H, W)``.
        block_size: side of the square blocks, in pixels.

    Returns:
        ``(..., H, W)`` bool mask of the same type (and device) as ``block_grid``; pixel ``(y, x)`` takes the
        value of block ``(y // block_size, x // block_size)``.

    Raises:
        ValueError: when the grid's trailing shape does not match ``spatial_shape`` and ``block_size``.
    """
    h, w = _check_spatial_shape(spatial_shape)
    expected = block_grid_shape((h, w), block_size)
    if tuple(block_grid.shape[-2:]) != expected:
        raise ValueError(
            f"block grid of shape {tuple(block_grid.shape)} does not fit an image of spatial shape {(h, w)} with "
            f"block_size={block_size}: expected trailing dims {expected}."
        )
    gh, gw = expected
    lead = tuple(block_grid.shape[:-2])
    blocks = (*lead, gh, block_size, gw, block_size)
    if isinstance(block_grid, torch.Tensor):
        full = block_grid[..., :, None, :, None].expand(blocks).reshape(*lead, gh * block_size, gw * block_size)
    else:
        grid = np.asarray(block_grid)[..., :, None, :, None]
        full = np.broadcast_to(grid, blocks).reshape(*lead, gh * block_size, gw * block_size)
    return full[..., :h, :w]  # ..., H, W


def spatial_mean_mask(
    images: torch.Tensor, pixel_masks: torch.Tensor, fill_from: torch.Tensor | None = None
) -> torch.Tensor:
    """Fill masked pixels with the per-channel image mean (eq. 2); works per sample and batched.

    Args:
        images: ``(..., C, H, W)`` floating tensor; its unmasked pixels are returned unchanged.
        pixel_masks: ``(..., H, W)`` bool tensor, True = masked pixel.
        fill_from: ``(..., C, H, W)`` tensor whose per-channel mean over ``(H, W)`` is the fill value;
            defaults to ``images`` (eq. 8 passes the original image when ``images`` is frequency-filtered).

    Returns:
        ``(..., C, H, W)`` tensor, same dtype and device as ``images``.
    """
    source = images if fill_from is None else fill_from
    fill = source.mean(dim=(-2, -1), keepdim=True).to(images.dtype)  # ..., C, 1, 1
    return torch.where(pixel_masks.unsqueeze(-3), fill, images)  # ..., C, H, W


# ---------------------------------------------------------------------------------------------------------
# transforms


class RandSpatialMeanMask(Randomizable):
    """Spatial mean masking of USFM (Jiao et al., arXiv 2401.00153, eq. 2).

    The image is partitioned into ``block_size x block_size`` blocks (edge blocks are partial when ``H`` or
    ``W`` is not a multiple of ``block_size``); each block is masked independently with probability
    ``mask_ratio``, and the pixels of masked blocks are replaced by the mean of the whole image, per channel.
    The draw is stored in :attr:`block_grid`, a ``(ceil(H / block_size), ceil(W / block_size))`` bool array
    (True = masked), and :meth:`pixel_mask` expands it to ``(H, W)``.

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
        self.block_size = _check_int("block_size", block_size, 1)
        self.mask_ratio = _check_ratio("mask_ratio", mask_ratio)
        self.block_grid: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Draw :attr:`block_grid` for the spatial shape of ``img`` (``(C, H, W)``), from ``self.R`` only."""
        if len(img.shape) != 3:
            raise ValueError(f"{type(self).__name__} expects a (C, H, W) image, got shape {tuple(img.shape)}.")
        self.block_grid = draw_block_grid(self.R, img.shape[1:], self.block_size, self.mask_ratio)

    def pixel_mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """The drawn block grid as an ``(H, W)`` bool pixel mask, True = masked.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when the drawn grid does not fit ``spatial_shape``.
        """
        if self.block_grid is None:
            raise RuntimeError(f"{type(self).__name__}: please call the `randomize()` function first.")
        return block_grid_to_pixel_mask(self.block_grid, spatial_shape, self.block_size)  # type: ignore[return-value]

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
        pixel = self.pixel_mask(img_t.shape[1:])
        pixel_t = torch.as_tensor(pixel, device=img_t.device)
        out = spatial_mean_mask(img_t, pixel_t)
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
