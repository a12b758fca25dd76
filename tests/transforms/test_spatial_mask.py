"""Tests of usfm_monai.transforms.spatial_mask (USFM eq. 2) and of its core functions in masking.py.

Oracles: the pixel mask is rebuilt from the drawn block grid with explicit slicing, the fill value is the
numpy per-channel mean of the input, and the draws are replayed from a torch.Generator seeded alike.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masking_oracles import (
    DEVICES,
    DTYPES,
    INPUT_TYPES,
    make_input,
    oracle_pixel_mask,
    seeded_like_transform,
    to_numpy,
    tol,
)
from usfm_monai.transforms.masking import block_grid_to_pixel_mask, draw_block_grids, spatial_mean_mask
from usfm_monai.transforms.spatial_mask import RandSpatialMeanMask, RandSpatialMeanMaskd

SHAPES = [pytest.param((2, 45, 37), 16, id="2x45x37-b16"), pytest.param((1, 64, 64), 16, id="1x64x64-b16")]


@pytest.mark.parametrize("kind", INPUT_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block", SHAPES)
def test_masked_blocks_hold_mean_and_rest_untouched(kind, dtype, shape, block):
    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(dtype)
    t = RandSpatialMeanMask(block_size=block, mask_ratio=0.5)
    t.set_random_state(3)
    out = t(make_input(img, kind))
    c, h, w = shape
    grid = to_numpy(t.block_grid)
    assert grid.shape == (math.ceil(h / block), math.ceil(w / block)) and grid.dtype == bool
    assert grid.any() and not grid.all()  # the seed gives a mixed draw, so both branches are checked
    mask = oracle_pixel_mask(grid, h, w, block)
    np.testing.assert_array_equal(to_numpy(t.pixel_mask((h, w))), mask)
    out_np = to_numpy(out)
    mean = img.astype(np.float64).mean(axis=(1, 2))
    for ch in range(c):
        np.testing.assert_allclose(out_np[ch][mask], mean[ch], **tol(dtype))
        np.testing.assert_array_equal(out_np[ch][~mask], img[ch][~mask])


def test_draw_replays_generator_seeded_from_randomstate():
    t = RandSpatialMeanMask(block_size=8, mask_ratio=0.3)
    t.set_random_state(11)
    t(np.zeros((1, 20, 30), dtype=np.float32))
    expected = torch.rand((1, 3, 4), generator=seeded_like_transform(11))[0] < 0.3
    assert torch.equal(t.block_grid, expected)


def test_edge_blocks_are_partial():
    img = np.arange(45 * 37, dtype=np.float32).reshape(1, 45, 37)
    t = RandSpatialMeanMask(block_size=16, mask_ratio=1.0)
    out = to_numpy(t(img))
    assert t.block_grid.shape == (3, 3) and t.block_grid.all()
    np.testing.assert_allclose(out, np.full_like(img, img.mean()), rtol=1e-6)


def test_mask_fraction_matches_ratio():
    t = RandSpatialMeanMask(block_size=8, mask_ratio=0.4)
    t.set_random_state(0)
    img = np.zeros((1, 56, 56), dtype=np.float32)  # 7 x 7 blocks
    fractions = []
    for _ in range(2000):
        t.randomize(img)
        fractions.append(t.block_grid.double().mean().item())
    assert abs(np.mean(fractions) - 0.4) < 0.01  # binomial std ~0.002


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_ratio_zero_is_exact_noop_and_one_masks_all(kind):
    img = np.random.default_rng(1).random((2, 33, 20)).astype(np.float32)
    out = RandSpatialMeanMask(block_size=8, mask_ratio=0.0)(make_input(img, kind))
    np.testing.assert_array_equal(to_numpy(out), img)
    out = to_numpy(RandSpatialMeanMask(block_size=8, mask_ratio=1.0)(make_input(img, kind)))
    np.testing.assert_allclose(out, np.broadcast_to(img.mean(axis=(1, 2), keepdims=True), img.shape), rtol=1e-6)


def test_default_224():
    img = np.random.default_rng(2).random((1, 224, 224)).astype(np.float32)
    t = RandSpatialMeanMask()
    t.set_random_state(5)
    out = to_numpy(t(img))
    assert t.block_grid.shape == (7, 7)
    mask = oracle_pixel_mask(t.block_grid, 224, 224, 32)
    np.testing.assert_allclose(out[0][mask], img.mean(), rtol=1e-5)
    np.testing.assert_array_equal(out[0][~mask], img[0][~mask])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", INPUT_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_type_dtype_device_preserved(device, kind, dtype):
    if kind == "numpy" and device != "cpu":
        pytest.skip("numpy arrays live on the CPU")
    x = torch.rand(1, 20, 20, dtype=dtype, device=device)
    img = x.cpu().numpy() if kind == "numpy" else make_input(x.cpu().numpy(), kind, device)
    out = RandSpatialMeanMask(block_size=8, mask_ratio=0.5)(img)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == dtype and out.device.type == device
    if kind == "metatensor":
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "img.png"


def test_seeded_determinism():
    img = np.random.default_rng(3).random((1, 64, 64)).astype(np.float32)
    a = to_numpy(RandSpatialMeanMask(8, 0.4).set_random_state(7)(img))
    b = to_numpy(RandSpatialMeanMask(8, 0.4).set_random_state(7)(img))
    c = to_numpy(RandSpatialMeanMask(8, 0.4).set_random_state(8)(img))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_randomize_false_replays_and_requires_draw():
    img = np.random.default_rng(4).random((1, 32, 32)).astype(np.float32)
    t = RandSpatialMeanMask(8, 0.5)
    with pytest.raises(RuntimeError, match="randomize"):
        t(img, randomize=False)
    first = to_numpy(t(img))
    np.testing.assert_array_equal(to_numpy(t(img, randomize=False)), first)
    with pytest.raises(ValueError, match="block grid"):
        t(np.zeros((1, 48, 32), dtype=np.float32), randomize=False)  # grid drawn for 32 x 32


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"block_size": 0}, ValueError),
        ({"block_size": -4}, ValueError),
        ({"block_size": 2.5}, TypeError),
        ({"block_size": True}, TypeError),
        ({"mask_ratio": -0.1}, ValueError),
        ({"mask_ratio": 1.5}, ValueError),
        ({"mask_ratio": float("nan")}, ValueError),
        ({"mask_ratio": "0.4"}, TypeError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    bad = next(iter(kwargs.values()))
    with pytest.raises(error, match=repr(bad).replace("(", r"\(").replace(".", r"\.")):
        RandSpatialMeanMask(**kwargs)


def test_bad_images_raise():
    t = RandSpatialMeanMask(8, 0.5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        t(np.zeros((32, 32), dtype=np.float32))
    with pytest.raises(TypeError, match="floating"):
        t(np.zeros((1, 32, 32), dtype=np.uint8))


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_dict_matches_array_and_shares_draw(kind):
    rng = np.random.default_rng(5)
    img, other = rng.random((1, 45, 37)).astype(np.float32), rng.random((3, 45, 37)).astype(np.float32)
    td = RandSpatialMeanMaskd(keys=["image", "other"], block_size=16, mask_ratio=0.5, mask_key="mask")
    assert td.set_random_state(9) is td
    d = td({"image": make_input(img, kind), "other": make_input(other, kind), "label": 1})
    ta = RandSpatialMeanMask(block_size=16, mask_ratio=0.5).set_random_state(9)
    np.testing.assert_array_equal(to_numpy(d["image"]), to_numpy(ta(img)))
    np.testing.assert_array_equal(to_numpy(d["other"]), to_numpy(ta(other, randomize=False)))  # same grid, own mean
    np.testing.assert_array_equal(to_numpy(td.masker.block_grid), to_numpy(ta.block_grid))
    mask = to_numpy(d["mask"])
    assert mask.shape == (1, 45, 37) and d["mask"].dtype == torch.float32
    np.testing.assert_array_equal(mask[0] == 1, oracle_pixel_mask(ta.block_grid, 45, 37, 16))
    assert d["label"] == 1


def test_dict_checks_keys_and_shapes():
    td = RandSpatialMeanMaskd(keys=["image", "other"], block_size=8, mask_ratio=0.5)
    with pytest.raises(ValueError, match="share"):
        td({"image": np.zeros((1, 32, 32), np.float32), "other": np.zeros((1, 32, 16), np.float32)})
    with pytest.raises(KeyError, match="other"):
        td({"image": np.zeros((1, 32, 32), np.float32)})
    optional = RandSpatialMeanMaskd(keys=["image", "other"], block_size=8, mask_ratio=1.0, allow_missing_keys=True)
    out = optional({"image": np.ones((1, 16, 16), np.float32)})
    assert set(out) == {"image"}
    with pytest.raises(ValueError, match="mask_key"):
        RandSpatialMeanMaskd(keys="image", mask_key="image")
    with pytest.raises(KeyError, match="mask"):
        RandSpatialMeanMaskd(keys="image", mask_key="mask")({"image": np.zeros((1, 8, 8), np.float32), "mask": 0})


def test_dict_set_random_state_reaches_inner():
    img = np.random.default_rng(6).random((1, 32, 32)).astype(np.float32)
    a = RandSpatialMeanMaskd(keys="image", block_size=8).set_random_state(1)({"image": img})["image"]
    b = RandSpatialMeanMaskd(keys="image", block_size=8).set_random_state(1)({"image": img})["image"]
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_block_grid_to_pixel_mask_numpy_and_torch_batched():
    grids = np.random.default_rng(7).random((3, 4, 4)) < 0.5
    expected = np.stack([oracle_pixel_mask(g, 40, 50, 13) for g in grids])
    np.testing.assert_array_equal(to_numpy(block_grid_to_pixel_mask(grids, (40, 50), 13)), expected)
    np.testing.assert_array_equal(to_numpy(block_grid_to_pixel_mask(torch.as_tensor(grids), (40, 50), 13)), expected)
    with pytest.raises(ValueError, match="does not fit"):
        block_grid_to_pixel_mask(grids, (60, 50), 13)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_spatial_matches_per_sample(device):
    images = torch.rand(4, 2, 45, 37, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    grids = draw_block_grids(4, (45, 37), 16, 0.5, generator=gen)
    assert grids.shape == (4, 3, 3) and grids.dtype == torch.bool and grids.device.type == device
    out = to_numpy(spatial_mean_mask(images, block_grid_to_pixel_mask(grids, (45, 37), 16)))
    x = to_numpy(images)
    for i, grid in enumerate(to_numpy(grids)):
        mask = oracle_pixel_mask(grid, 45, 37, 16)
        expected = np.where(mask, x[i].mean(axis=(1, 2), keepdims=True), x[i])
        np.testing.assert_allclose(out[i], expected, rtol=1e-12)
