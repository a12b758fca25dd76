"""Networks: the USFM encoder (BEiT-style ViT), its weight loading, the MIM model and the task networks."""

from usfm_monai.networks.classifier import USFMClassifier
from usfm_monai.networks.cyclegan import (
    FrozenUSFMBranch,
    ImagePool,
    PatchGANDiscriminator,
    ResnetGenerator,
)
from usfm_monai.networks.encoder import USFMEncoder, create_usfm_encoder
from usfm_monai.networks.mim import USFMMaskedImageModel
from usfm_monai.networks.upernet import USFMSegmenter
from usfm_monai.networks.weights import (
    WeightLoadReport,
    convert_authors_checkpoint,
    export_encoder,
    find_encoder,
    load_encoder_weights,
    unwrap_model,
)

__all__ = [
    "FrozenUSFMBranch",
    "ImagePool",
    "PatchGANDiscriminator",
    "ResnetGenerator",
    "USFMClassifier",
    "USFMEncoder",
    "USFMMaskedImageModel",
    "USFMSegmenter",
    "WeightLoadReport",
    "convert_authors_checkpoint",
    "create_usfm_encoder",
    "export_encoder",
    "find_encoder",
    "load_encoder_weights",
    "unwrap_model",
]
