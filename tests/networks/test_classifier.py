"""Tests for usfm_monai.networks.classifier.

Oracles: mean pooling of the patch tokens, ``F.layer_norm`` and the linear head written out; the pooled features
of the source encoder whose weights were loaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from usfm_monai.networks.classifier import USFMClassifier
from usfm_monai.networks.encoder import USFMEncoder
from usfm_monai.networks.mim import export_encoder
from usfm_monai.networks.weights import load_encoder_weights

SMALL = dict(embed_dim=32, num_heads=2, depth=2)


def make(**kwargs) -> USFMClassifier:
    torch.manual_seed(0)
    args = dict(num_classes=3, size="tiny", img_size=32, drop_path_rate=0.0, encoder_kwargs=SMALL)
    return USFMClassifier(**dict(args, **kwargs))


def test_logits_equal_hand_pooling_norm_and_head():
    model = make(num_classes=5).eval()
    with torch.no_grad():
        model.encoder.fc_norm.weight.normal_()
        model.encoder.fc_norm.bias.normal_()
        model.head.weight.normal_()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        tokens = model.encoder.forward_features(x)  # B, 1 + N, D
        fc_norm = model.encoder.fc_norm
        pooled = F.layer_norm(tokens[:, 1:].mean(dim=1), (32,), fc_norm.weight, fc_norm.bias, eps=1e-6)
        expected = pooled @ model.head.weight.T + model.head.bias
        logits = model(x)
    assert logits.shape == (4, 5)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_head_starts_small():
    model = make()
    # BEiT's head init: trunc-normal with std 0.02, scaled by 0.001
    std = model.head.weight.detach().std().item()
    assert 0.5 * 0.02e-3 < std < 2.0 * 0.02e-3
    assert torch.equal(model.head.bias, torch.zeros(3))


def test_pretrained_encoder_gives_source_pooled_features(tmp_path):
    torch.manual_seed(3)
    source = USFMEncoder(img_size=32, drop_path_rate=0.0, **SMALL).eval()
    with torch.no_grad():
        for blk in source.blocks:
            blk.attn.relative_position_bias_table.normal_()
        source.fc_norm.weight.normal_()
    path = export_encoder(source, tmp_path / "encoder.pt")
    model = make().eval()
    report = load_encoder_weights(model, str(path))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.forward_features(x), expected)
        assert not torch.allclose(make().eval().forward_features(x), expected)
    assert report.layout == "usfm_monai_export" and report.missing == []


def test_pretraining_export_gets_identity_fc_norm(tmp_path):
    torch.manual_seed(4)
    source = USFMEncoder(img_size=32, drop_path_rate=0.0, use_fc_norm=False, **SMALL).eval()
    path = export_encoder(source, tmp_path / "mim_encoder.pt")
    model = make().eval()
    load_encoder_weights(model, str(path))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        (last,) = source.forward_intermediates(x, indices=[1], norm=False, output_fmt="NLC", intermediates_only=True)
        expected = F.layer_norm(last.mean(dim=1), (32,), eps=1e-6)
        torch.testing.assert_close(model.forward_features(x), expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        make(num_classes=0)
    with pytest.raises(ValueError, match="global_pool"):
        make(encoder_kwargs=dict(SMALL, global_pool="token"))
    with pytest.raises(ValueError, match="img_size"):
        make(img_size=40)
