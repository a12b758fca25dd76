"""MONAI transforms for the spatial-frequency dual mask, USFM paper eq. 8 (Jiao et al., arXiv 2401.00153).

The dual-masked input is the frequency band-stopped image (eq. 7) everywhere except in the spatially masked
blocks (eq. 2), which hold the per-channel mean of the ORIGINAL image; with ``use_frequency_mask=False`` it is
the spatial mask alone (the paper's USFM-woF ablation). The equations, the geometry and the draws live in
:mod:`usfm_monai.transforms.masking`; this module only wraps them:

* :class:`RandDualDomainMask` / :class:`RandDualDomainMaskd`: MONAI ``Randomizable`` array / dictionary
  transforms; each call seeds a ``torch.Generator`` from ``self.R`` and masks a batch of one.
* :class:`BatchedDualDomainMask`: the same masks on ``(B, C, H, W)`` tensors on any device, drawn from an
  explicit ``torch.Generator`` (:meth:`~BatchedDualDomainMask.draw`) and applied by
  :meth:`~BatchedDualDomainMask.apply`; what the pretraining prepare-batch runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from usfm_monai.transforms.masking import (
    _check_free_key,
    _common_spatial_shape,
    _image_tensor,
    band_stop_masks,
    block_grid_to_pixel_mask,
    check_int,
    check_mask_args,
    check_spatial_shape,
    draw_band_ids,
    draw_block_grids,
    dual_domain_mask,
    generator_from_random_state,
)

__all__ = ["RandDualDomainMask", "RandDualDomainMaskd", "DualMaskDraws", "BatchedDualDomainMask"]


class RandDualDomainMask(Randomizable):
    """Spatial-frequency dual masking of USFM (Jiao et al., arXiv 2401.00153, eq. 8).

    Each call draws a block grid (as :class:`~usfm_monai.transforms.spatial_mask.RandSpatialMeanMask`) and
    then, when ``use_frequency_mask``, a set of bands (as
    :class:`~usfm_monai.transforms.frequency_mask.RandFrequencyBandStopMask`), both from ``self.R``. The
    output is the band-stopped image with the masked blocks filled by the original image's per-channel mean.
    The draws are in :attr:`block_grid` (``(ceil(H / block_size), ceil(W / block_size))`` bool CPU tensor) and
    :attr:`band_ids` (``(K,)`` int64 CPU tensor, empty without the frequency mask); :meth:`pixel_mask` and
    :meth:`stop_mask` turn them into ``(H, W)`` masks. Both come from one ``torch.Generator`` seeded from
    ``self.R`` per call, so ``set_random_state`` makes them reproducible.

    Data is channel-first ``(num_channels, H, W)``, floating point, numpy or torch; the result is a tensor
    with the input's dtype and device (a ``MetaTensor`` when metadata is tracked).

    Args:
        block_size: side of the square spatial blocks in pixels, ``>= 1`` (paper: 32).
        mask_ratio: probability that a block is masked, in ``[0, 1]`` (paper: 0.4).
        num_bands: number of frequency annuli, ``>= 1`` (paper: 7).
        num_masked_bands: annuli zeroed per draw, in ``[0, num_bands]`` (paper: 2).
        keep_size: side of the always-kept low-frequency square, ``>= 0``, rounded up to odd (paper: 10).
        band_spacing: ``"linear"`` or ``"log"`` band edges.
        use_frequency_mask: False gives the USFM-woF ablation (spatial mean mask only, no bands drawn).
            ``mask_ratio=0`` together with ``num_masked_bands=0`` (or ``use_frequency_mask=False``) is the
            identity mapping.

    Raises:
        TypeError: an integer argument is not an integer, or ``use_frequency_mask`` is not a bool.
        ValueError: an argument is out of range or ``band_spacing`` is unknown.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        block_size: int = 32,
        mask_ratio: float = 0.4,
        num_bands: int = 7,
        num_masked_bands: int = 2,
        keep_size: int = 10,
        band_spacing: str = "linear",
        use_frequency_mask: bool = True,
    ) -> None:
        check_mask_args(
            block_size, mask_ratio, num_bands, num_masked_bands, keep_size, band_spacing, use_frequency_mask
        )
        self.block_size = int(block_size)
        self.mask_ratio = float(mask_ratio)
        self.num_bands = int(num_bands)
        self.num_masked_bands = int(num_masked_bands)
        self.keep_size = int(keep_size)
        self.band_spacing = band_spacing
        self.use_frequency_mask = bool(use_frequency_mask)
        self.block_grid: torch.Tensor | None = None
        self.band_ids: torch.Tensor | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Draw :attr:`block_grid` for ``img``'s spatial shape, then :attr:`band_ids`, from ``self.R`` only."""
        if len(img.shape) != 3:
            raise ValueError(f"{type(self).__name__} expects a (C, H, W) image, got shape {tuple(img.shape)}.")
        generator = generator_from_random_state(self.R)
        self.block_grid = draw_block_grids(1, img.shape[1:], self.block_size, self.mask_ratio, generator)[0]
        self.band_ids = draw_band_ids(1, self.num_bands, self._num_stopped, generator)[0]

    @property
    def _num_stopped(self) -> int:
        return self.num_masked_bands if self.use_frequency_mask else 0

    def _check_drawn(self) -> None:
        if self.block_grid is None or self.band_ids is None:
            raise RuntimeError(f"{type(self).__name__}: please call the `randomize()` function first.")

    def pixel_mask(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """``(H, W)`` bool spatial mask of the drawn blocks, True = filled with the mean.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when the drawn grid does not fit ``spatial_shape``.
        """
        self._check_drawn()
        return block_grid_to_pixel_mask(self.block_grid, spatial_shape, self.block_size)  # type: ignore[arg-type]

    def stop_mask(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """``(H, W)`` bool frequency stop mask (fftshifted layout) of the drawn bands, True = zeroed.

        All False without the frequency mask.

        Raises:
            RuntimeError: when nothing was drawn yet.
            ValueError: when ``keep_size`` keeps every frequency of ``spatial_shape``.
        """
        self._check_drawn()
        if not self.use_frequency_mask:
            return torch.zeros(check_spatial_shape(spatial_shape), dtype=torch.bool)
        ids = self.band_ids[None]  # type: ignore[index]
        return band_stop_masks(ids, spatial_shape, self.num_bands, self.keep_size, self.band_spacing)[0]

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Dual-mask ``img``, ``(C, H, W)``; with ``randomize=False`` the last draw is replayed.

        Raises:
            RuntimeError: ``randomize=False`` before any draw.
            ValueError: the image is not ``(C, H, W)``, the replayed grid does not fit it, or ``keep_size``
                keeps all of its frequencies.
            TypeError: the image is not floating point.
        """
        img, img_t = _image_tensor(img, type(self).__name__)
        if randomize:
            self.randomize(img_t)
        self._check_drawn()
        grid, ids = self.block_grid[None], self.band_ids[None]  # type: ignore[index]
        args = (self.block_size, self.num_bands, self.keep_size, self.band_spacing)
        out = dual_domain_mask(img_t[None], grid, ids, *args)[0]
        out, *_ = convert_to_dst_type(out, dst=img)
        return out


class RandDualDomainMaskd(Randomizable, MapTransform):
    """Dictionary-based version of :class:`RandDualDomainMask`, the masked-image-modeling input step.

    One draw per call is shared by all keys (which must share ``(H, W)``). Each key gets its dual-masked
    image, and the unmasked input is kept under the matching ``target_key`` as the reconstruction target.

    Args:
        keys: keys of the images to mask. See also: :py:class:`monai.transforms.MapTransform`.
        target_key: where to keep the original image(s), one key per item of ``keys`` (a single key for the
            default single ``keys``); None keeps no copy.
        spatial_mask_key: if given, the spatial pixel mask (1 = filled with the mean) is written there as a
            ``(1, H, W)`` tensor with the dtype and device of the first key's image.
        frequency_mask_key: if given, the frequency stop mask (fftshifted layout, 1 = zeroed frequency) is
            written there the same way; for figures.
        block_size, mask_ratio, num_bands, num_masked_bands, keep_size, band_spacing, use_frequency_mask:
            as in :class:`RandDualDomainMask`.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        ValueError: bad masking arguments, a ``target_key`` count that differs from ``keys``, or output keys
            that collide with ``keys`` or with each other; at call time, keys whose spatial shapes differ.
        KeyError: a missing key (unless ``allow_missing_keys``), or an output key already in the data.
    """

    backend = RandDualDomainMask.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        target_key: KeysCollection | None = "target",
        spatial_mask_key: Hashable | None = None,
        frequency_mask_key: Hashable | None = None,
        block_size: int = 32,
        mask_ratio: float = 0.4,
        num_bands: int = 7,
        num_masked_bands: int = 2,
        keep_size: int = 10,
        band_spacing: str = "linear",
        use_frequency_mask: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.target_keys: tuple[Hashable, ...] | None = None
        if target_key is not None:
            self.target_keys = ensure_tuple(target_key)
            if len(self.target_keys) != len(self.keys):
                raise ValueError(
                    f"target_key needs one key per masked key: keys={self.keys}, target_key={self.target_keys}."
                )
        outputs = list(self.target_keys or ()) + [k for k in (spatial_mask_key, frequency_mask_key) if k is not None]
        if len(set(outputs)) != len(outputs) or set(outputs) & set(self.keys):
            raise ValueError(
                f"output keys {outputs} must be distinct and differ from the masked keys {self.keys}."
            )
        self.spatial_mask_key = spatial_mask_key
        self.frequency_mask_key = frequency_mask_key
        self.masker = RandDualDomainMask(
            block_size=block_size,
            mask_ratio=mask_ratio,
            num_bands=num_bands,
            num_masked_bands=num_masked_bands,
            keep_size=keep_size,
            band_spacing=band_spacing,
            use_frequency_mask=use_frequency_mask,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandDualDomainMaskd:
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def randomize(self, data: NdarrayOrTensor) -> None:
        """Draw the block grid (for the image ``data``, ``(C, H, W)``) and the band ids."""
        self.masker.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        name = type(self).__name__
        spatial_shape = _common_spatial_shape(d, self.key_iterator(d), name)
        present = list(self.key_iterator(d))
        targets = dict(zip(self.keys, self.target_keys)) if self.target_keys is not None else {}
        for out_key in [targets[k] for k in present if k in targets] + [
            k for k in (self.spatial_mask_key, self.frequency_mask_key) if k is not None
        ]:
            _check_free_key(d, out_key, name)
        self.randomize(d[first_key])
        for key in present:
            original = convert_to_tensor(d[key], track_meta=get_track_meta())
            d[key] = self.masker(original, randomize=False)
            if key in targets:
                d[targets[key]] = original
        if self.spatial_mask_key is not None:
            mask = self.masker.pixel_mask(spatial_shape)[None]  # 1, H, W
            d[self.spatial_mask_key], *_ = convert_to_dst_type(mask, dst=d[first_key])
        if self.frequency_mask_key is not None:
            mask = self.masker.stop_mask(spatial_shape)[None]  # 1, H, W
            d[self.frequency_mask_key], *_ = convert_to_dst_type(mask, dst=d[first_key])
        return d


@dataclass(frozen=True, eq=False)
class DualMaskDraws:
    """The random draws of one batch of dual masks.

    Attributes:
        block_grids: ``(B, ceil(H / block_size), ceil(W / block_size))`` bool tensor, True = masked block.
        band_ids: ``(B, K)`` int64 tensor of the stopped band ids per sample (``K = num_masked_bands``,
            0 without the frequency mask).
    """

    block_grids: torch.Tensor
    band_ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.block_grids.shape[0])

    def to(self, device: torch.device | str) -> DualMaskDraws:
        """The same draws on ``device``."""
        return DualMaskDraws(self.block_grids.to(device), self.band_ids.to(device))

    def __getitem__(self, index: int | slice) -> DualMaskDraws:
        """The draws of some samples (a slice, or one index kept as a batch of one)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        return DualMaskDraws(self.block_grids[index], self.band_ids[index])


class BatchedDualDomainMask:
    """Dual masking (eq. 8) of ``(B, C, H, W)`` tensors on any device, with explicit ``torch.Generator`` draws.

    :meth:`draw` draws block grids, then band ids (independently per sample: each block with probability
    ``mask_ratio``, ``num_masked_bands`` distinct bands) and :meth:`apply` applies given draws, both with the
    functions of :mod:`usfm_monai.transforms.masking`; ``masker(images, generator)`` does both.
    :meth:`draws_from_transforms` stacks the last draws of per-sample :class:`RandDualDomainMask` transforms.

    Args:
        block_size, mask_ratio, num_bands, num_masked_bands, keep_size, band_spacing, use_frequency_mask:
            as in :class:`RandDualDomainMask`.

    Raises:
        TypeError: an integer argument is not an integer, or ``use_frequency_mask`` is not a bool.
        ValueError: an argument is out of range or ``band_spacing`` is unknown.
    """

    def __init__(
        self,
        block_size: int = 32,
        mask_ratio: float = 0.4,
        num_bands: int = 7,
        num_masked_bands: int = 2,
        keep_size: int = 10,
        band_spacing: str = "linear",
        use_frequency_mask: bool = True,
    ) -> None:
        check_mask_args(
            block_size, mask_ratio, num_bands, num_masked_bands, keep_size, band_spacing, use_frequency_mask
        )
        self.block_size = int(block_size)
        self.mask_ratio = float(mask_ratio)
        self.num_bands = int(num_bands)
        self.num_masked_bands = int(num_masked_bands)
        self.keep_size = int(keep_size)
        self.band_spacing = band_spacing
        self.use_frequency_mask = bool(use_frequency_mask)

    @property
    def _num_stopped(self) -> int:
        return self.num_masked_bands if self.use_frequency_mask else 0

    def draw(
        self,
        batch_size: int,
        spatial_shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> DualMaskDraws:
        """Draw block grids, then band ids, for ``batch_size`` images of ``spatial_shape``.

        Args:
            batch_size: ``B >= 1``.
            spatial_shape: ``(H, W)``.
            generator: the numbers come from it, on its device (torch's default generator on CPU when None).
            device: where the draws are returned; defaults to the generator's device (CPU when None).

        Returns:
            :class:`DualMaskDraws` with ``block_grids`` ``(B, gh, gw)`` bool and ``band_ids`` ``(B, K)`` int64.
        """
        check_int("batch_size", batch_size, 1)
        hw = check_spatial_shape(spatial_shape)
        grids = draw_block_grids(batch_size, hw, self.block_size, self.mask_ratio, generator, device)
        ids = draw_band_ids(batch_size, self.num_bands, self._num_stopped, generator, device)
        return DualMaskDraws(block_grids=grids, band_ids=ids)

    def draws_from_transforms(
        self, transforms: Sequence[RandDualDomainMask], device: torch.device | str | None = None
    ) -> DualMaskDraws:
        """Stack the last draws of per-sample transforms (one per image of the batch) to replay them.

        Raises:
            TypeError: an item is not a :class:`RandDualDomainMask`.
            ValueError: an item is configured differently from this instance, or its draws do not stack.
            RuntimeError: an item has not drawn yet.
        """
        if len(transforms) == 0:
            raise ValueError("draws_from_transforms needs at least one transform.")
        fields = ("block_size", "num_bands", "num_masked_bands", "keep_size", "band_spacing", "use_frequency_mask")
        for i, t in enumerate(transforms):
            if not isinstance(t, RandDualDomainMask):
                raise TypeError(f"transforms[{i}] must be a RandDualDomainMask, got {type(t).__name__}.")
            diff = {f: (getattr(t, f), getattr(self, f)) for f in fields if getattr(t, f) != getattr(self, f)}
            if diff:
                raise ValueError(f"transforms[{i}] is configured differently, (theirs, ours): {diff}.")
            t._check_drawn()
        shapes = {tuple(t.block_grid.shape) for t in transforms}  # type: ignore[union-attr]
        if len(shapes) > 1:
            raise ValueError(f"the transforms drew block grids of different shapes {sorted(shapes)}.")
        grids = torch.stack([t.block_grid for t in transforms]).to(device)  # type: ignore[misc]  # B, gh, gw
        ids = torch.stack([t.band_ids for t in transforms]).to(device)  # type: ignore[misc]  # B, K
        return DualMaskDraws(block_grids=grids, band_ids=ids)

    def apply(
        self, images: torch.Tensor, draws: DualMaskDraws, return_masks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dual-mask a batch with given draws (eq. 8, :func:`~usfm_monai.transforms.masking.dual_domain_mask`).

        Args:
            images: ``(B, C, H, W)`` floating tensor (intensities in ``[0, 1]`` by convention), any device.
            draws: from :meth:`draw` or :meth:`draws_from_transforms`; moved to ``images.device`` if needed.
            return_masks: also return the spatial pixel masks.

        Returns:
            The masked ``(B, C, H, W)`` tensor (dtype, device and tensor type of ``images``), and with
            ``return_masks`` the ``(B, 1, H, W)`` bool pixel masks (True = filled with the mean).

        Raises:
            TypeError: ``images`` is not a floating tensor.
            ValueError: ``images`` is not 4-D, the draws do not fit it, or ``keep_size`` keeps every frequency.
        """
        if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
            raise TypeError(
                f"{type(self).__name__} expects a floating-point torch tensor, got "
                f"{getattr(images, 'dtype', type(images).__name__)}."
            )
        if images.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, C, H, W), got {tuple(images.shape)}.")
        x = convert_to_tensor(images, track_meta=False)
        draws = draws.to(x.device)
        if draws.band_ids.ndim == 2 and draws.band_ids.shape[1] != self._num_stopped:
            raise ValueError(
                f"band_ids must be an int64 tensor of shape ({x.shape[0]}, {self._num_stopped}), "
                f"got {draws.band_ids.dtype} {tuple(draws.band_ids.shape)}."
            )
        args = (self.block_size, self.num_bands, self.keep_size, self.band_spacing)
        out = dual_domain_mask(x, draws.block_grids, draws.band_ids, *args)  # B, C, H, W
        out, *_ = convert_to_dst_type(out, dst=images)
        if not return_masks:
            return out
        return out, block_grid_to_pixel_mask(draws.block_grids, x.shape[-2:], self.block_size).unsqueeze(1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw (see :meth:`draw`; a ``generator`` on another device than ``images`` is allowed) and apply.

        Args:
            images: ``(B, C, H, W)`` floating tensor.
            generator: source of randomness; torch's default generator when None.

        Returns:
            The masked ``(B, C, H, W)`` tensor.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a (B, C, H, W) torch tensor, got {type(images).__name__}.")
        if images.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, C, H, W), got {tuple(images.shape)}.")
        draws = self.draw(images.shape[0], images.shape[-2:], generator=generator, device=images.device)
        return self.apply(images, draws)  # type: ignore[return-value]
