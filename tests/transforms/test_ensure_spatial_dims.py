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
    img = MetaTensor(torch.from_numpy(volume), affine=affine) if as_meta else volume
    out = EnsureSpatialDims(2)(img)
    np.testing.assert_array_equal(np.asarray(out), volume[..., 0])
    if as_meta:  # the third spatial axis leaves the affine too: pixel spacings 0.5 and 0.25 stay
        np.testing.assert_allclose(np.asarray(out.affine), np.diag([0.5, 0.25, 1.0]))
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
