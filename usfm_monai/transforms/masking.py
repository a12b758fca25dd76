"""USFM masking core: the paper's eq. 2-8 (Jiao et al., arXiv 2401.00153, sec. 3.2) as pure torch functions.

Every function works on batches ``(B, C, H, W)`` (masks ``(B, H, W)``) on any device, and every random number
comes from an explicit ``torch.Generator`` argument. The MONAI transforms in
:mod:`~usfm_monai.transforms.spatial_mask`, :mod:`~usfm_monai.transforms.frequency_mask` and
:mod:`~usfm_monai.transforms.dual_mask` are thin wrappers that call these functions on a batch of one (or of
``B``), the way MONAI's ``Flip`` calls ``monai.transforms.spatial.functional.flip``.

**Spatial mean mask (eq. 2).** The image is cut into square ``block_size x block_size`` blocks (the last row
and column of blocks are partial when ``H`` or ``W`` is not a multiple of ``block_size``); each block is masked
independently with probability ``mask_ratio`` and every pixel of a masked block is replaced by the per-channel
mean of the *whole* image: ``M_spa(U)(c, x, y) = mean_{x', y'} U(c, x', y')`` in masked blocks, ``U(c, x, y)``
elsewhere.

**Frequency band-stop mask (eq. 3-7).** Each channel is taken to the centred (fftshifted) 2-D DFT, the
frequencies outside an always-kept low-frequency square are split into ``num_bands`` concentric annuli,
``num_masked_bands`` of them (drawn without replacement) are zeroed and the real part of the inverse DFT is
kept. Band geometry (computed by :func:`frequency_band_map`; the tests rebuild it from this description):

* **Frequency coordinates.** For an axis of length ``N`` the fftshifted spectrum holds, at index ``i``, the
  signed frequency ``f = i - N // 2``, so the zero frequency sits at index ``N // 2`` for odd and even sizes.
  Row ``i`` and column ``j`` give ``(fu, fv)``.
* **Radius.** ``rho = sqrt((fu / H)**2 + (fv / W)**2)`` (cycles per pixel; annuli are circles in physical
  frequency, ellipses in index space when ``H != W``). For ``N x N`` images ``N * rho`` is the paper's
  ``sqrt(u**2 + v**2)``.
* **Kept square.** Frequencies with ``max(|fu|, |fv|) <= keep_size // 2`` are never masked (nothing is kept
  when ``keep_size = 0``): the ``keep_size x keep_size`` centre for odd ``keep_size``, side ``keep_size + 1``
  for even ``keep_size`` (the paper's 10 keeps 11 x 11), since the kept set must be symmetric under ``f -> -f``.
* **Band edges.** ``rho_hi`` is the largest radius (the corners), ``rho_lo`` the smallest radius among the
  non-kept frequencies (for ``"log"``: the smallest *positive* one). The edges ``e_0 = rho_lo < ... < e_n =
  rho_hi`` are spaced evenly in ``rho`` (``band_spacing="linear"``) or in ``log(rho)`` (``"log"``).
* **Band of a frequency.** ``band = #{i in 1 .. n-1 : e_i <= rho}``: band ``b`` is ``e_b <= rho < e_(b+1)``,
  the last one closed at ``rho_hi``; kept frequencies get ``-1``. Bands are disjoint and cover every non-kept
  frequency; the DC term (outside the kept square only when ``keep_size = 0``) is in band 0. On very small
  images a band can be empty; stopping it then changes nothing.

Radius and kept square depend on ``|fu|``, ``|fv|`` only, so every stop mask is symmetric under
``f -> -f``: ``iDFT(M * DFT(U))`` of a real image is real, keeping its real part is exact, and filtering the
half spectrum of ``rfft2`` (what :func:`band_stop_filter` does) gives the same image as the full spectrum.

**Dual-domain mask (eq. 8).** The band-stopped image everywhere except in the masked blocks, which hold the
per-channel mean of the ORIGINAL image; without bands (USFM-woF ablation) the spatial mask alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.utils import convert_to_tensor

__all__ = [
    "BAND_SPACINGS",
    "check_int",
    "check_ratio",
    "check_spatial_shape",
    "check_band_args",
    "check_mask_args",
    "check_draws",
    "block_grid_shape",
    "frequency_band_edges",
    "frequency_band_map",
    "draw_block_grids",
    "draw_band_ids",
    "generator_from_random_state",
    "block_grid_to_pixel_mask",
    "band_stop_masks",
    "spatial_mean_mask",
    "band_stop_filter",
    "dual_domain_mask",
]

BAND_SPACINGS = ("linear", "log")


# ---------------------------------------------------------------------------------------------------------
# argument checks (the one place for all masking code)


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as ``int`` if it is an integer (not a bool) ``>= minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_ratio(name: str, value: Any) -> float:
    """Return ``value`` as ``float`` if it is a real number in ``[0, 1]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__}).")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    return float(value)


