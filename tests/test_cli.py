"""The fire CLI exposes the preparation commands and runs them."""

import json
import subprocess
import sys

from usfm_monai.apps.cli import COMMANDS


def test_cli_synthetic_writes_a_datalist(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "usfm_monai", "synthetic", "--output_dir", str(tmp_path / "syn"), "--task",
         "classification", "--num_images", "6", "--image_size", "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    datalist = json.loads((tmp_path / "syn" / "datalist.json").read_text())
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    assert len(items) == 6 and all((tmp_path / "syn" / it["image"]).is_file() for it in items)


def test_cli_lists_every_preparer():
    expected = {"synthetic", "prepare_busi_classification", "prepare_busi_segmentation", "prepare_tn3k",
                "prepare_usenhance", "prepare_organ_folder", "prepare_busi_pretrain", "prepare_class_folders",
                "prepare_image_mask_folders", "prepare_frames"}
    assert expected <= set(COMMANDS)
    assert all(callable(f) and f.__doc__ for f in COMMANDS.values())
