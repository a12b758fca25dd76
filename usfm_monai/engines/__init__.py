"""MONAI workflow pieces: the masked-image-modelling prepare-batch, the CycleGAN trainer, mixed precision."""

from usfm_monai.engines.cyclegan import (
    CycleGANKeys,
    CycleGANTrainer,
    PrepareBatchImageTarget,
    cyclegan_lr_lambda,
)
from usfm_monai.engines.prepare_batch import DualMaskPrepareBatch
from usfm_monai.engines.precision import (
    AMP_DTYPES,
    AmpSupervisedTrainer,
    autocast_kwargs,
    check_amp_dtype,
    default_amp_dtype,
    needs_grad_scaler,
)

__all__ = [
    "AMP_DTYPES",
    "AmpSupervisedTrainer",
    "CycleGANKeys",
    "CycleGANTrainer",
    "DualMaskPrepareBatch",
    "PrepareBatchImageTarget",
    "autocast_kwargs",
    "check_amp_dtype",
    "cyclegan_lr_lambda",
    "default_amp_dtype",
    "needs_grad_scaler",
]
