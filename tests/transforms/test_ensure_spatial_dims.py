"""EnsureSpatialDims: single-frame DICOM volumes become 2-D images; anything else is rejected clearly."""

import numpy as np
import pytest
import torch

from monai.data import MetaTensor
from usfm_monai.transforms.segmentation import EnsureSpatialDims, EnsureSpatialDimsd


@pytest.mark.parametrize("as_meta", [False, True], ids=["numpy", "MetaTensor"])
def test_ensure_spatial_dims_drops_trailing_singletons_only(as_meta):
    volume = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3, 1)  # a single-frame DICOM as ITK loads it
    affine = torch.diag(torch.tensor([0.5, 0.25, 2.0, 1.0], dtype=torch.float64))
    meta = {"spatial_shape": np.array([5, 3, 1])}  # what the reader records
    img = MetaTensor(torch.from_numpy(volume), affine=affine, meta=meta) if as_meta else volume
    out = EnsureSpatialDims(2)(img)
    np.testing.assert_array_equal(np.asarray(out), volume[..., 0])
    if as_meta:  # the third spatial axis leaves the affine too: pixel spacings 0.5 and 0.25 stay
        np.testing.assert_allclose(np.asarray(out.affine), np.diag([0.5, 0.25, 1.0]))
        # and the recorded input shape, which MONAI Label's Restored resizes the prediction to
        assert list(out.meta["spatial_shape"]) == [5, 3]
    already_2d = volume[..., 0]
    np.testing.assert_array_equal(np.asarray(EnsureSpatialDims(2)(already_2d)), already_2d)
    d = EnsureSpatialDimsd(["image", "label"])({"image": volume, "label": volume > 10})
    assert d["image"].shape == d["label"].shape == (2, 5, 3)
    with pytest.raises(ValueError, match=r"multi-frame"):
        EnsureSpatialDims(2)(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"2 spatial axes, got shape \(1, 4\)"):
        EnsureSpatialDims(2)(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="spatial_dims"):
        EnsureSpatialDims(0)
    with pytest.raises(KeyError):
        EnsureSpatialDimsd("label")({"image": volume})


def test_ensure_same_spatial_shape_names_both_files(tmp_path):
    from monai.transforms import LoadImaged
    from PIL import Image

    from usfm_monai.transforms import EnsureSameSpatialShaped

    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "rgb.png")
    load = LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True)
    check = EnsureSameSpatialShaped(["image", "label"])
    d = load({"image": str(tmp_path / "rgb.png"), "label": str(tmp_path / "img.png")})
    assert check(d) is d  # 3-channel image, 1-channel mask, same 30 x 40 pixels: fine
    d = load({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
    with pytest.raises(ValueError, match=r"'image' \S*img\.png has spatial size \(30, 40\) but 'label' \S*mask\.png has \(30, 20\)"):
        check(d)
    assert EnsureSameSpatialShaped(["image", "label"], allow_missing_keys=True)({"image": np.zeros((1, 3, 3))})