def check_spatial_shape(spatial_shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(H, W)`` as ints, raising if it is not two positive integers."""
    shape = tuple(spatial_shape)
    if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape):
        raise ValueError(f"spatial_shape must be two positive integers (H, W), got {spatial_shape!r}.")
    return int(shape[0]), int(shape[1])


def check_band_args(num_bands: int, num_masked_bands: int, keep_size: int, band_spacing: str) -> None:
    """Raise on bad frequency-mask arguments (see :func:`frequency_band_map`)."""
    check_int("num_bands", num_bands, 1)
    check_int("num_masked_bands", num_masked_bands, 0)
    if num_masked_bands > num_bands:
        raise ValueError(f"num_masked_bands must be <= num_bands={num_bands}, got {num_masked_bands!r}.")
    check_int("keep_size", keep_size, 0)
    if band_spacing not in BAND_SPACINGS:
        raise ValueError(f"band_spacing must be one of {BAND_SPACINGS}, got {band_spacing!r}.")


def check_mask_args(
    block_size: int,
    mask_ratio: float,
    num_bands: int,
    num_masked_bands: int,
    keep_size: int,
    band_spacing: str,
    use_frequency_mask: bool,
) -> None:
    """Raise on bad dual-mask arguments."""
    check_int("block_size", block_size, 1)
    check_ratio("mask_ratio", mask_ratio)
    check_band_args(num_bands, num_masked_bands, keep_size, band_spacing)
    if not isinstance(use_frequency_mask, (bool, np.bool_)):
        raise TypeError(f"use_frequency_mask must be a bool, got {use_frequency_mask!r}.")


def check_draws(
    images: torch.Tensor, block_grids: torch.Tensor, band_ids: torch.Tensor, block_size: int, num_bands: int
) -> None:
    """Raise unless ``block_grids`` ``(B, gh, gw)`` bool and ``band_ids`` ``(B, K)`` int64 fit ``images``."""
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    expected = (b, *block_grid_shape((h, w), block_size))
    if tuple(block_grids.shape) != expected or block_grids.dtype != torch.bool:
        raise ValueError(
            f"block_grids must be a bool tensor of shape {expected} for images of shape {tuple(images.shape)}, "
            f"got {block_grids.dtype} {tuple(block_grids.shape)}."
        )
    if band_ids.ndim != 2 or band_ids.shape[0] != b or band_ids.dtype != torch.int64:
        raise ValueError(
            f"band_ids must be an int64 tensor of shape ({b}, K), got {band_ids.dtype} {tuple(band_ids.shape)}."
        )
    if band_ids.numel() and (int(band_ids.min()) < 0 or int(band_ids.max()) >= num_bands):
        raise ValueError(f"band_ids must be in [0, {num_bands}), got {band_ids.tolist()}.")


def _image_tensor(img: NdarrayOrTensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For the MONAI wrappers: ``(img as MONAI output destination, the same data as a plain tensor)``.

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
    """For the dictionary wrappers: the ``(H, W)`` shared by ``data[key]`` for all ``keys``, else raise."""
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
    """For the dictionary wrappers: raise if an output key would overwrite an item already in ``data``."""
    if key in data:
        raise KeyError(f"{owner} writes to key {key!r}, but the data already holds {key!r}; pick another key name.")


# ---------------------------------------------------------------------------------------------------------
# geometry


def block_grid_shape(spatial_shape: Sequence[int], block_size: int) -> tuple[int, int]:
    """Shape ``(ceil(H / block_size), ceil(W / block_size))`` of the block grid of an ``(H, W)`` image."""
    h, w = check_spatial_shape(spatial_shape)
    return math.ceil(h / block_size), math.ceil(w / block_size)


@functools.lru_cache(maxsize=64)
def _band_geometry(h: int, w: int, num_bands: int, keep_size: int, band_spacing: str) -> tuple[torch.Tensor, ...]:
    """``(edges (n + 1,) float64, band_map (H, W) int64)`` on the CPU, see the module docstring."""
    fu = (torch.arange(h, dtype=torch.float64) - h // 2).abs()  # |signed row frequency|, H
    fv = (torch.arange(w, dtype=torch.float64) - w // 2).abs()  # |signed column frequency|, W
    rho = torch.sqrt((fu[:, None] / h) ** 2 + (fv[None, :] / w) ** 2)  # H, W
    half = keep_size // 2
    kept = (fu[:, None] <= half) & (fv[None, :] <= half) if keep_size > 0 else torch.zeros(h, w, dtype=torch.bool)
    free = rho[~kept]
    if free.numel() == 0:
        raise ValueError(
            f"keep_size={keep_size} keeps every frequency of a {h}x{w} image, so no band can be masked; "
            f"use keep_size < {min(h, w)} or a larger image."
        )
    hi = float(free.max())
    steps = torch.arange(num_bands + 1, dtype=torch.float64) / num_bands
    if band_spacing == "linear":
        lo = float(free.min())
        edges = lo + (hi - lo) * steps
    else:
        positive = free[free > 0]
        lo = float(positive.min()) if positive.numel() else hi
        edges = lo * (hi / lo) ** steps if lo > 0 else torch.full((num_bands + 1,), hi, dtype=torch.float64)
    edges[0], edges[-1] = lo, hi
    band_map = torch.searchsorted(edges[1:-1].contiguous(), rho, right=True)  # H, W int64
    band_map[kept] = -1
    return edges, band_map


def frequency_band_edges(
    spatial_shape: Sequence[int], num_bands: int = 7, keep_size: int = 10, band_spacing: str = "linear"
) -> torch.Tensor:
    """Band edges ``e_0 .. e_n`` in cycles per pixel, ``(num_bands + 1,)`` float64 (CPU).

    Raises:
        ValueError: bad arguments, or ``keep_size`` keeps every frequency of the image.
    """
    h, w = check_spatial_shape(spatial_shape)
    check_band_args(num_bands, 0, keep_size, band_spacing)
    return _band_geometry(h, w, num_bands, keep_size, band_spacing)[0].clone()


def frequency_band_map(
    spatial_shape: Sequence[int], num_bands: int = 7, keep_size: int = 10, band_spacing: str = "linear"
) -> torch.Tensor:
    """Band index of every frequency of the centred (fftshifted) spectrum, as in the module docstring.

    Returns:
        ``(H, W)`` int64 CPU tensor, ``-1`` for kept frequencies and ``0 .. num_bands - 1`` (low to high
        frequency) otherwise.

    Raises:
        ValueError: bad arguments, or ``keep_size`` keeps every frequency of the image.
    """
    h, w = check_spatial_shape(spatial_shape)
    check_band_args(num_bands, 0, keep_size, band_spacing)
    return _band_geometry(h, w, num_bands, keep_size, band_spacing)[1].clone()


@functools.lru_cache(maxsize=64)
def _rfft_band_map(
    h: int, w: int, num_bands: int, keep_size: int, band_spacing: str, device: torch.device
) -> torch.Tensor:
    """The band map in the unshifted half-spectrum layout of ``torch.fft.rfft2``: ``(H, W // 2 + 1)`` on ``device``."""
    band_map = _band_geometry(h, w, num_bands, keep_size, band_spacing)[1]
    return torch.fft.ifftshift(band_map)[:, : w // 2 + 1].to(device)


# ---------------------------------------------------------------------------------------------------------
# random draws (explicit torch.Generator; numbers are drawn on the generator's device, CPU when None)


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    return generator.device if generator is not None else torch.device(device or "cpu")


def draw_block_grids(
    batch_size: int,
    spatial_shape: Sequence[int],
    block_size: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw which blocks are masked: ``(B, ceil(H / block_size), ceil(W / block_size))`` bool, True = masked.

    Each block independently with probability ``mask_ratio``; the result is moved to ``device`` if given.
    """
    grid = block_grid_shape(spatial_shape, block_size)
    drawn = torch.rand((batch_size, *grid), generator=generator, device=_draw_device(generator, device)) < mask_ratio
    return drawn.to(device) if device is not None else drawn


def draw_band_ids(
    batch_size: int,
    num_bands: int,
    num_masked_bands: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``num_masked_bands`` distinct bands out of ``num_bands`` per sample: ``(B, K)`` int64, rows sorted."""
    keys = torch.rand((batch_size, num_bands), generator=generator, device=_draw_device(generator, device))
    ids = keys.argsort(dim=1)[:, :num_masked_bands].sort(dim=1).values  # B, K
    return ids.to(device) if device is not None else ids


def generator_from_random_state(rng: np.random.RandomState) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from one draw of a MONAI transform's ``self.R``.

    This is how the ``Randomizable`` wrappers keep ``set_random_state`` working: the seed, and so the masks,
    follow ``self.R``.
    """
    return torch.Generator().manual_seed(int(rng.randint(0, 2**63 - 1, dtype=np.int64)))


# ---------------------------------------------------------------------------------------------------------
# masks from draws


def block_grid_to_pixel_mask(block_grid: torch.Tensor, spatial_shape: Sequence[int], block_size: int) -> torch.Tensor:
    """Expand block grids ``(..., gh, gw)`` to bool pixel masks ``(..., H, W)``; edge blocks are cropped.

    Pixel ``(y, x)`` takes the value of block ``(y // block_size, x // block_size)``.

    Raises:
        ValueError: when the grid's trailing shape does not match ``spatial_shape`` and ``block_size``.
    """
    grid = torch.as_tensor(block_grid)
    h, w = check_spatial_shape(spatial_shape)
    expected = block_grid_shape((h, w), block_size)
    if tuple(grid.shape[-2:]) != expected:
        raise ValueError(
            f"block grid of shape {tuple(grid.shape)} does not fit an image of spatial shape {(h, w)} with "
            f"block_size={block_size}: expected trailing dims {expected}."
        )
    return grid.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)[..., :h, :w]


def band_stop_masks(
    band_ids: torch.Tensor,
    spatial_shape: Sequence[int],
    num_bands: int = 7,
    keep_size: int = 10,
    band_spacing: str = "linear",
) -> torch.Tensor:
    """Stop masks ``(B, H, W)`` bool in the fftshifted layout, True on the bands ``band_ids`` ``(B, K)`` of each row.

    Raises:
        ValueError: bad arguments, a band id outside ``[0, num_bands)``, or a fully kept spectrum.
    """
    ids = torch.as_tensor(band_ids, dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_bands):
        raise ValueError(f"band ids must be in [0, {num_bands}), got {ids.tolist()}.")
    band_map = frequency_band_map(spatial_shape, num_bands, keep_size, band_spacing).to(ids.device)
    return (band_map == ids[:, :, None, None]).any(dim=1)  # B, H, W


# ---------------------------------------------------------------------------------------------------------
# the equations


def spatial_mean_mask(
    images: torch.Tensor, pixel_masks: torch.Tensor, fill_from: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 2: fill masked pixels with the per-channel image mean.

    Args:
        images: ``(B, C, H, W)`` floating tensor; its unmasked pixels are returned unchanged.
        pixel_masks: ``(B, H, W)`` bool tensor, True = masked pixel.
        fill_from: ``(B, C, H, W)`` tensor whose per-channel mean is the fill value; defaults to ``images``
            (eq. 8 passes the original image when ``images`` is band-stopped).

    Returns:
        ``(B, C, H, W)`` tensor, same dtype and device as ``images``.
    """
    source = images if fill_from is None else fill_from
    fill = source.mean(dim=(-2, -1), keepdim=True).to(images.dtype)  # B, C, 1, 1
    return torch.where(pixel_masks.unsqueeze(-3), fill, images)


def band_stop_filter(
    images: torch.Tensor,
    band_ids: torch.Tensor,
    num_bands: int = 7,
    keep_size: int = 10,
    band_spacing: str = "linear",
) -> torch.Tensor:
    """Eq. 3-7: zero the bands ``band_ids`` of every channel's spectrum, return the real inverse DFT.

    Filters the ``rfft2`` half spectrum (exact, see the module docstring); half precision is transformed in
    float32 and cast back. A sample whose bands hold no frequency, and every sample when ``K = 0``, is returned
    unchanged (bit for bit).

    Args:
        images: ``(B, C, H, W)`` floating tensor.
        band_ids: ``(B, K)`` int64 tensor of the bands to stop per sample.
        num_bands, keep_size, band_spacing: the band geometry (see :func:`frequency_band_map`).

    Returns:
        ``(B, C, H, W)`` tensor, same dtype and device as ``images``.

    Raises:
        ValueError: when ``keep_size`` keeps every frequency of the image (and ``K > 0``).
    """
    if band_ids.shape[-1] == 0:
        return images
    h, w = images.shape[-2:]
    rfft_map = _rfft_band_map(h, w, num_bands, keep_size, band_spacing, images.device)
    stop = (rfft_map == band_ids.to(images.device)[:, :, None, None]).any(dim=1)  # B, H, W // 2 + 1
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    spectrum = torch.fft.rfft2(work).masked_fill(stop.unsqueeze(1), 0)  # B, C, H, W // 2 + 1
    out = torch.fft.irfft2(spectrum, s=(h, w)).to(images.dtype)
    return torch.where(stop.flatten(1).any(dim=1)[:, None, None, None], out, images)


def dual_domain_mask(
    images: torch.Tensor,
    block_grids: torch.Tensor,
    band_ids: torch.Tensor,
    block_size: int,
    num_bands: int = 7,
    keep_size: int = 10,
    band_spacing: str = "linear",
) -> torch.Tensor:
    """Eq. 8: the band-stopped image, with the masked blocks filled by the ORIGINAL image's per-channel mean.

    Args:
        images: ``(B, C, H, W)`` floating tensor.
        block_grids: ``(B, gh, gw)`` bool, from :func:`draw_block_grids`.
        band_ids: ``(B, K)`` int64, from :func:`draw_band_ids`; ``K = 0`` is the spatial mask alone (USFM-woF).
        block_size, num_bands, keep_size, band_spacing: the mask geometry.

    Returns:
        ``(B, C, H, W)`` tensor, same dtype and device as ``images``.

    Raises:
        ValueError: draws that do not fit ``images`` (see :func:`check_draws`), or a fully kept spectrum.
    """
    check_draws(images, block_grids, band_ids, block_size, num_bands)
    pixel = block_grid_to_pixel_mask(block_grids.to(images.device), images.shape[-2:], block_size)  # B, H, W
    base = band_stop_filter(images, band_ids, num_bands, keep_size, band_spacing)
    return spatial_mean_mask(base, pixel, fill_from=images)
