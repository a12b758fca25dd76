"""Command line of usfm-monai (``usfm-monai <command> --help`` or ``python -m usfm_monai <command> --help``).

Each command is a thin call into one package function; its docstring is the help text::

    usfm-monai synthetic --output_dir data/synthetic --task segmentation --num_images 200
    usfm-monai prepare_busi_classification --busi_dir /data/Dataset_BUSI_with_GT --output data_lists/busi.json
    usfm-monai prepare_tn3k --tn3k_dir /data/tn3k --output data_lists/tn3k_fold0.json --fold 0
    usfm-monai convert_authors_weights --checkpoint USFM_latest.pth --output_dir weights/usfm_authors
    usfm-monai pack_bundle bundles/seg_tn3k
    usfm-monai probe --encoders "['random','models/usfm_encoder.pt']" --dataset_dir /data/BUSI --datalist_file busi.json
"""

from __future__ import annotations

import fire

from usfm_monai.apps.authors_weights import convert_authors_weights_command
from usfm_monai.data.prepare import (
    prepare_busi_classification,
    prepare_busi_pretrain,
    prepare_busi_segmentation,
    prepare_class_folders,
    prepare_frames,
    prepare_image_mask_folders,
    prepare_organ_folder,
    prepare_tn3k,
    prepare_usenhance,
)
from usfm_monai.data.synthetic import make_synthetic_dataset
from usfm_monai.apps.experiments.grid import run_grid
from usfm_monai.apps.packaging import pack_bundle_command
from usfm_monai.probe import probe_encoder
from usfm_monai.apps.seeds import run_seeds

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "synthetic": make_synthetic_dataset,
    "prepare_organ_folder": prepare_organ_folder,
    "prepare_frames": prepare_frames,
    "prepare_busi_pretrain": prepare_busi_pretrain,
    "prepare_busi_classification": prepare_busi_classification,
    "prepare_busi_segmentation": prepare_busi_segmentation,
    "prepare_tn3k": prepare_tn3k,
    "prepare_usenhance": prepare_usenhance,
    "prepare_image_mask_folders": prepare_image_mask_folders,
    "prepare_class_folders": prepare_class_folders,
    "convert_authors_weights": convert_authors_weights_command,
    "pack_bundle": pack_bundle_command,
    "run_seeds": run_seeds,
    "grid": run_grid,
    "probe": probe_encoder,
}


def main() -> None:
    fire.Fire(COMMANDS, name="usfm-monai")


if __name__ == "__main__":
    main()
