import numpy as np
import pytest
import torch
from PIL import Image

from monai.data import MetaTensor
from usfm_monai.transforms.grayscale import EnsureGrayscale, EnsureGrayscaled

TYPES = {
    "numpy": lambda x: x,
    "torch": torch.as_tensor,
    "metatensor": lambda x: MetaTensor(torch.as_tensor(x), meta={"filename_or_obj": "img.png"}),
}
if torch.cuda.is_available():
    TYPES["cuda"] = lambda x: torch.as_tensor(x).cuda()

# (R, G, B) pixels worked by hand: 0.299 R + 0.587 G + 0.114 B and (R + G + B) / 3
RGB = np.array([[[200.0, 10.0]], [[100.0, 20.0]], [[50.0, 30.0]]], dtype=np.float32)  # (3, 1, 2)
LUMA = np.array([[[0.299 * 200 + 0.587 * 100 + 0.114 * 50, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]]])
MEAN = np.array([[[350.0 / 3, 20.0]]])


@pytest.mark.parametrize("kind", list(TYPES))
@pytest.mark.parametrize("method,expected", [("luma", LUMA), ("mean", MEAN)])
def test_rgb_hand_values(kind, method, expected):
    img = TYPES[kind](RGB)
    out = EnsureGrayscale(method)(img)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    if isinstance(img, torch.Tensor):
        assert out.device == img.device
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-6)


def test_rgba_drops_alpha_and_uint8_rounds():
    rgba = np.zeros((4, 1, 2), dtype=np.uint8)
    rgba[:3, 0, 0] = (200, 100, 50)  # 59.8 + 58.7 + 5.7 = 124.2 -> 124
    rgba[:3, 0, 1] = (1, 2, 2)  # 0.299 + 1.174 + 0.228 = 1.701 -> 2
    rgba[3] = 255
    out = EnsureGrayscale()(torch.as_tensor(rgba))
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), [[[124, 2]]])


def test_matches_pil_luma_on_uint8():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(hwc, "RGB").convert("L")).astype(int)
    out = EnsureGrayscale()(np.moveaxis(hwc, -1, 0)).numpy()[0].astype(int)
    # PIL uses 16-bit fixed point, we round a float: they may differ by one gray level
    assert np.abs(out - expected).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_identical_channels_exact(dtype):
    rng = np.random.default_rng(1)
    gray = (rng.random((1, 5, 7)) * 255).astype(dtype)
    out = EnsureGrayscale()(np.concatenate([gray] * 3))
    assert out.dtype == torch.from_numpy(gray).dtype
    np.testing.assert_array_equal(out.numpy(), gray)


def test_single_channel_identity_and_meta_kept():
    img = MetaTensor(torch.rand(1, 4, 4), meta={"filename_or_obj": "a.png"})
    out = EnsureGrayscale()(img)
    torch.testing.assert_close(out.as_tensor(), img.as_tensor())
    rgb = MetaTensor(torch.rand(3, 4, 4), meta={"filename_or_obj": "b.png"})
    out = EnsureGrayscale()(rgb)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "b.png"


def test_dict_version_matches_array_version_per_key():
    rgb = torch.as_tensor(RGB)
    d = EnsureGrayscaled(keys=("image", "target"), method="mean")({"image": rgb, "target": rgb[:1], "label": 3})
    np.testing.assert_allclose(d["image"].numpy(), MEAN, rtol=1e-6)
    np.testing.assert_array_equal(d["target"].numpy(), RGB[:1])
    assert d["label"] == 3


@pytest.mark.parametrize(
    "args,img,error,match",
    [
        ({"method": "bt709"}, None, ValueError, "method"),
        ({}, np.zeros((2, 4, 4)), ValueError, "2 channels"),
        ({}, np.zeros((4,)), ValueError, "channel-first"),
    ],
    ids=["bad_method", "two_channels", "one_dim"],
)
def test_invalid(args, img, error, match):
    with pytest.raises(error, match=match):
        EnsureGrayscale(**args)(img)


def test_dict_missing_key_raises():
    with pytest.raises(KeyError, match="image"):
        EnsureGrayscaled(keys="image")({"label": 1})
