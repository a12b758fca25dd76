"""MONAI workflow pieces: the masked-image-modelling prepare-batch and the CycleGAN trainer."""

from usfm_monai.engines.cyclegan import (
    CycleGANKeys,
    CycleGANTrainer,
    PrepareBatchImageTarget,
    cyclegan_lr_lambda,
)
from usfm_monai.engines.prepare_batch import DualMaskPrepareBatch

__all__ = ["CycleGANKeys", "CycleGANTrainer", "DualMaskPrepareBatch", "PrepareBatchImageTarget", "cyclegan_lr_lambda"]
