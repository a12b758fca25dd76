"""Convert channel-first images with 1, 3 or 4 channels to one grayscale channel.

Ultrasound is grayscale, but public datasets often ship B-mode frames as RGB (identical channels) or as RGB
with colored overlays (calipers, Doppler boxes), and some PNGs carry an alpha channel. USFM's networks take one
channel (paper §3.2: the encoder sees single-channel US images), so every pipeline converts on load with
:class:`EnsureGrayscaled`, right after ``LoadImaged(..., ensure_channel_first=True)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["EnsureGrayscale", "EnsureGrayscaled", "LUMA_WEIGHTS"]

#: ITU-R BT.601 luma weights for (R, G, B), the same as PIL's ``Image.convert("L")``.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_METHODS = ("luma", "mean")


class EnsureGrayscale(Transform):
    """Reduce a channel-first image to a single grayscale channel.

    - 1 channel: returned unchanged (converted to a tensor).
    - 3 channels (RGB): ``method="luma"`` gives ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, as
      PIL's ``convert("L")``); ``method="mean"`` gives ``(R + G + B) / 3``. When the three channels are
      identical (a gray picture stored as RGB) the result is exactly that channel, with no rounding error.
    - 4 channels (RGBA): the alpha channel is dropped, then the RGB rule applies.

    Integer inputs are converted in float32, rounded to the nearest integer and cast back to the input dtype,
    so ``uint8`` stays ``uint8`` in ``[0, 255]``.

    Args:
        method: ``"luma"`` (default) or ``"mean"``.

    Raises:
        ValueError: ``method`` is not ``"luma"`` or ``"mean"``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, method: str = "luma") -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
        self.method = method

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Convert ``img`` to one channel.

        Args:
            img: channel-first image ``(C, spatial_dim_1[, spatial_dim_2, ...])`` with ``C`` in ``{1, 3, 4}``,
                numpy array or torch tensor of any real dtype and value range.

        Returns:
            ``(1, spatial_dim_1[, spatial_dim_2, ...])`` tensor on the input's device, with the input's dtype;
            a ``MetaTensor`` keeps its metadata.

        Raises:
            ValueError: ``img`` has fewer than 2 dims or a channel count other than 1, 3 or 4.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim < 2:
            raise ValueError(
                f"EnsureGrayscale expects a channel-first image (C, spatial...), got shape {tuple(img.shape)}."
            )
        num_channels = img.shape[0]
        if num_channels not in (1, 3, 4):
            raise ValueError(
                "EnsureGrayscale expects 1 (gray), 3 (RGB) or 4 (RGBA) channels in dim 0, "
                f"got {num_channels} channels in shape {tuple(img.shape)}; is the image channel-first?"
            )
        if num_channels == 1:
            return img
        img_t = convert_to_tensor(img, track_meta=False)
        rgb = img_t[:3]
        if torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], rgb[2]):
            # exact for gray-as-RGB pictures, which float weights summing to 1 would not guarantee
            out = rgb[:1].clone()
        else:
            work = rgb.to(torch.float64 if rgb.dtype == torch.float64 else torch.float32)
            if self.method == "luma":
                weights = torch.tensor(LUMA_WEIGHTS, dtype=work.dtype, device=work.device)
                out = torch.tensordot(weights, work, dims=([0], [0]))[None]
            else:
                out = work.mean(dim=0, keepdim=True)
            if not (rgb.dtype.is_floating_point or rgb.dtype.is_complex):
                out = out.round()
        out, *_ = convert_to_dst_type(out, dst=img, dtype=img_t.dtype)
        return out


class EnsureGrayscaled(MapTransform):
    """Dictionary-based :class:`EnsureGrayscale`.

    Args:
        keys: keys of the images to convert, e.g. ``"image"`` or ``("image", "target")``.
        method: ``"luma"`` (ITU-R BT.601) or ``"mean"``; see :class:`EnsureGrayscale`.
        allow_missing_keys: don't raise when a key is absent.

    Raises:
        ValueError: ``method`` is not ``"luma"`` or ``"mean"``.
    """

    backend = EnsureGrayscale.backend

    def __init__(self, keys: KeysCollection, method: str = "luma", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureGrayscale(method=method)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
