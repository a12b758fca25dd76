"""Tests for usfm_monai.optim.

Oracles: BEiT's scale ``0.65 ** (depth + 1 - layer_id)`` worked out per parameter; timm's
``param_groups_layer_decay`` for the per-parameter ``lr_scale`` on the bare encoder; the learning rates a MONAI
``WarmupCosineSchedule`` gives after several steps (ratios between groups must stay the scales).
"""

from __future__ import annotations

import pytest
import torch
from monai.optimizers import WarmupCosineSchedule
from timm.optim import param_groups_layer_decay

from usfm_monai.networks.classifier import USFMClassifier
from usfm_monai.networks.encoder import USFMEncoder
from usfm_monai.networks.mim import USFMMaskedImageModel
from usfm_monai.networks.upernet import USFMSegmenter
from usfm_monai.optim import layer_decay_param_groups

LR = 1e-3
SMALL = dict(embed_dim=32, num_heads=2)


def by_param(groups):
    return {id(p): g for g in groups for p in g["params"]}


def encoder(depth=12):
    return USFMEncoder(img_size=32, depth=depth, **SMALL)


def test_encoder_scales_follow_beit():
    model = encoder()
    groups = layer_decay_param_groups(model, LR)
    lookup = by_param(groups)
    named = dict(model.named_parameters())
    assert len({g["lr_scale"] for g in groups}) == 12 + 2
    assert lookup[id(named["patch_embed.proj.weight"])]["lr"] == pytest.approx(LR * 0.65**13)
    assert lookup[id(named["cls_token"])]["lr"] == pytest.approx(LR * 0.65**13)
    assert lookup[id(named["blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(LR * 0.65**12)
    assert lookup[id(named["blocks.11.mlp.fc2.weight"])]["lr"] == pytest.approx(LR * 0.65)
    assert lookup[id(named["fc_norm.weight"])]["lr"] == pytest.approx(LR)
    for g in groups:
        assert g["lr"] == pytest.approx(LR * g["lr_scale"])
    # every trainable parameter exactly once
    assert sorted(lookup) == sorted(id(p) for p in model.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_same_scales_as_timm_on_the_encoder():
    model = encoder(depth=4)
    ours = by_param(layer_decay_param_groups(model, LR, layer_decay=0.65))
    reference = param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.65, no_weight_decay_list=model.no_weight_decay()
    )
    assert all("lr" not in g for g in reference)  # timm only records lr_scale: the trap this module avoids
    for g in reference:
        for p in g["params"]:
            assert ours[id(p)]["lr_scale"] == pytest.approx(g["lr_scale"])
            assert ours[id(p)]["weight_decay"] == g["weight_decay"]


def test_weight_decay_exclusions_on_classifier():
    model = USFMClassifier(num_classes=3, size="tiny", img_size=32, encoder_kwargs=dict(SMALL, depth=2))
    lookup = by_param(layer_decay_param_groups(model, LR, weight_decay=0.05))
    named = dict(model.named_parameters())
    no_decay = [
        "encoder.cls_token", "encoder.blocks.0.norm1.weight", "encoder.blocks.0.norm1.bias",
        "encoder.blocks.0.gamma_1", "encoder.blocks.1.attn.q_bias",
        "encoder.blocks.1.attn.relative_position_bias_table",
        "encoder.patch_embed.proj.bias", "encoder.fc_norm.weight", "head.bias",
    ]
    for name in no_decay:
        assert lookup[id(named[name])]["weight_decay"] == 0.0, name
    for name in ["encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "head.weight"]:
        assert lookup[id(named[name])]["weight_decay"] == 0.05, name
    assert lookup[id(named["head.weight"])]["lr"] == pytest.approx(LR)
    assert lookup[id(named["encoder.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(LR * 0.65**2)
    extra = by_param(layer_decay_param_groups(model, LR, no_weight_decay_list=("head.*",)))
    assert extra[id(named["head.weight"])]["weight_decay"] == 0.0


@pytest.mark.parametrize("kind", ["segmenter", "mim", "data_parallel"])
def test_wrappers_give_decoder_full_lr(kind):
    depth = 6
    if kind == "segmenter":
        model = USFMSegmenter(size="tiny", img_size=64, channels=8, encoder_kwargs=dict(SMALL, depth=depth))
        head = model.decode_head.conv_seg.weight
    else:
        model = USFMMaskedImageModel(size="tiny", img_size=32, encoder_kwargs=dict(SMALL, depth=depth))
        head = model.decoder[0].weight
    first = model.encoder.blocks[0].attn.qkv.weight
    wrapped = torch.nn.DataParallel(model) if kind == "data_parallel" else model
    groups = layer_decay_param_groups(wrapped, LR)
    lookup = by_param(groups)
    assert len({g["lr_scale"] for g in groups}) == depth + 2
    assert lookup[id(head)]["lr"] == pytest.approx(LR)
    assert lookup[id(first)]["lr"] == pytest.approx(LR * 0.65**depth)


def test_frozen_parameters_left_out():
    model = encoder(depth=2)
    model.patch_embed.requires_grad_(False)
    params = {id(p) for g in layer_decay_param_groups(model, LR) for p in g["params"]}
    assert id(model.patch_embed.proj.weight) not in params and id(model.blocks[0].attn.qkv.weight) in params


def test_scheduler_keeps_ratios():
    model = USFMClassifier(num_classes=2, size="tiny", img_size=32, encoder_kwargs=dict(SMALL, depth=3))
    groups = layer_decay_param_groups(model, LR)
    optimizer = torch.optim.AdamW(groups, lr=LR)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=10)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    for step in range(5):
        optimizer.step()
        scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        top = max(range(len(lrs)), key=lambda i: scales[i])
        assert lrs[top] > 0
        for lr, scale in zip(lrs, scales):
            assert lr == pytest.approx(lrs[top] * scale / scales[top], rel=1e-9)
    assert len(set(round(lr, 15) for lr in lrs)) == 5  # 3 blocks + stem + head/norm: the decay is really applied


def test_bad_arguments():
    model = encoder(depth=2)
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_param_groups(model, LR, layer_decay=1.5)
    with pytest.raises(ValueError, match="lr"):
        layer_decay_param_groups(model, 0.0)
    with pytest.raises(TypeError, match="encoder"):
        layer_decay_param_groups(torch.nn.Linear(2, 2), LR)
