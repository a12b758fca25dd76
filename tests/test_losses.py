"""Tests for usfm_monai.losses (eq. 11-14): reference package, hand-worked values, detached weight."""

from __future__ import annotations

import pytest
import torch

from usfm_monai.losses import FocalFrequencyLoss, USFMReconstructionLoss

OPTION_CASES = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(alpha=2.0), id="alpha2"),
    pytest.param(dict(patch_factor=2), id="patch2"),
    pytest.param(dict(alpha=2.0, patch_factor=2, log_matrix=True), id="alpha2-patch2-log"),
    pytest.param(dict(log_matrix=True), id="log"),
    pytest.param(dict(batch_matrix=True), id="batch"),
    pytest.param(dict(ave_spectrum=True), id="ave"),
    pytest.param(dict(ave_spectrum=True, batch_matrix=True, alpha=2.0), id="ave-batch-alpha2"),
    pytest.param(dict(loss_weight=0.3, patch_factor=2, batch_matrix=True), id="weight0.3-patch2-batch"),
]


def _random_pair(seed: int = 0, shape=(3, 2, 8, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


@pytest.mark.parametrize("kwargs", OPTION_CASES)
def test_ffl_matches_reference_value_and_gradient(kwargs):
    ref_module = pytest.importorskip("focal_frequency_loss")
    pred, target = _random_pair()
    ours_pred = pred.clone().requires_grad_(True)
    ref_pred = pred.clone().requires_grad_(True)

    ours = FocalFrequencyLoss(**kwargs)(ours_pred, target)
    ref = ref_module.FocalFrequencyLoss(**kwargs)(ref_pred, target)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)

    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_pred.grad, ref_pred.grad, rtol=1e-4, atol=1e-8)


def test_ffl_gradient_hand_derived_detached_weight():
    """With the weight ``W`` detached, d/dp mean(W |F(p - t)|^2) = 2 Re(F^H (W * F(p - t))) / N (F unitary)."""
    pred, target = _random_pair(seed=1, shape=(2, 1, 6, 6))
    pred.requires_grad_(True)
    loss = FocalFrequencyLoss(alpha=1.0)(pred, target)
    loss.backward()

    diff_freq = torch.fft.fft2((pred - target).detach(), norm="ortho")
    magnitude = diff_freq.abs()
    weight = magnitude / magnitude.amax(dim=(-2, -1), keepdim=True)
    expected = 2.0 * torch.fft.ifft2(weight * diff_freq, norm="ortho").real / pred.numel()
    torch.testing.assert_close(pred.grad, expected, rtol=1e-4, atol=1e-8)

    # the same loss with a weight that is NOT detached has a different gradient (extra d(W)/dp term)
    pred_nd = pred.detach().clone().requires_grad_(True)
    freq = torch.fft.fft2(pred_nd - target, norm="ortho")
    mag = freq.abs()
    loss_nd = ((mag / mag.amax(dim=(-2, -1), keepdim=True)) * mag.square()).mean()
    torch.testing.assert_close(loss_nd, loss.detach(), rtol=1e-5, atol=1e-7)
    loss_nd.backward()
    assert (pred_nd.grad - pred.grad).abs().max() > 1e-3 * pred.grad.abs().max()


def test_reconstruction_loss_hand_worked_2x2():
    # difference d = [[1, 2], [3, 4]]; orthonormal 2x2 DFT of d: F(0,0) = 10/2 = 5, F(0,1) = (1-2+3-4)/2 = -1,
    # F(1,0) = (1+2-3-4)/2 = -2, F(1,1) = (1-2-3+4)/2 = 0, so |F| = 5, 1, 2, 0.
    # alpha = 1: w = |F| / 5 = 1, 0.2, 0.4, 0; w * |F|^2 = 25, 0.2, 1.6, 0; FFL = 26.8 / 4 = 6.7.
    # L1 = (1 + 2 + 3 + 4) / 4 = 2.5; total = 2.5 + 0.4 * 6.7 = 5.18.
    target = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    pred = target + torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert FocalFrequencyLoss()(pred, target).item() == pytest.approx(6.7, rel=1e-6)
    assert USFMReconstructionLoss()(pred, target).item() == pytest.approx(5.18, rel=1e-6)
    # alpha = 2: w = |F|^2 / 25 = 1, 0.04, 0.16, 0; w * |F|^2 = 25, 0.04, 0.64, 0; FFL = 25.68 / 4 = 6.42
    assert FocalFrequencyLoss(alpha=2.0)(pred, target).item() == pytest.approx(6.42, rel=1e-6)
    assert USFMReconstructionLoss(lambda_freq=0.4, use_frequency_loss=False)(pred, target).item() == pytest.approx(2.5)


@pytest.mark.parametrize("kwargs", OPTION_CASES)
def test_zero_for_identical_inputs(kwargs):
    image, _ = _random_pair(seed=2)
    assert FocalFrequencyLoss(**kwargs)(image, image.clone()).item() == 0.0
    assert USFMReconstructionLoss()(image, image.clone()).item() == 0.0


def test_runs_in_float32_under_autocast():
    pred, target = _random_pair(seed=3, shape=(2, 1, 8, 8))
    pred_bf16, target_bf16 = pred.bfloat16(), target.bfloat16()
    expected = USFMReconstructionLoss()(pred_bf16.float(), target_bf16.float())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ffl = FocalFrequencyLoss()(pred_bf16, target_bf16)
        total = USFMReconstructionLoss()(pred_bf16, target_bf16)
    assert ffl.dtype == torch.float32
    torch.testing.assert_close(total.float(), expected, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize(
    "pred_shape, target_shape, kwargs, error, match",
    [
        pytest.param((1, 1, 8, 8), (1, 1, 8, 9), {}, ValueError, "same shape", id="shape-mismatch"),
        pytest.param((8, 8), (8, 8), {}, ValueError, r"\(B, C, H, W\)", id="not-4d"),
        pytest.param((1, 1, 6, 6), (1, 1, 6, 6), dict(patch_factor=4), ValueError, "divisible", id="patch"),
    ],
)
def test_invalid_inputs(pred_shape, target_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        FocalFrequencyLoss(**kwargs)(torch.rand(pred_shape), torch.rand(target_shape))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="patch_factor"):
        FocalFrequencyLoss(patch_factor=0)
    with pytest.raises(ValueError, match="alpha"):
        FocalFrequencyLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="lambda_freq"):
        USFMReconstructionLoss(lambda_freq=-0.1)
    with pytest.raises(TypeError, match="floating point"):
        USFMReconstructionLoss()(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 4))
