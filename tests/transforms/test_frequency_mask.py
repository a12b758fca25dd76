"""Tests of usfm_monai.transforms.frequency_mask (USFM eq. 3-7) and of its core functions in masking.py.

Oracles: the band geometry is rebuilt here, frequency by frequency, from the formula in the module
docstring (signed frequency ``i - N // 2``, radius in cycles per pixel, kept square ``max(|fu|, |fv|) <=
keep_size // 2``, edges from ``np.linspace`` / ``np.geomspace``, annuli ``e_b <= rho < e_(b+1)``); spectra
come from ``numpy.fft`` in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masking_oracles import DEVICES, DTYPES, INPUT_TYPES, make_input, seeded_like_transform, to_numpy
from usfm_monai.transforms.frequency_mask import RandFrequencyBandStopMask, RandFrequencyBandStopMaskd
from usfm_monai.transforms.masking import (
    band_stop_masks,
    draw_band_ids,
    frequency_band_edges,
    frequency_band_map,
)

GEOMETRIES = [
    pytest.param((64, 64), 7, 10, "linear", id="64x64-linear"),
    pytest.param((45, 37), 7, 10, "linear", id="45x37-linear"),
    pytest.param((45, 37), 5, 9, "log", id="45x37-log-k9"),
    pytest.param((16, 40), 4, 0, "linear", id="16x40-linear-k0"),
    pytest.param((33, 64), 6, 0, "log", id="33x64-log-k0"),
    pytest.param((64, 48), 3, 1, "log", id="64x48-log-k1"),
    pytest.param((224, 224), 7, 10, "linear", id="224x224-paper"),
]


def _oracle_geometry(h: int, w: int, n: int, keep: int, spacing: str):
    """Radius, kept mask, edges and the list of per-band masks, from the documented formula."""
    rho = np.zeros((h, w))
    kept = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            fu, fv = i - h // 2, j - w // 2
            rho[i, j] = math.hypot(fu / h, fv / w)
            kept[i, j] = keep > 0 and max(abs(fu), abs(fv)) <= keep // 2
    free = rho[~kept]
    hi = free.max()
    if spacing == "linear":
        edges = np.linspace(free.min(), hi, n + 1)
    else:
        edges = np.geomspace(free[free > 0].min(), hi, n + 1)
    bands = []
    for b in range(n):
        upper = rho <= edges[b + 1] if b == n - 1 else rho < edges[b + 1]
        lower = np.ones_like(kept) if b == 0 else rho >= edges[b]  # band 0 also takes the DC term in log mode
        bands.append(lower & upper & ~kept)
    return rho, kept, edges, bands


def _spectrum(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))


@pytest.mark.parametrize("shape,n,keep,spacing", GEOMETRIES)
def test_band_map_matches_documented_formula(shape, n, keep, spacing):
    h, w = shape
    _, kept, edges, bands = _oracle_geometry(h, w, n, keep, spacing)
    band_map = frequency_band_map(shape, n, keep, spacing)
    assert band_map.shape == shape and band_map.dtype == torch.int64
    band_map = to_numpy(band_map)
    np.testing.assert_array_equal(band_map == -1, kept)
    for b, oracle in enumerate(bands):
        np.testing.assert_array_equal(band_map == b, oracle, err_msg=f"band {b}")
    np.testing.assert_allclose(to_numpy(frequency_band_edges(shape, n, keep, spacing)), edges, rtol=1e-12)


@pytest.mark.parametrize("shape,n,keep,spacing", GEOMETRIES)
def test_bands_partition_the_non_kept_spectrum(shape, n, keep, spacing):
    h, w = shape
    rho, kept, _, bands = _oracle_geometry(h, w, n, keep, spacing)
    count = np.sum(bands, axis=0)
    np.testing.assert_array_equal(count, (~kept).astype(int))  # disjoint, and no frequency unreachable
    band_map = to_numpy(frequency_band_map(shape, n, keep, spacing))
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    assert all(band_map[c] >= 0 for c in corners)
    assert band_map[0, 0] == n - 1  # the largest radius is the (-H//2, -W//2) corner
    np.testing.assert_array_equal(band_map[rho == rho.max()], n - 1)


@pytest.mark.parametrize("shape,n,keep,spacing", GEOMETRIES)
def test_band_map_is_symmetric_under_negated_frequency(shape, n, keep, spacing):
    h, w = shape
    band_map = to_numpy(frequency_band_map(shape, n, keep, spacing))
    rows = (-(np.arange(h) - h // 2)) % h  # index of -fu, modulo H, in the shifted layout
    rows = (rows + h // 2) % h
    cols = ((-(np.arange(w) - w // 2)) % w + w // 2) % w
    np.testing.assert_array_equal(band_map, band_map[rows[:, None], cols[None, :]])


def test_kept_square_size():
    assert (frequency_band_map((224, 224), 7, 10) == -1).sum() == 11 * 11
    assert (frequency_band_map((224, 224), 7, 9) == -1).sum() == 9 * 9
    assert (frequency_band_map((224, 224), 7, 1) == -1).sum() == 1
    assert (frequency_band_map((224, 224), 7, 0) == -1).sum() == 0
    with pytest.raises(ValueError, match="keep_size=10 keeps every frequency"):
        frequency_band_map((8, 8), 7, 10)


@pytest.mark.parametrize("kind", INPUT_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n,keep,spacing", GEOMETRIES)
def test_spectrum_zero_on_chosen_bands_and_untouched_elsewhere(kind, dtype, shape, n, keep, spacing):
    h, w = shape
    img = np.random.default_rng(0).random((2, h, w)).astype(dtype)
    t = RandFrequencyBandStopMask(num_bands=n, num_masked_bands=2, keep_size=keep, band_spacing=spacing)
    t.set_random_state(1)
    out = to_numpy(t(make_input(img, kind)))
    assert out.dtype == dtype
    ids = to_numpy(t.band_ids)
    assert ids.shape == (2,) and len(set(ids.tolist())) == 2 and ids.min() >= 0 and ids.max() < n
    _, kept, _, bands = _oracle_geometry(h, w, n, keep, spacing)
    stop = np.any([bands[b] for b in ids], axis=0)
    np.testing.assert_array_equal(to_numpy(t.stop_mask(shape)), stop)
    f_in, f_out = _spectrum(img), _spectrum(out)
    atol = (1e-5 if dtype == np.float32 else 1e-11) * np.abs(f_in).max()
    np.testing.assert_allclose(f_out[:, stop], 0, atol=atol)
    np.testing.assert_allclose(f_out[:, ~stop], f_in[:, ~stop], atol=atol)
    np.testing.assert_allclose(f_out[:, kept], f_in[:, kept], atol=atol)
    expected = np.fft.ifft2(np.fft.ifftshift(f_in * ~stop, axes=(-2, -1)))
    np.testing.assert_allclose(expected.imag, 0, atol=1e-12)  # the stop mask keeps the image real
    np.testing.assert_allclose(out, expected.real, atol=atol / (h * w) * 10)


def test_real_part_keeps_sign_of_zero_mean_input():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((1, 45, 37)).astype(np.float32)
    img -= img.mean()
    t = RandFrequencyBandStopMask(num_bands=7, num_masked_bands=3, keep_size=10).set_random_state(0)
    out = to_numpy(t(img))
    stop = to_numpy(t.stop_mask((45, 37)))
    expected = np.fft.ifft2(np.fft.ifftshift(_spectrum(img) * ~stop)).real
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert (out < 0).mean() > 0.3  # a magnitude would be >= 0 everywhere
    assert np.corrcoef(out.ravel(), img.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_zero_masked_bands_is_exact_noop(kind):
    img = np.random.default_rng(3).random((2, 45, 37)).astype(np.float32)
    out = RandFrequencyBandStopMask(num_masked_bands=0)(make_input(img, kind))
    np.testing.assert_array_equal(to_numpy(out), img)


def test_band_ids_drawn_without_replacement_uniformly():
    t = RandFrequencyBandStopMask(num_bands=7, num_masked_bands=2).set_random_state(0)
    counts = np.zeros(7)
    for _ in range(7000):
        t.randomize()
        ids = to_numpy(t.band_ids)
        assert len(set(ids.tolist())) == 2 and np.all(np.diff(ids) > 0)
        counts[ids] += 1
    np.testing.assert_allclose(counts / 7000, 2 / 7, atol=0.02)


def test_draw_replays_generator_seeded_from_randomstate():
    t = RandFrequencyBandStopMask(num_bands=7, num_masked_bands=3).set_random_state(5)
    t.randomize()
    keys = torch.rand((1, 7), generator=seeded_like_transform(5))[0]
    assert torch.equal(t.band_ids, keys.argsort()[:3].sort().values)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_band_ids(device):
    gen = torch.Generator(device=device).manual_seed(0)
    ids = draw_band_ids(500, 7, 3, generator=gen)
    assert ids.shape == (500, 3) and ids.dtype == torch.int64 and ids.device.type == device
    ids = ids.cpu()
    assert bool((ids.diff(dim=1) > 0).all()) and int(ids.min()) >= 0 and int(ids.max()) < 7
    freq = torch.bincount(ids.flatten(), minlength=7).double() / 500
    torch.testing.assert_close(freq, torch.full((7,), 3 / 7, dtype=torch.float64), atol=0.08, rtol=0)
    assert draw_band_ids(4, 7, 0).shape == (4, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["torch", "metatensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_type_dtype_device_preserved(device, kind, dtype):
    x = torch.rand(1, 24, 20, dtype=dtype)
    out = RandFrequencyBandStopMask(num_bands=4, num_masked_bands=2, keep_size=3)(make_input(x.numpy(), kind, device))
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device.type == device
    if kind == "metatensor":
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "img.png"
    out_np = RandFrequencyBandStopMask(num_bands=4, num_masked_bands=2, keep_size=3)(x.numpy())
    assert isinstance(out_np, torch.Tensor) and out_np.dtype == dtype


def test_seeded_determinism():
    img = np.random.default_rng(4).random((1, 64, 64)).astype(np.float32)
    outs = [to_numpy(RandFrequencyBandStopMask().set_random_state(s)(img)) for s in (7, 7, 8)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_randomize_false_requires_draw_and_replays():
    img = np.random.default_rng(5).random((1, 32, 32)).astype(np.float32)
    t = RandFrequencyBandStopMask(keep_size=4)
    with pytest.raises(RuntimeError, match="randomize"):
        t(img, randomize=False)
    np.testing.assert_array_equal(to_numpy(t(img)), to_numpy(t(img, randomize=False)))


def test_fully_kept_spectrum_raises_at_call():
    with pytest.raises(ValueError, match="keeps every frequency"):
        RandFrequencyBandStopMask(keep_size=10)(np.zeros((1, 8, 9), dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_bands": 0}, ValueError, "num_bands.*0"),
        ({"num_bands": 7.0}, TypeError, "num_bands.*7.0"),
        ({"num_masked_bands": -1}, ValueError, "num_masked_bands.*-1"),
        ({"num_masked_bands": 8}, ValueError, "num_masked_bands.*8"),
        ({"keep_size": -2}, ValueError, "keep_size.*-2"),
        ({"band_spacing": "cubic"}, ValueError, "band_spacing.*cubic"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandFrequencyBandStopMask(**kwargs)


def test_bad_band_ids_raise():
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        band_stop_masks(torch.tensor([[1, 7]]), (32, 32), num_bands=7, keep_size=4)


@pytest.mark.parametrize("kind", INPUT_TYPES)
def test_dict_matches_array_and_writes_stop_mask(kind):
    rng = np.random.default_rng(6)
    img, other = rng.random((1, 45, 37)).astype(np.float32), rng.random((2, 45, 37)).astype(np.float32)
    td = RandFrequencyBandStopMaskd(keys=["image", "other"], keep_size=6, mask_key="freq_mask")
    assert td.set_random_state(3) is td
    d = td({"image": make_input(img, kind), "other": make_input(other, kind)})
    ta = RandFrequencyBandStopMask(keep_size=6).set_random_state(3)
    np.testing.assert_array_equal(to_numpy(d["image"]), to_numpy(ta(img)))
    np.testing.assert_array_equal(to_numpy(d["other"]), to_numpy(ta(other, randomize=False)))
    _, _, _, bands = _oracle_geometry(45, 37, 7, 6, "linear")
    stop = np.any([bands[b] for b in to_numpy(ta.band_ids)], axis=0)
    assert d["freq_mask"].shape == (1, 45, 37)
    np.testing.assert_array_equal(to_numpy(d["freq_mask"])[0] == 1, stop)


def test_dict_checks_shapes_and_keys():
    td = RandFrequencyBandStopMaskd(keys=["image", "other"], keep_size=2)
    with pytest.raises(ValueError, match="share"):
        td({"image": np.zeros((1, 32, 32), np.float32), "other": np.zeros((1, 30, 32), np.float32)})
    with pytest.raises(KeyError, match="other"):
        td({"image": np.zeros((1, 32, 32), np.float32)})
    with pytest.raises(ValueError, match="mask_key"):
        RandFrequencyBandStopMaskd(keys="image", mask_key="image")
