"""Tests of usfm_monai.transforms.dual_mask (USFM eq. 8) and of the batched torch version.

Oracles: block masks rebuilt by slicing, band masks rebuilt from the documented geometry, the frequency
filter done with ``numpy.fft`` in float64, means from numpy; batched results are compared with per-sample
transforms replaying the same draws (the per-sample transform is itself checked against the oracles).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masking_oracles import DEVICES, DTYPES, INPUT_TYPES, make_input, oracle_pixel_mask, to_numpy, fft_tol
from usfm_monai.transforms.dual_mask import (
    BatchedDualDomainMask,
    DualMaskDraws,
    RandDualDomainMask,
    RandDualDomainMaskd,
)
from usfm_monai.transforms.frequency_mask import RandFrequencyBandStopMask
from usfm_monai.transforms.spatial_mask import RandSpatialMeanMask

SMALL = {"block_size": 8, "mask_ratio": 0.5, "num_bands": 5, "num_masked_bands": 2, "keep_size": 4}


def _oracle_stop_mask(h: int, w: int, n: int, keep: int, spacing: str, ids) -> np.ndarray:
    fu = np.arange(h)[:, None] - h // 2
    fv = np.arange(w)[None, :] - w // 2
    rho = np.hypot(fu / h, fv / w)
    kept = (np.maximum(abs(fu), abs(fv)) <= keep // 2) if keep > 0 else np.zeros((h, w), bool)
    free = rho[~kept]
    lo = free.min() if spacing == "linear" else free[free > 0].min()
    edges = np.linspace(lo, free.max(), n + 1) if spacing == "linear" else np.geomspace(lo, free.max(), n + 1)
    band = (rho[..., None] >= edges[None, None, 1:-1]).sum(-1)
    return np.isin(band, to_numpy(ids).tolist()) & ~kept


def _oracle_band_stop(img: np.ndarray, stop: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fftshift(np.fft.fft2(img.astype(np.float64)), axes=(-2, -1))
    return np.fft.ifft2(np.fft.ifftshift(spectrum * ~stop, axes=(-2, -1))).real


@pytest.mark.parametrize("kind", INPUT_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,spacing", [((45, 37), "linear"), ((64, 64), "log"), ((30, 64), "linear")])
def test_dual_mask_matches_oracle(kind, dtype, shape, spacing):
    h, w = shape
    img = np.random.default_rng(0).random((2, h, w)).astype(dtype)
    t = RandDualDomainMask(band_spacing=spacing, **SMALL).set_random_state(2)
    out = to_numpy(t(make_input(img, kind)))
    assert out.dtype == dtype
    assert t.block_grid.shape == (math.ceil(h / 8), math.ceil(w / 8)) and t.block_grid.any()
    pixel = oracle_pixel_mask(t.block_grid, h, w, 8)
    stop = _oracle_stop_mask(h, w, 5, 4, spacing, t.band_ids)
    assert stop.any()
    np.testing.assert_array_equal(to_numpy(t.pixel_mask(shape)), pixel)
    np.testing.assert_array_equal(to_numpy(t.stop_mask(shape)), stop)
    filtered = _oracle_band_stop(img, stop)
    mean = img.astype(np.float64).mean(axis=(1, 2))
    for c in range(2):
        np.testing.assert_allclose(out[c][~pixel], filtered[c][~pixel], **fft_tol(dtype))  # frequency-filtered
        np.testing.assert_allclose(out[c][pixel], mean[c], **fft_tol(dtype))  # ORIGINAL image mean


def test_paper_defaults_224():
    img = np.random.default_rng(1).random((1, 224, 224)).astype(np.float32)
    t = RandDualDomainMask().set_random_state(0)
    out = to_numpy(t(img))
    pixel = oracle_pixel_mask(t.block_grid, 224, 224, 32)
    filtered = _oracle_band_stop(img, _oracle_stop_mask(224, 224, 7, 10, "linear", t.band_ids))
    np.testing.assert_allclose(out[0][~pixel], filtered[0][~pixel], atol=1e-5)
    np.testing.assert_allclose(out[0][pixel], img.mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_blocks_take_original_mean_when_dc_is_stopped(kind):
    # keep_size=0 and every band stopped: the filtered image is 0 (its mean too), the blocks keep the original's
    img = np.random.default_rng(8).random((2, 45, 37)).astype(np.float32) + 1.0
    t = RandDualDomainMask(block_size=8, mask_ratio=0.5, num_bands=3, num_masked_bands=3, keep_size=0)
    out = to_numpy(t.set_random_state(0)(make_input(img, kind)))
    pixel = oracle_pixel_mask(t.block_grid, 45, 37, 8)
    for c in range(2):
        np.testing.assert_allclose(out[c][~pixel], 0.0, atol=1e-5)
        np.testing.assert_allclose(out[c][pixel], img[c].mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_without_frequency_mask_is_spatial_only(kind):
    img = np.random.default_rng(2).random((1, 45, 37)).astype(np.float32)
    t = RandDualDomainMask(use_frequency_mask=False, **SMALL).set_random_state(4)
    out = to_numpy(t(make_input(img, kind)))
    assert t.band_ids.shape == (0,) and not t.stop_mask((45, 37)).any()
    pixel = oracle_pixel_mask(t.block_grid, 45, 37, 8)
    np.testing.assert_array_equal(out[0][~pixel], img[0][~pixel])
    np.testing.assert_allclose(out[0][pixel], img.mean(), rtol=1e-6)


@pytest.mark.parametrize("kind", INPUT_TYPES)
@pytest.mark.parametrize("use_frequency_mask", [True, False])
def test_zero_ratio_and_zero_bands_is_exact_noop(kind, use_frequency_mask):
    img = np.random.default_rng(3).random((2, 45, 37)).astype(np.float32)
    t = RandDualDomainMask(mask_ratio=0.0, num_masked_bands=0, use_frequency_mask=use_frequency_mask)
    np.testing.assert_array_equal(to_numpy(t(make_input(img, kind))), img)


def test_seeded_determinism_and_replay():
    img = np.random.default_rng(4).random((1, 64, 64)).astype(np.float32)
    outs = [to_numpy(RandDualDomainMask(**SMALL).set_random_state(s)(img)) for s in (7, 7, 8)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    t = RandDualDomainMask(**SMALL)
    with pytest.raises(RuntimeError, match="randomize"):
        t(img, randomize=False)
    np.testing.assert_array_equal(to_numpy(t(img)), to_numpy(t(img, randomize=False)))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"block_size": 0}, ValueError, "block_size.*0"),
        ({"mask_ratio": 2.0}, ValueError, "mask_ratio.*2.0"),
        ({"num_masked_bands": 9}, ValueError, "num_masked_bands.*9"),
        ({"keep_size": -1}, ValueError, "keep_size.*-1"),
        ({"band_spacing": "octave"}, ValueError, "band_spacing.*octave"),
        ({"use_frequency_mask": "yes"}, TypeError, "use_frequency_mask.*yes"),
    ],
)
@pytest.mark.parametrize("cls", [RandDualDomainMask, BatchedDualDomainMask])
def test_bad_arguments_raise(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_dict_matches_array_and_writes_target_and_masks(kind):
    img = np.random.default_rng(5).random((1, 45, 37)).astype(np.float32)
    td = RandDualDomainMaskd(
        keys="image", target_key="target", spatial_mask_key="spa", frequency_mask_key="freq", **SMALL
    )
    assert td.set_random_state(6) is td
    d = td({"image": make_input(img, kind), "organ": "breast"})
    ta = RandDualDomainMask(**SMALL).set_random_state(6)
    np.testing.assert_array_equal(to_numpy(d["image"]), to_numpy(ta(img)))
    np.testing.assert_array_equal(to_numpy(d["target"]), img)
    assert isinstance(d["target"], torch.Tensor) and d["organ"] == "breast"
    assert d["spa"].shape == (1, 45, 37) and d["freq"].shape == (1, 45, 37)
    np.testing.assert_array_equal(to_numpy(d["spa"])[0] == 1, oracle_pixel_mask(ta.block_grid, 45, 37, 8))
    np.testing.assert_array_equal(to_numpy(d["freq"])[0] == 1, _oracle_stop_mask(45, 37, 5, 4, "linear", ta.band_ids))


def test_dict_multiple_keys_share_draw():
    rng = np.random.default_rng(7)
    a, b = rng.random((1, 32, 32)).astype(np.float32), rng.random((3, 32, 32)).astype(np.float32)
    td = RandDualDomainMaskd(keys=["a", "b"], target_key=["ta", "tb"], **SMALL).set_random_state(1)
    d = td({"a": a, "b": b})
    ta = RandDualDomainMask(**SMALL).set_random_state(1)
    np.testing.assert_array_equal(to_numpy(d["a"]), to_numpy(ta(a)))
    np.testing.assert_array_equal(to_numpy(d["b"]), to_numpy(ta(b, randomize=False)))
    np.testing.assert_array_equal(to_numpy(d["tb"]), b)


def test_dict_validation():
    with pytest.raises(ValueError, match="one key per masked key"):
        RandDualDomainMaskd(keys=["a", "b"], target_key="target")
    with pytest.raises(ValueError, match="distinct"):
        RandDualDomainMaskd(keys="image", target_key="image")
    with pytest.raises(ValueError, match="distinct"):
        RandDualDomainMaskd(keys="image", spatial_mask_key="m", frequency_mask_key="m")
    td = RandDualDomainMaskd(keys=["a", "b"], target_key=None, **SMALL)
    with pytest.raises(ValueError, match="share"):
        td({"a": np.zeros((1, 32, 32), np.float32), "b": np.zeros((1, 32, 24), np.float32)})
    with pytest.raises(KeyError, match="b"):
        td({"a": np.zeros((1, 32, 32), np.float32)})
    with pytest.raises(KeyError, match="target"):
        RandDualDomainMaskd(**SMALL)({"image": np.zeros((1, 32, 32), np.float32), "target": 0})


# ------------------------------------------------------------------------------------------- batched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,spacing,use_freq",
    [
        ((45, 37), "linear", True),
        ((64, 64), "log", True),
        ((33, 48), "linear", False),
        ((64, 64), "linear", True),
        ((37, 45), "dc", True),
    ],
)
def test_batched_equals_per_sample_for_same_draws(device, dtype, shape, spacing, use_freq):
    h, w = shape
    images = torch.rand(5, 2, h, w, dtype=dtype, device=device)
    kwargs = dict(SMALL, band_spacing=spacing, use_frequency_mask=use_freq)
    if spacing == "dc":  # keep_size=0, 3 of 4 bands stopped: DC is zeroed 3 times in 4, so the fill mean matters
        kwargs.update(band_spacing="log", keep_size=0, num_bands=4, num_masked_bands=3)
    transforms = [RandDualDomainMask(**kwargs).set_random_state(10 + i) for i in range(5)]
    expected = torch.stack([t(images[i]).as_tensor() for i, t in enumerate(transforms)])
    batched = BatchedDualDomainMask(**kwargs)
    draws = batched.draws_from_transforms(transforms)
    out, masks = batched.apply(images, draws, return_masks=True)
    assert out.dtype == dtype and out.device.type == device and type(out) is torch.Tensor
    torch.testing.assert_close(out, expected, **fft_tol(dtype))
    assert masks.shape == (5, 1, h, w) and masks.dtype == torch.bool
    for i, t in enumerate(transforms):
        np.testing.assert_array_equal(to_numpy(masks[i, 0]), oracle_pixel_mask(t.block_grid, h, w, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_draw_shapes_determinism_and_statistics(device):
    batched = BatchedDualDomainMask(block_size=8, mask_ratio=0.4, num_bands=7, num_masked_bands=2, keep_size=4)
    draws = batched.draw(256, (56, 56), generator=torch.Generator(device=device).manual_seed(0), device=device)
    assert isinstance(draws, DualMaskDraws) and draws.batch_size == 256
    assert draws.block_grids.shape == (256, 7, 7) and draws.block_grids.dtype == torch.bool
    assert draws.band_ids.shape == (256, 2) and draws.band_ids.dtype == torch.int64
    assert draws.block_grids.device.type == device and draws.band_ids.device.type == device
    assert abs(draws.block_grids.double().mean().item() - 0.4) < 0.02
    assert bool((draws.band_ids[:, 1] > draws.band_ids[:, 0]).all())
    again = batched.draw(256, (56, 56), generator=torch.Generator(device=device).manual_seed(0), device=device)
    other = batched.draw(256, (56, 56), generator=torch.Generator(device=device).manual_seed(1), device=device)
    assert torch.equal(draws.block_grids, again.block_grids) and torch.equal(draws.band_ids, again.band_ids)
    assert not torch.equal(draws.block_grids, other.block_grids)
    images = torch.rand(4, 1, 40, 40, device=device)
    a = batched(images, generator=torch.Generator(device=device).manual_seed(3))
    b = batched(images, generator=torch.Generator(device=device).manual_seed(3))
    c = batched(images, generator=torch.Generator(device=device).manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_cpu_generator_for_device_images(device):
    batched = BatchedDualDomainMask(**SMALL)
    images = torch.rand(3, 1, 32, 32, device=device)
    out = batched(images, generator=torch.Generator().manual_seed(0))
    assert out.device.type == device and out.shape == images.shape


def test_batched_zero_ratio_zero_bands_exact_noop_and_metatensor():
    images = MetaTensor(torch.rand(3, 1, 45, 37))
    out = BatchedDualDomainMask(mask_ratio=0.0, num_masked_bands=0)(images)
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.as_tensor(), images.as_tensor())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batched_half_precision_keeps_dtype(dtype):
    images = torch.rand(2, 1, 32, 32).to(dtype)
    out = BatchedDualDomainMask(**SMALL)(images, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype


def test_batched_validation():
    batched = BatchedDualDomainMask(**SMALL)
    images = torch.rand(2, 1, 32, 32)
    draws = batched.draw(2, (32, 32), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="floating"):
        batched.apply(images.to(torch.uint8), draws)
    with pytest.raises(TypeError, match="floating"):
        batched.apply(images.numpy(), draws)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        batched.apply(images[0], draws)
    with pytest.raises(ValueError, match="block_grids"):
        batched.apply(torch.rand(2, 1, 48, 32), draws)
    with pytest.raises(ValueError, match="block_grids"):
        batched.apply(torch.rand(3, 1, 32, 32), draws)
    with pytest.raises(ValueError, match="band_ids must be in"):
        batched.apply(images, DualMaskDraws(draws.block_grids, torch.tensor([[0, 5], [1, 2]])))
    with pytest.raises(ValueError, match="band_ids must be an int64"):
        batched.apply(images, DualMaskDraws(draws.block_grids, torch.zeros(2, 3, dtype=torch.int64)))
    with pytest.raises(TypeError, match="torch tensor"):
        batched(images.numpy())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        batched(images[0])
    with pytest.raises(ValueError, match="batch_size"):
        batched.draw(0, (32, 32))
    with pytest.raises(RuntimeError, match="randomize"):
        batched.draws_from_transforms([RandDualDomainMask(**SMALL)])
    with pytest.raises(ValueError, match="configured differently"):
        batched.draws_from_transforms([RandDualDomainMask()])
    with pytest.raises(TypeError, match="RandDualDomainMask"):
        batched.draws_from_transforms([object()])


def test_transforms_are_the_core_functions_on_a_batch_of_one():
    """The MONAI wrappers add nothing to the masking core: same draws, same numbers, bit for bit."""
    from usfm_monai.transforms.masking import band_stop_filter, dual_domain_mask, spatial_mean_mask

    img = torch.rand(2, 45, 37, dtype=torch.float64)
    dual = RandDualDomainMask(**SMALL).set_random_state(3)
    out = dual(img)
    expected = dual_domain_mask(img[None], dual.block_grid[None], dual.band_ids[None], 8, 5, 4, "linear")[0]
    assert torch.equal(out.as_tensor(), expected)
    spatial = RandSpatialMeanMask(block_size=8, mask_ratio=0.5).set_random_state(3)
    out = spatial(img)
    assert torch.equal(out.as_tensor(), spatial_mean_mask(img[None], spatial.pixel_mask((45, 37))[None])[0])
    freq = RandFrequencyBandStopMask(num_bands=5, num_masked_bands=2, keep_size=4).set_random_state(3)
    out = freq(img)
    assert torch.equal(out.as_tensor(), band_stop_filter(img[None], freq.band_ids[None], 5, 4, "linear")[0])
