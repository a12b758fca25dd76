"""8-bit intensity scaling that refuses anything that is not 8-bit.

Every bundle reads 8-bit grayscale ultrasound and maps it to ``[0, 1]`` (``docs/architecture.md``, Conventions).
MONAI's ``LoadImage`` returns ``float32`` whatever the file's bit depth, so a 16-bit PNG arrives with values up to
65535; a fixed ``ScaleIntensityRange(0, 255, clip=True)`` then turns it almost white and training runs on, exit 0.
The dataset preparers already reject 16-bit images (``usfm_monai.data.prepare.common.read_gray``); this transform
rejects them at load time too, so the bundles and the preparers agree: **8-bit only, everywhere**. Convert other
bit depths to 8-bit first (with the windowing that suits the data; a fixed guess here could be silently wrong for
12-bit data stored in 16 bits).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = ["ScaleIntensity8Bit", "ScaleIntensity8Bitd"]

#: largest value of an 8-bit image.
MAX_8BIT = 255.0


def _source(img: NdarrayOrTensor) -> str:
    """The file an image was loaded from (``MetaTensor`` metadata), for error messages."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return f"image {name}"
    return "the image"


class ScaleIntensity8Bit(Transform):
    """Map an 8-bit image (values in ``[0, 255]``) to ``[0, 1]`` by dividing by 255; reject anything else.

    Equivalent to ``ScaleIntensityRange(a_min=0, a_max=255, b_min=0, b_max=1)`` on valid input, which it
    replaces in the bundles; unlike a clipping range, an image outside ``[0, 255]`` (a 16-bit PNG, a float
    image already scaled in some other way) raises instead of being clipped to white.

    Raises:
        ValueError: at call time, values below 0 or above 255, naming the file (``MetaTensor`` metadata), the
            value range found and the fix.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image ``(C, spatial_dim_1[, spatial_dim_2, ...])``, any real dtype, values in
                ``[0, 255]``.

        Returns:
            ``float32`` image in ``[0, 1]``, same type and device as ``img`` (``MetaTensor`` metadata kept).
        """
        x = convert_to_tensor(img, track_meta=False)
        if x.numel():
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > MAX_8BIT:
                raise ValueError(
                    f"{_source(img)} has values in [{lo:g}, {hi:g}], expected an 8-bit image in [0, 255] "
                    f"(dtype {x.dtype} after loading): 16-bit and other bit depths are not supported, as in the "
                    "dataset preparers. Convert the file to 8-bit grayscale first."
                )
        out = x.to(torch.float32) / MAX_8BIT
        out, *_ = convert_to_dst_type(out, dst=img, dtype=torch.float32)
        return out


class ScaleIntensity8Bitd(MapTransform):
    """Dictionary version of :class:`ScaleIntensity8Bit`.

    Args:
        keys: keys of the images to scale.
        allow_missing_keys: do not raise when a key is absent.
    """

    backend = ScaleIntensity8Bit.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensity8Bit()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
