"""Frequency band-stop masking, USFM paper eq. 3-7 (Jiao et al., arXiv 2401.00153, sec. 3.2.2).

Each channel is taken to the centred (fftshifted) 2-D DFT (eq. 3), the frequencies outside an always-kept
low-frequency square are split into ``num_bands`` concentric annuli, ``num_masked_bands`` of them, chosen at
random without replacement, are set to zero (eq. 7), and the inverse DFT is taken, keeping the real part.

Band geometry (everything here is computed by :func:`frequency_band_map`; the tests rebuild it from this
description):

* **Frequency coordinates.** For an axis of length ``N`` the fftshifted spectrum holds, at index ``i``, the
  signed frequency ``f = i - N // 2`` (``-N/2 .. N/2 - 1`` for even ``N``, ``-(N-1)/2 .. (N-1)/2`` for odd
  ``N``), so the zero frequency sits at index ``N // 2`` for odd and even sizes alike. Row ``i`` and column
  ``j`` give ``(fu, fv)``.
* **Radius.** ``rho = sqrt((fu / H)**2 + (fv / W)**2)``: the normalized frequency in cycles per pixel, which
  makes the annuli circles in physical frequency and ellipses in index space when ``H != W``. For a square
  ``N x N`` image ``N * rho`` is the paper's ``sqrt(u**2 + v**2)``.
* **Kept square.** Frequencies with ``max(|fu|, |fv|) <= keep_size // 2`` are never masked (nothing is kept
  when ``keep_size = 0``). This is the ``keep_size x keep_size`` centre for odd ``keep_size``; for even
  ``keep_size`` the side is ``keep_size + 1`` (the paper's 10 keeps 11 x 11), because the kept set has to be
  symmetric under ``f -> -f`` (see below) and so has an odd side.
* **Band edges.** ``rho_hi`` is the largest radius of the spectrum (its corners), ``rho_lo`` the smallest
  radius among the frequencies that are not kept (for ``"log"``: the smallest *positive* one). The edges
  ``e_0 = rho_lo < e_1 < ... < e_n = rho_hi`` (``n = num_bands``) are spaced evenly in ``rho`` for
  ``band_spacing="linear"`` (``e_i = rho_lo + i (rho_hi - rho_lo) / n``) and evenly in ``log(rho)`` for
  ``"log"`` (``e_i = rho_lo (rho_hi / rho_lo)**(i / n)``).
* **Band of a frequency.** ``band = #{i in 1 .. n-1 : e_i <= rho}``, i.e. band ``b`` is the annulus
  ``e_b <= rho < e_(b+1)``, the last one closed at ``rho_hi``; kept frequencies get ``-1``. So the bands are
  disjoint, every non-kept frequency (the corners too) lies in exactly one band, and the DC term, which is
  only outside the kept square when ``keep_size = 0``, goes to band 0 for both spacings. On very small images
  a band can contain no frequency; masking it then changes nothing.

Because the radius and the kept square depend on ``|fu|`` and ``|fv|`` only, the stop mask ``M`` is symmetric
under ``(fu, fv) -> (-fu, -fv)`` (modulo ``(H, W)``; the Nyquist row/column of an even axis maps onto itself).
For a real image this makes ``iDFT(M * DFT(U))`` real up to rounding, so keeping its real part is exact: the
output's spectrum is zero on the masked bands and unchanged elsewhere. Keeping the real part rather than the
magnitude preserves the sign of zero-mean (normalized) inputs.

This module holds :class:`RandFrequencyBandStopMask`, its dictionary twin :class:`RandFrequencyBandStopMaskd`,
and the batched torch functions (:func:`draw_band_ids_batched`, :func:`batched_band_stop`).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms.transform import MapTransform, Randomizable
from monai.transforms.utils import Fourier
from monai.utils import TransformBackends, convert_to_dst_type

from usfm_monai.transforms.spatial_mask import (
    _check_free_key,
    _check_int,
    _check_spatial_shape,
    _common_spatial_shape,
    _image_tensor,
)

__all__ = [
    "BAND_SPACINGS",
    "RandFrequencyBandStopMask",
    "RandFrequencyBandStopMaskd",
    "frequency_band_edges",
    "frequency_band_map",
    "band_stop_mask",
    "draw_band_ids",
    "draw_band_ids_batched",
    "band_stop_filter",
    "rfft_band_map",
    "batched_band_stop",
]

BAND_SPACINGS = ("linear", "log")


def _check_band_args(num_bands: int, num_masked_bands: int, keep_size: int, band_spacing: str) -> None:
    _check_int("num_bands", num_bands, 1)
    _check_int("num_masked_bands", num_masked_bands, 0)
    if num_masked_bands > num_bands:
        raise ValueError(f"num_masked_bands must be <= num_bands={num_bands}, got {num_masked_bands!r}.")
    _check_int("keep_size", keep_size, 0)
    if band_spacing not in BAND_SPACINGS:
        raise ValueError(f"band_spacing must be one of {BAND_SPACINGS}, got {band_spacing!r}.")


def _radius_and_kept(h: int, w: int, keep_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized radius ``rho`` and the kept-square mask, both ``(H, W)`` in the fftshifted layout."""
    fu = np.abs(np.arange(h) - h // 2)  # |signed row frequency|, H
    fv = np.abs(np.arange(w) - w // 2)  # |signed column frequency|, W
    rho = np.sqrt((fu[:, None] / h) ** 2 + (fv[None, :] / w) ** 2)  # H, W
    half = keep_size // 2
    kept = (fu[:, None] <= half) & (fv[None, :] <= half) if keep_size > 0 else np.zeros((h, w), dtype=bool)
    return rho, kept


@functools.lru_cache(maxsize=64)
def _band_geometry(
    h: int, w: int, num_bands: int, keep_size: int, band_spacing: str
) -> tuple[np.ndarray, np.ndarray]:
    rho, kept = _radius_and_kept(h, w, keep_size)
    free = rho[~kept]
    if free.size == 0:
        raise ValueError(
            f"keep_size={keep_size} keeps every frequency of a {h}x{w} image, so no band can be masked; "
            f"use keep_size < {min(h, w)} or a larger image."
        )
    hi = float(free.max())
    if band_spacing == "linear":
        lo = float(free.min())
        edges = lo + (hi - lo) * np.arange(num_bands + 1) / num_bands
    else:
        positive = free[free > 0]
        lo = float(positive.min()) if positive.size else hi
        edges = lo * (hi / lo) ** (np.arange(num_bands + 1) / num_bands) if lo > 0 else np.full(num_bands + 1, hi)
    edges[0], edges[-1] = lo, hi
    band_map = np.searchsorted(edges[1:-1], rho, side="right").astype(np.int64)  # H, W
    band_map[kept] = -1
    edges.setflags(write=False)
    band_map.setflags(write=False)
    return edges, band_map


def frequency_band_edges(
    spatial_shape: Sequence[int], num_bands: int = 7, keep_size: int = 10, band_spacing: str = "linear"
) -> np.ndarray:
    """Band edges ``e_0 .. e_n`` in cycles per pixel (see the module docstring), ``(num_bands + 1,)`` float64.

    Raises:
        ValueError: bad arguments, or ``keep_size`` keeps every frequency of the image.
    """
    h, w = _check_spatial_shape(spatial_shape)
    _check_band_args(num_bands, 0, keep_size, band_spacing)
    return _band_geometry(h, w, num_bands, keep_size, band_spacing)[0]


def frequency_band_map(
    spatial_shape: Sequence[int], num_bands: int = 7, keep_size: int = 10, band_spacing: str = "linear"
) -> np.ndarray:
    """Band index of every frequency of the centred (fftshifted) spectrum, as in the module docstring.

    Args:
        spatial_shape: ``(H, W)``.
        num_bands: number of annuli, ``>= 1``.
        keep_size: side of the always-kept low-frequency square (rounded up to odd), ``>= 0``.
        band_spacing: ``"linear"`` or ``"log"``.

    Returns:
        ``(H, W)`` read-only int64 array, ``-1`` for kept frequencies and ``0 .. num_bands - 1`` (low to high
        frequency) otherwise. Cached per arguments.

    Raises:
        ValueError: bad arguments, or ``keep_size`` keeps every frequency of the image.
    """
    h, w = _check_spatial_shape(spatial_shape)
    _check_band_args(num_bands, 0, keep_size, band_spacing)
    return _band_geometry(h, w, num_bands, keep_size, band_spacing)[1]


def band_stop_mask(
    spatial_shape: Sequence[int],
    band_ids: Sequence[int] | np.ndarray,
    num_bands: int = 7,
    keep_size: int = 10,
    band_spacing: str = "linear",
) -> np.ndarray:
    """``(H, W)`` bool stop mask in the fftshifted layout: True on the frequencies of bands ``band_ids``.

    Raises:
        ValueError: bad arguments, a band id outside ``[0, num_bands)``, or a fully kept spectrum.
    """
    ids = np.asarray(band_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_bands):
        raise ValueError(f"band ids must be in [0, {num_bands}), got {ids.tolist()}.")
    return np.isin(frequency_band_map(spatial_shape, num_bands, keep_size, band_spacing), ids)


def draw_band_ids(rng: np.random.RandomState, num_bands: int, num_masked_bands: int) -> np.ndarray:
    """Draw ``num_masked_bands`` distinct band ids out of ``num_bands``; ``(K,)`` int64, sorted."""
    return np.sort(rng.choice(num_bands, size=num_masked_bands, replace=False)).astype(np.int64)


def draw_band_ids_batched(
    batch_size: int,
    num_bands: int,
    num_masked_bands: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Batched torch version of :func:`draw_band_ids`: ``(B, K)`` int64, each row distinct and sorted.

    The numbers are drawn on ``generator.device`` (CPU when both are None) and moved to ``device``.
    """
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    keys = torch.rand((batch_size, num_bands), generator=generator, device=draw_device)  # B, n
    ids = keys.argsort(dim=1)[:, :num_masked_bands].sort(dim=1).values  # B, K
    return ids.to(device) if device is not None else ids


def band_stop_filter(images: torch.Tensor, stop_masks: torch.Tensor) -> torch.Tensor:
    """Zero the masked frequencies of every channel and return the real part of the inverse DFT (eq. 7).

    Uses MONAI's :class:`monai.transforms.utils.Fourier` (centred spectrum). Half precision inputs are
    transformed in float32 and cast back.

    Args:
        images: ``(..., C, H, W)`` floating tensor.
        stop_masks: ``(..., H, W)`` bool tensor in the fftshifted layout, True = zeroed frequency; it must be
            symmetric under ``f -> -f`` (every mask from :func:`band_stop_mask` is) for the result to be exact.

    Returns:
        ``(..., C, H, W)`` tensor, same dtype and device as ``images``.
    """
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    k = Fourier.shift_fourier(work, spatial_dims=2)  # ..., C, H, W complex
    k = k.masked_fill(stop_masks.unsqueeze(-3), 0)
    return Fourier.inv_shift_fourier(k, spatial_dims=2).to(images.dtype)  # ..., C, H, W


def rfft_band_map(band_map: np.ndarray) -> np.ndarray:
    """Reorder a fftshifted ``(H, W)`` band map to the unshifted half-spectrum layout of ``torch.fft.rfft2``.

    Returns:
        ``(H, W // 2 + 1)`` int64 array.
    """
    return np.fft.ifftshift(band_map)[:, : band_map.shape[1] // 2 + 1]


def batched_band_stop(images: torch.Tensor, band_ids: torch.Tensor, rfft_map: torch.Tensor) -> torch.Tensor:
    """Batched band-stop (eq. 7) with one set of bands per sample, through ``rfft2`` / ``irfft2``.

    Since every stop mask is symmetric under ``f -> -f``, filtering the half spectrum gives the same real
    image as :func:`band_stop_filter` on the full one. A sample whose chosen bands hold no frequency is
    returned unchanged.

    Args:
        images: ``(B, C, H, W)`` floating tensor.
        band_ids: ``(B, K)`` int64 tensor of band ids to stop, on the device of ``images``.
        rfft_map: ``(H, W // 2 + 1)`` int64 tensor from :func:`rfft_band_map`, on the device of ``images``.

    Returns:
        ``(B, C, H, W)`` tensor, same dtype and device as ``images``.
    """
    if band_ids.shape[1] == 0:
        return images
    h, w = images.shape[-2:]
    stop = (rfft_map == band_ids[:, :, None, None]).any(dim=1)  # B, H, W // 2 + 1
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    spectrum = torch.fft.rfft2(work).masked_fill(stop.unsqueeze(1), 0)  # B, C, H, W // 2 + 1
    out = torch.fft.irfft2(spectrum, s=(h, w)).to(images.dtype)  # B, C, H, W
    return torch.where(stop.flatten(1).any(dim=1)[:, None, None, None], out, images)


class RandFrequencyBandStopMask(Randomizable):
    """Frequency band-stop masking of USFM (Jiao et al., arXiv 2401.00153, eq. 3-7).

    Every channel goes to the centred 2-D DFT; outside the always-kept low-frequency square the spectrum is
    split into ``num_bands`` concentric annuli (geometry in this module's docstring), ``num_masked_bands`` of
    them, drawn without replacement, are zeroed, and the real part of the inverse DFT is returned. The drawn
    band ids are in :attr:`band_ids` (``(K,)`` int64, sorted) and :meth:`stop_mask` gives the ``(H, W)``
    stop mask for a shape.

    Data is channel-first ``(num_channels, H, W)``, floating point, numpy or torch; the result is a tensor
    with the input's dtype and device (a ``MetaTensor`` when metadata is tracked).

    Args:
        num_bands: number of annuli, ``>= 1`` (the paper uses 7).
        num_masked_bands: bands zeroed per draw, in ``[0, num_bands]``; 0 is the identity mapping
            (the paper uses 2).
        keep_size: side of the always-kept low-frequency square, ``>= 0``; rounded up to odd so that it is
            centred on the zero frequency (the paper's 10 keeps 11 x 11), 0 keeps nothing.
        band_spacing: ``"linear"`` (edges evenly spaced in radius) or ``"log"`` (evenly spaced in log radius).

    Raises:
        TypeError: when an integer argument is not an integer.
        ValueError: when an argument is out of range or ``band_spacing`` is unknown.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, num_bands: int = 7, num_masked_bands: int = 2, keep_size: int = 10, band_spacing: str = "linear"
    ) -> None:
        _check_band_args(num_bands, num_masked_bands, keep_size, band_spacing)
        self.num_bands = int(num_bands)
        self.num_masked_bands = int(num_masked_bands)
        self.keep_size = int(keep_size)
        self.band_spacing = band_spacing
        self.band_ids: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        """Draw :attr:`band_ids` from ``self.R`` (the bands do not depend on the image)."""
        self.band_ids = draw_band_ids(self.R, self.num_bands, self.num_masked_bands)

    def stop_mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """``(H, W)`` bool stop mask of the drawn bands in the fftshifted layout, True = zeroed.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when ``keep_size`` keeps every frequency of ``spatial_shape``.
        """
        if self.band_ids is None:
            raise RuntimeError(f"{type(self).__name__}: please call the `randomize()` function first.")
        return band_stop_mask(spatial_shape, self.band_ids, self.num_bands, self.keep_size, self.band_spacing)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Band-stop ``img``, ``(C, H, W)``; with ``randomize=False`` the last draw is replayed.

        Raises:
            RuntimeError: ``randomize=False`` before any draw.
            ValueError: the image is not ``(C, H, W)`` or ``keep_size`` keeps all of its frequencies.
            TypeError: the image is not floating point.
        """
        img, img_t = _image_tensor(img, type(self).__name__)
        if randomize:
            self.randomize(img_t)
        stop = self.stop_mask(img_t.shape[1:])
        if not stop.any():
            return img
        out = band_stop_filter(img_t, torch.as_tensor(stop, device=img_t.device))
        out, *_ = convert_to_dst_type(out, dst=img)
        return out


class RandFrequencyBandStopMaskd(Randomizable, MapTransform):
    """Dictionary-based version of :class:`RandFrequencyBandStopMask`.

    One set of bands is drawn per call and stopped in every key. All keys must share ``(H, W)``.

    Args:
        keys: keys of the items to mask. See also: :py:class:`monai.transforms.MapTransform`.
        num_bands: number of annuli, ``>= 1``.
        num_masked_bands: bands zeroed per draw, in ``[0, num_bands]``; 0 is the identity mapping.
        keep_size: side of the always-kept low-frequency square, ``>= 0`` (rounded up to odd).
        band_spacing: ``"linear"`` or ``"log"``.
        mask_key: if given, the stop mask (fftshifted layout, 1 = zeroed frequency) is written there as a
            ``(1, H, W)`` tensor with the dtype and device of the first key's image.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        ValueError: bad arguments (see :class:`RandFrequencyBandStopMask`) or ``mask_key`` is one of ``keys``;
            at call time, keys whose spatial shapes differ.
        KeyError: a missing key (unless ``allow_missing_keys``), or ``mask_key`` already in the data.
    """

    backend = RandFrequencyBandStopMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_bands: int = 7,
        num_masked_bands: int = 2,
        keep_size: int = 10,
        band_spacing: str = "linear",
        mask_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if mask_key is not None and mask_key in self.keys:
            raise ValueError(f"mask_key {mask_key!r} must differ from the masked keys {self.keys}.")
        self.mask_key = mask_key
        self.masker = RandFrequencyBandStopMask(
            num_bands=num_bands, num_masked_bands=num_masked_bands, keep_size=keep_size, band_spacing=band_spacing
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandFrequencyBandStopMaskd:
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        """Draw the band ids."""
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
            mask = self.masker.stop_mask(spatial_shape)[None]  # 1, H, W
            d[self.mask_key], *_ = convert_to_dst_type(mask, dst=d[first_key])
        return d
