"""MONAI-style transforms: USFM spatial-frequency dual masking (eq. 2-8) and grayscale conversion."""

from usfm_monai.transforms.dual_mask import (
    BatchedDualDomainMask,
    DualMaskDraws,
    RandDualDomainMask,
    RandDualDomainMaskd,
)
from usfm_monai.transforms.frequency_mask import (
    RandFrequencyBandStopMask,
    RandFrequencyBandStopMaskd,
)
from usfm_monai.transforms.grayscale import EnsureGrayscale, EnsureGrayscaled
from usfm_monai.transforms.segmentation import EnsureSpatialDims, EnsureSpatialDimsd
from usfm_monai.transforms.spatial_mask import RandSpatialMeanMask, RandSpatialMeanMaskd

__all__ = [
    "BatchedDualDomainMask",
    "DualMaskDraws",
    "EnsureGrayscale",
    "EnsureGrayscaled",
    "EnsureSpatialDims",
    "EnsureSpatialDimsd",
    "RandDualDomainMask",
    "RandDualDomainMaskd",
    "RandFrequencyBandStopMask",
    "RandFrequencyBandStopMaskd",
    "RandSpatialMeanMask",
    "RandSpatialMeanMaskd",
]
