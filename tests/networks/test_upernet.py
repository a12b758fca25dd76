"""Tests for usfm_monai.networks.upernet.

Oracles: BEiT/mmseg's choice of blocks (4, 6, 8, 12 of 12, same fractions elsewhere) written out as numbers; the
pyramid levels recomputed from the encoder's block outputs (identity at stride 16, ``F.max_pool2d`` at stride 32,
sizes H/4, H/8); MONAI ``DeepSupervisionLoss`` equal to ``1.0·L(main) + 0.4·L(aux)`` computed by hand; batch
independence in eval mode; gradients through the whole network.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss

from usfm_monai.networks.encoder import USFMEncoder
from usfm_monai.networks.mim import export_encoder
from usfm_monai.networks.upernet import USFMSegmenter, default_out_indices
from usfm_monai.networks.weights import load_encoder_weights

SMALL = dict(embed_dim=32, num_heads=2)


@pytest.mark.parametrize(
    "depth, expected", [(12, (3, 5, 7, 11)), (24, (7, 11, 15, 23)), (6, (1, 2, 3, 5)), (4, (0, 1, 2, 3))]
)
def test_default_out_indices(depth, expected):
    assert default_out_indices(depth) == expected


def test_default_out_indices_too_shallow():
    with pytest.raises(ValueError, match="depth=3"):
        default_out_indices(3)


def make(depth, img_size, num_classes=2, **kwargs):
    torch.manual_seed(0)
    return USFMSegmenter(
        num_classes=num_classes, size="tiny", img_size=img_size, channels=16, drop_path_rate=0.0,
        encoder_kwargs=dict(SMALL, depth=depth), **kwargs,
    )


@pytest.mark.parametrize(
    "depth, img_size, num_classes",
    [(12, 64, 2), (6, 96, 3), (24, (128, 96), 4)],
    ids=["depth12-64", "depth6-96", "depth24-128x96"],
)
def test_pyramid_levels_and_logits(depth, img_size, num_classes):
    model = make(depth, img_size, num_classes).eval()
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    assert model.out_indices == default_out_indices(depth)
    x = torch.rand(2, 1, h, w)
    with torch.no_grad():
        levels = model.forward_pyramid(x)
        blocks = model.encoder.forward_intermediates(x, indices=list(model.out_indices), intermediates_only=True)
        logits = model(x)
        single = model(x[1:])
    assert [tuple(t.shape[-2:]) for t in levels] == [(h // s, w // s) for s in (4, 8, 16, 32)]
    assert all(t.shape[:2] == (2, 32) for t in levels)
    torch.testing.assert_close(levels[2], blocks[2])  # fpn3: identity at stride 16
    torch.testing.assert_close(levels[3], F.max_pool2d(blocks[3], 2))  # fpn4: 2x2 max-pool
    assert logits.shape == (2, num_classes, h, w) and torch.isfinite(logits).all()
    torch.testing.assert_close(single, logits[1:], rtol=1e-4, atol=1e-5)  # eval: no batch coupling (BN frozen)


def test_encoder_norms_pruned_and_every_parameter_trained():
    model = make(6, 64).train()
    assert isinstance(model.encoder.norm, torch.nn.Identity) and isinstance(model.encoder.fc_norm, torch.nn.Identity)
    main, aux = model(torch.rand(2, 1, 64, 64))
    (main.mean() + aux.mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # DistributedDataParallel needs every parameter in the graph
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_aux_head_train_vs_eval_and_deep_supervision():
    model = make(6, 64, num_classes=3).train()
    x = torch.rand(2, 1, 64, 64)
    label = torch.randint(0, 3, (2, 1, 64, 64))
    out = model(x)
    assert isinstance(out, list) and len(out) == 2
    assert all(o.shape == (2, 3, 64, 64) for o in out)
    inner = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = DeepSupervisionLoss(inner, weights=[1.0, 0.4])(out, label)
    torch.testing.assert_close(loss, 1.0 * inner(out[0], label) + 0.4 * inner(out[1], label))
    model.eval()
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, 64, 64)


def test_no_aux_head_returns_tensor_in_training():
    model = make(6, 64, aux_head=False).train()
    assert model.aux_head is None
    assert isinstance(model(torch.rand(2, 1, 64, 64)), torch.Tensor)


def test_group_norm_trains_with_batch_one():
    model = make(6, 64, norm=("group", {"num_groups": 4})).train()
    main, aux = model(torch.rand(1, 1, 64, 64))
    assert torch.isfinite(main).all() and torch.isfinite(aux).all()


def test_pretrained_encoder_loaded(tmp_path):
    torch.manual_seed(1)
    source = USFMEncoder(img_size=64, depth=6, drop_path_rate=0.0, **SMALL)
    path = export_encoder(source, tmp_path / "encoder.pt")
    model = make(6, 64)
    report = load_encoder_weights(model, str(path))
    assert report.layout == "usfm_monai_export" and report.missing == [] and report.unexpected == []
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    # the segmenter's encoder is pruned (no final norms): the pooled-feature norm is dropped, and said so
    assert any("fc_norm" in c for c in report.converted)


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_indices"):
        make(6, 64, out_indices=(1, 2, 3))
    with pytest.raises(ValueError, match="out_indices"):
        make(6, 64, out_indices=(3, 2, 4, 5))
    with pytest.raises(ValueError, match="aux_in_index"):
        make(6, 64, aux_in_index=4)
    with pytest.raises(ValueError, match="num_classes"):
        make(6, 64, num_classes=0)
