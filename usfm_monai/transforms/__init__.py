"""MONAI-style transforms: USFM spatial-frequency dual masking (eq. 2-8) and grayscale conversion.

The masking equations are pure torch functions in :mod:`usfm_monai.transforms.masking`; the mask transforms
exported here wrap them.
"""

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
from usfm_monai.transforms.intensity import ScaleIntensity8Bit, ScaleIntensity8Bitd
from usfm_monai.transforms.segmentation import EnsureSameSpatialShaped, EnsureSpatialDims, EnsureSpatialDimsd
from usfm_monai.transforms.spatial_mask import RandSpatialMeanMask, RandSpatialMeanMaskd
from usfm_monai.transforms.ultrasound import (
    CropUltrasoundRegion,
    CropUltrasoundRegiond,
    SelectFrame,
    SelectFramed,
)

__all__ = [
    "CropUltrasoundRegion",
    "CropUltrasoundRegiond",
    "SelectFrame",
    "SelectFramed",
    "BatchedDualDomainMask",
    "DualMaskDraws",
    "EnsureGrayscale",
    "EnsureGrayscaled",
    "EnsureSameSpatialShaped",
    "EnsureSpatialDims",
    "EnsureSpatialDimsd",
    "RandDualDomainMask",
    "RandDualDomainMaskd",
    "RandFrequencyBandStopMask",
    "RandFrequencyBandStopMaskd",
    "RandSpatialMeanMask",
    "RandSpatialMeanMaskd",
    "ScaleIntensity8Bit",
    "ScaleIntensity8Bitd",
]
