"""MONAI transforms for the frequency band-stop mask, USFM paper eq. 3-7 (Jiao et al., arXiv 2401.00153).

:class:`RandFrequencyBandStopMask` and its dictionary twin :class:`RandFrequencyBandStopMaskd` are thin
wrappers of :mod:`usfm_monai.transforms.masking`, where the equations and the band geometry are documented
(:func:`~usfm_monai.transforms.masking.frequency_band_map`, re-exported here): they draw the bands with a
``torch.Generator`` seeded from ``self.R`` and call the core functions on a batch of one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_dst_type

from usfm_monai.transforms.masking import (
    BAND_SPACINGS,
    _check_free_key,
    _common_spatial_shape,
    _image_tensor,
    band_stop_filter,
    band_stop_masks,
    check_band_args,
    draw_band_ids,
    frequency_band_edges,
    frequency_band_map,
    generator_from_random_state,
)

__all__ = [
    "BAND_SPACINGS",
    "RandFrequencyBandStopMask",
    "RandFrequencyBandStopMaskd",
    "frequency_band_edges",
    "frequency_band_map",
]


class RandFrequencyBandStopMask(Randomizable):
    """Frequency band-stop masking of USFM (Jiao et al., arXiv 2401.00153, eq. 3-7).

    Every channel goes to the centred 2-D DFT; outside the always-kept low-frequency square the spectrum is
    split into ``num_bands`` concentric annuli (geometry in this module's docstring), ``num_masked_bands`` of
    them, drawn without replacement, are zeroed, and the real part of the inverse DFT is returned. The drawn
    band ids are in :attr:`band_ids` (``(K,)`` int64 CPU tensor, sorted; drawn from a ``torch.Generator``
    seeded from ``self.R``) and :meth:`stop_mask` gives the ``(H, W)`` stop mask for a shape.

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
        check_band_args(num_bands, num_masked_bands, keep_size, band_spacing)
        self.num_bands = int(num_bands)
        self.num_masked_bands = int(num_masked_bands)
        self.keep_size = int(keep_size)
        self.band_spacing = band_spacing
        self.band_ids: torch.Tensor | None = None

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        """Draw :attr:`band_ids` from ``self.R`` (the bands do not depend on the image)."""
        generator = generator_from_random_state(self.R)
        self.band_ids = draw_band_ids(1, self.num_bands, self.num_masked_bands, generator)[0]

    def stop_mask(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """``(H, W)`` bool stop mask of the drawn bands in the fftshifted layout, True = zeroed.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when ``keep_size`` keeps every frequency of ``spatial_shape``.
        """
        if self.band_ids is None:
            raise RuntimeError(f"{type(self).__name__}: please call the `randomize()` function first.")
        return band_stop_masks(self.band_ids[None], spatial_shape, self.num_bands, self.keep_size, self.band_spacing)[0]

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
        if not self.stop_mask(img_t.shape[1:]).any():  # also raises when keep_size keeps every frequency
            return img
        ids = self.band_ids[None].to(img_t.device)  # type: ignore[index]
        out = band_stop_filter(img_t[None], ids, self.num_bands, self.keep_size, self.band_spacing)[0]
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
