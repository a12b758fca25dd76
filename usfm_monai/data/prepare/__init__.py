"""Dataset preparers (paper Table 1): raw public layouts -> versioned datalist JSON files."""

from usfm_monai.data.prepare.busi import (
    prepare_busi_classification,
    prepare_busi_segmentation,
)
from usfm_monai.data.prepare.folders import (
    prepare_class_folders,
    prepare_image_mask_folders,
)
from usfm_monai.data.prepare.frames import prepare_frames
from usfm_monai.data.prepare.organ_folder import (
    prepare_busi_pretrain,
    prepare_organ_folder,
)
from usfm_monai.data.prepare.tn3k import prepare_tn3k
from usfm_monai.data.prepare.usenhance import prepare_usenhance

__all__ = [
    "prepare_busi_classification",
    "prepare_busi_pretrain",
    "prepare_busi_segmentation",
    "prepare_class_folders",
    "prepare_frames",
    "prepare_image_mask_folders",
    "prepare_organ_folder",
    "prepare_tn3k",
    "prepare_usenhance",
]
