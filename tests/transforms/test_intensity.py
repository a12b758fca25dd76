"""ScaleIntensity8Bit: 8-bit images map to [0, 1] by / 255; 16-bit files are rejected, naming the file."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from usfm_monai.transforms import ScaleIntensity8Bit, ScaleIntensity8Bitd

IMG = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)


@pytest.mark.parametrize(
    "make",
    [np.asarray, lambda a: a.astype(np.float32), torch.as_tensor, lambda a: MetaTensor(torch.as_tensor(a).float())],
    ids=["uint8-numpy", "float32-numpy", "uint8-tensor", "MetaTensor"],
)
def test_scales_8bit_by_255(make):
    out = ScaleIntensity8Bit()(make(IMG))
    np.testing.assert_allclose(np.asarray(out), IMG.astype(np.float64) / 255.0, rtol=1e-6)  # oracle: / 255
    assert out.dtype in (np.float32, torch.float32)
    d = ScaleIntensity8Bitd(["image", "target"])({"image": make(IMG), "target": make(IMG[:, ::-1].copy())})
    np.testing.assert_allclose(np.asarray(d["target"]), IMG[:, ::-1] / 255.0, rtol=1e-6)


def test_16bit_png_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "scan16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))  # float32, values up to 65535
    with pytest.raises(ValueError, match=r"scan16\.png has values in \[0, 65535\], expected an 8-bit"):
        ScaleIntensity8Bit()(img)
    with pytest.raises(ValueError, match="8-bit"):
        ScaleIntensity8Bit()(np.full((1, 2, 2), -1.0))
    with pytest.raises(KeyError):
        ScaleIntensity8Bitd("image")({"label": IMG})
