"""Input shape normalization for the 2-D segmentation bundle: single-frame volumes become 2-D images.

MONAI's ITK reader loads a single-frame DICOM (and some 2-D NIfTI files) as a 3-D volume ``(C, W, H, 1)``, which
2-D transforms (``Resized`` with two sizes) and 2-D networks reject; ``SqueezeDim`` removes one axis but raises on
files that are already 2-D. :class:`EnsureSpatialDims` drops trailing singleton spatial axes until the wanted
number remains, and leaves 2-D images untouched, so one ``inference.json`` reads PNG, JPEG, NIfTI and DICOM.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, SqueezeDim, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["EnsureSameSpatialShaped", "EnsureSpatialDims", "EnsureSpatialDimsd"]


class EnsureSpatialDims(Transform):
    """Remove trailing size-1 spatial axes of a channel-first image until ``spatial_dims`` spatial axes remain.

    ``(C, W, H, 1)`` → ``(C, W, H)`` for ``spatial_dims=2``; ``(C, W, H)`` is returned unchanged (as a tensor).
    The affine is updated by MONAI's ``SqueezeDim(update_meta=True)``.

    Args:
        spatial_dims: number of spatial axes wanted, >= 1.

    Raises:
        ValueError: ``spatial_dims < 1`` (at construction); at call time, an image with fewer spatial axes, or
            whose extra trailing axes are not of size 1 (e.g. a multi-frame DICOM), naming its shape.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, spatial_dims: int = 2) -> None:
        if spatial_dims < 1:
            raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self._squeeze = SqueezeDim(dim=-1, update_meta=True)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image ``(C, spatial_dim_1, ..., spatial_dim_N)``, ``N >= spatial_dims``.

        Returns:
            the image with ``spatial_dims`` spatial axes, a tensor (``MetaTensor`` when metadata is tracked).
        """
        shape = tuple(img.shape)
        if len(shape) - 1 < self.spatial_dims:
            raise ValueError(
                f"expected a channel-first image with {self.spatial_dims} spatial axes, got shape {shape}."
            )
        extra = shape[1 + self.spatial_dims :]
        if any(s != 1 for s in extra):
            raise ValueError(
                f"expected a channel-first image with {self.spatial_dims} spatial axes (trailing axes of size 1 are "
                f"dropped), got shape {shape}: is it a multi-frame volume?"
            )
        out = img
        for _ in extra:
            out = self._squeeze(out)
        out = convert_to_tensor(out, track_meta=get_track_meta())
        if extra and isinstance(out, MetaTensor) and "spatial_shape" in out.meta:
            # readers record a 2-D DICOM as (W, H, 1); consumers that restore a prediction to the input's
            # "spatial_shape" (MONAI Label's Restored) must see the 2-D shape the image now has
            out.meta["spatial_shape"] = out.meta["spatial_shape"][: self.spatial_dims]
        return out


class EnsureSpatialDimsd(MapTransform):
    """Dictionary version of :class:`EnsureSpatialDims`.

    Args:
        keys: keys of the images to normalize.
        spatial_dims: number of spatial axes wanted.
        allow_missing_keys: do not raise when a key is absent.
    """

    backend = EnsureSpatialDims.backend

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureSpatialDims(spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def _name(data: Mapping[Hashable, NdarrayOrTensor], key: Hashable) -> str:
    """``'<key>' <file>`` for error messages: the file an image was loaded from, if its metadata says."""
    value = data[key]
    filename = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
    return f"{key!r} {filename}" if filename else f"{key!r}"


class EnsureSameSpatialShaped(MapTransform):
    """Check that the images under ``keys`` have the same spatial shape; return the data unchanged.

    A mask of another size than its image would otherwise be resized to the network size with the image by
    ``Resized`` and train silently on a misaligned label; the mask-folder preparer rejects such pairs, and this
    check does the same at load time for any datalist. There is no array version: the check compares keys.

    Args:
        keys: the keys to compare (e.g. ``["image", "label"]``), channel-first ``(C, spatial_dim_1, ...)``.
        allow_missing_keys: compare only the keys present (e.g. ``label`` at inference).

    Raises:
        ValueError: at call time, spatial shapes differ; the message names both keys, their files and shapes.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> Mapping[Hashable, NdarrayOrTensor]:
        first = None
        for key in self.key_iterator(data):
            shape = tuple(data[key].shape[1:])  # spatial shape: the channel count may differ (RGB image, gray mask)
            if first is None:
                first = (key, shape)
            elif shape != first[1]:
                raise ValueError(
                    f"{_name(data, first[0])} has spatial size {first[1]} but {_name(data, key)} has {shape}; "
                    "they must match pixel for pixel (a mask is never resized to fit its image)."
                )
        return data
