"""DICOM ultrasound (single/multi-frame, grey/RGB, region header) and 2-D NIfTI: reading, frame selection, region
crop and its inverse, and the preparers' ``read_gray``. Fixtures are written by the tests with pydicom/nibabel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pydicom")

from fixtures.dicom import write_nifti_2d, write_us_dicom  # noqa: E402
from usfm_monai.data.dicom import dicom_num_frames, read_dicom_frames, ultrasound_region  # noqa: E402
from usfm_monai.data.prepare.common import read_gray  # noqa: E402

REGION = (3, 5, 24, 17)  # x0, y0, x1, y1 (inclusive) in a 32-wide, 20-high frame


def _loop(rgb=False, frames=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(frames, 20, 32) + ((3,) if rgb else ()), dtype=np.uint8)


def _pil_gray(rgb):  # independent oracle: PIL's own RGB -> L conversion
    return np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in rgb])


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("frames", [1, 4], ids=["single", "multi"])
def test_read_dicom_frames_layouts_and_region(tmp_path, rgb, frames):
    loop = _loop(rgb, frames)
    pixels = loop if frames > 1 else loop[0]
    path = write_us_dicom(str(tmp_path / "x.dcm"), pixels, rgb=rgb, region=REGION)
    expected = _pil_gray(loop) if rgb else loop
    assert dicom_num_frames(path) == frames
    np.testing.assert_array_equal(read_dicom_frames(path), expected)
    x0, y0, x1, y1 = REGION
    np.testing.assert_array_equal(read_dicom_frames(path, crop_region=True), expected[:, y0 : y1 + 1, x0 : x1 + 1])
    np.testing.assert_array_equal(read_dicom_frames(path, frames=[frames - 1]), expected[-1:])


def test_ultrasound_region_tissue_box_absent_and_invalid(tmp_path):
    loop = _loop()
    # the tissue region wins over a spectral (Doppler) strip below it
    path = write_us_dicom(str(tmp_path / "a.dcm"), loop, region=REGION, extra_regions=((0, 18, 31, 19),))
    assert ultrasound_region(path) == REGION
    assert ultrasound_region(write_us_dicom(str(tmp_path / "b.dcm"), loop)) is None
    bad = write_us_dicom(str(tmp_path / "c.dcm"), loop, region=(3, 5, 40, 17))  # x1 beyond the 32 columns
    with pytest.raises(ValueError, match="c.dcm.*does not fit"):
        ultrasound_region(bad)


def test_read_gray_reads_single_frame_dicom_and_nifti_refuses_multiframe(tmp_path):
    loop = _loop(rgb=True)
    np.testing.assert_array_equal(read_gray(write_us_dicom(str(tmp_path / "s.dcm"), loop[0], rgb=True)),
                                  _pil_gray(loop[:1])[0])
    grey = _loop()[0]
    np.testing.assert_array_equal(read_gray(write_nifti_2d(str(tmp_path / "n.nii.gz"), grey)), grey)
    with pytest.raises(ValueError, match="m.dcm.*multi-frame.*prepare_frames"):
        read_gray(write_us_dicom(str(tmp_path / "m.dcm"), _loop()))


def test_select_frame_and_region_crop_invert(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from usfm_monai.transforms import CropUltrasoundRegiond, EnsureSpatialDimsd, SelectFramed

    loop = _loop(frames=3)
    path = write_us_dicom(str(tmp_path / "cine.dcm"), loop, region=REGION)
    chain = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), SelectFramed("image"),
        EnsureSpatialDimsd("image", spatial_dims=2), CropUltrasoundRegiond("image"),
    ])
    x0, y0, x1, y1 = REGION
    out = chain({"image": path, "frame": 2})
    assert "frame" not in out and out["image"].meta["patch_index"] == 2
    # channel-first (C, W, H): x is spatial dim 0
    np.testing.assert_array_equal(out["image"][0].numpy().T, loop[2, y0 : y1 + 1, x0 : x1 + 1])
    restored = chain.inverse(out)["image"][0].numpy().T  # padded back to the full frame, zeros outside
    expected = np.zeros_like(loop[2])
    expected[y0 : y1 + 1, x0 : x1 + 1] = loop[2, y0 : y1 + 1, x0 : x1 + 1]
    np.testing.assert_array_equal(restored, expected)
    # a non-DICOM image is left whole (identity crop, still invertible)
    png = str(tmp_path / "p.png")
    Image.fromarray(loop[0]).save(png)
    out = chain({"image": png})
    np.testing.assert_array_equal(out["image"][0].numpy().T, loop[0])
    with pytest.raises(ValueError, match="frame 7 is out of range"):
        SelectFramed("image")({"image": torch.zeros(1, 4, 4, 3), "frame": 7})
