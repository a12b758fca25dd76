"""seg_tn3k inference on inputs as users have them: a folder with an unreadable file (skipped, listed, non-zero
exit, the other masks written) and a multi-frame DICOM cine loop (one mask per frame in the input's geometry,
background outside the ultrasound region)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pydicom")

from fixtures.dicom import write_us_dicom  # noqa: E402
from fixtures.layouts import write_corrupt  # noqa: E402

BUNDLE = "seg_tn3k"


@pytest.mark.slow
def test_folder_inference_skips_unreadable_file_and_writes_one_mask_per_frame(tmp_path, bundle):
    from usfm_monai.networks import USFMSegmenter

    root = tmp_path / "bundle"
    os.makedirs(root / "models")
    torch.manual_seed(0)
    net = USFMSegmenter(num_classes=2, size="tiny", img_size=64, in_chans=1, aux_head=True)
    # bias the head to "lesion" everywhere so the background outside the ultrasound region can only come from the
    # inverse of the region crop
    with torch.no_grad():
        net.decode_head.conv_seg.bias.copy_(torch.tensor([-50.0, 50.0]))
    torch.save({"model": net.state_dict()}, root / "models" / "model.pt")
    inputs = tmp_path / "inputs"
    rng = np.random.default_rng(0)
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(inputs / "a.png")
    write_corrupt(str(inputs / "b_broken.png"))
    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8)).save(inputs / "c.png")
    out = tmp_path / "pred"
    settings = {"image_size": 64, "num_workers": 0, "batch_size": 1, "output_dir": out}
    proc = bundle.run(["inference.json", "quick.json"], root, check=False, dataset_dir=inputs, **settings)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-2000:]
    assert "1 input file(s) could not be read" in log and "b_broken.png" in log
    for stem, shape in (("a", (40, 56)), ("c", (30, 50))):
        assert np.asarray(Image.open(out / f"{stem}_seg.png")).shape == shape
    assert not (out / "b_broken_seg.png").exists()

    # a multi-frame DICOM with an ultrasound region: one mask per frame, full frame size
    cine = tmp_path / "cine"
    region = (4, 6, 43, 29)  # x0, y0, x1, y1 in a 48-wide, 36-high frame
    write_us_dicom(str(cine / "loop.dcm"), rng.integers(0, 256, (3, 36, 48), dtype=np.uint8), region=region)
    bundle.run(["inference.json", "quick.json"], root, dataset_dir=cine, **settings)
    x0, y0, x1, y1 = region
    for k in range(3):
        mask = np.asarray(Image.open(out / f"loop_seg_{k}.png"))
        assert mask.shape == (36, 48)
        outside = np.ones_like(mask, dtype=bool)
        outside[y0 : y1 + 1, x0 : x1 + 1] = False
        assert not mask[outside].any()  # padded back by the inverse crop
        assert (out / "overlays" / f"loop_overlay_{k}.png").exists()
