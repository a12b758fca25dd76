"""MONAI workflow pieces: the masked-image-modelling prepare-batch and the CycleGAN trainer."""

from usfm_monai.engines.prepare_batch import DualMaskPrepareBatch

__all__ = ["DualMaskPrepareBatch"]
