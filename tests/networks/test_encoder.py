"""Tests for usfm_monai.networks.encoder.

Oracles: a loop-by-loop transcription of the authors' BEiT forward pass (openmedlab/USFM,
usdsgen/modules/backbone/vision_transformer.py: Attention/Block/forward_features, relative position index built
pair by pair) run on the encoder's own parameters; parameter counts worked out by hand from the ViT-B/16 layout;
mean pooling + LayerNorm written out.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from usfm_monai.networks.encoder import USFM_SIZES, USFMEncoder, create_usfm_encoder


def randomize(encoder: USFMEncoder, seed: int = 0) -> USFMEncoder:
    """Make the zero/constant-initialized parts (rel-pos tables, layer scale, q/v bias, norms) matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "relative_position_bias_table" in name or "gamma" in name or name.endswith(("q_bias", "v_bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return encoder.eval()


def reference_blocks(encoder: USFMEncoder, x: torch.Tensor) -> list:
    """The authors' forward loop, transcribed; returns the tokens (B, 1 + N, D) after every block."""
    B = x.shape[0]
    wh, ww = encoder.grid_size
    n = wh * ww
    dim = encoder.embed_dim
    proj = encoder.patch_embed.proj
    t = F.conv2d(x, proj.weight, proj.bias, stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([encoder.cls_token.expand(B, -1, -1), t], dim=1)
    num_rel = (2 * wh - 1) * (2 * ww - 1) + 3
    index = torch.zeros(n + 1, n + 1, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            dy = i // ww - j // ww
            dx = i % ww - j % ww
            index[i + 1, j + 1] = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)
    index[0, :] = num_rel - 3
    index[:, 0] = num_rel - 2
    index[0, 0] = num_rel - 1
    outs = []
    for blk in encoder.blocks:
        a = blk.attn
        heads = a.num_heads
        h = F.layer_norm(t, (dim,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
        qkv_bias = torch.cat([a.q_bias, torch.zeros_like(a.v_bias), a.v_bias])
        qkv = F.linear(h, a.qkv.weight, qkv_bias).reshape(B, n + 1, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)
        bias = a.relative_position_bias_table[index.view(-1)].view(n + 1, n + 1, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        o = F.linear((attn @ v).transpose(1, 2).reshape(B, n + 1, dim), a.proj.weight, a.proj.bias)
        t = t + blk.gamma_1 * o
        h = F.layer_norm(t, (dim,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        t = t + blk.gamma_2 * h
        outs.append(t)
    return outs


def small_encoder(img_size=(32, 48), **kwargs) -> USFMEncoder:
    torch.manual_seed(0)
    args = dict(img_size=img_size, embed_dim=32, depth=3, num_heads=2, drop_path_rate=0.0)
    return randomize(USFMEncoder(**dict(args, **kwargs)))


def test_base_parameter_count_matches_hand_count():
    # ViT-B/16, 1 channel, rel-pos table per block, layer scale, q/v bias, no pos_embed, fc_norm, no head
    d, depth, mlp, table = 768, 12, 3072, (2 * 14 - 1) ** 2 + 3
    per_block = (
        2 * d  # norm1
        + 3 * d * d + 2 * d  # qkv (no bias) + q_bias + v_bias
        + table * 12  # relative_position_bias_table
        + d * d + d  # proj
        + 2 * d  # norm2
        + d * mlp + mlp + mlp * d + d  # mlp
        + 2 * d  # gamma_1, gamma_2
    )
    expected = (d * 1 * 16 * 16 + d) + d + depth * per_block + 2 * d
    encoder = create_usfm_encoder("base", img_size=224)
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert encoder.pos_embed is None and encoder.rel_pos_bias is None and encoder.num_classes == 0
    assert torch.all(encoder.blocks[0].gamma_1.detach() == torch.tensor(0.1))


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_sizes_and_timm_entry_points(size):
    encoder = timm.create_model(f"usfm_vit_{size}_patch16", img_size=32)
    expected = USFM_SIZES[size]
    assert isinstance(encoder, USFMEncoder)
    assert (encoder.embed_dim, len(encoder.blocks), encoder.blocks[0].attn.num_heads) == (
        expected["embed_dim"], expected["depth"], expected["num_heads"]
    )
    assert encoder.in_chans == 1 and encoder.patch_embed.proj.in_channels == 1
    assert USFM_SIZES["base"] == dict(embed_dim=768, depth=12, num_heads=12)
    assert USFM_SIZES["large"] == dict(embed_dim=1024, depth=24, num_heads=16)
    assert set(timm.list_models("usfm_vit_*")) == {f"usfm_vit_{s}_patch16" for s in USFM_SIZES}


def test_entry_point_refuses_download():
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("usfm_vit_tiny_patch16", pretrained=True, img_size=32)


def test_tokens_match_reference_non_square():
    encoder = small_encoder()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        expected = reference_blocks(encoder, x)
        tokens = encoder.forward_features(x)
        final, levels = encoder.forward_intermediates(x, indices=[0, -1], output_fmt="NLC")
    # use_fc_norm=True: no per-token final norm, forward_features returns the last block's tokens
    torch.testing.assert_close(tokens, expected[-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(levels[0], expected[0][:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, expected[-1], rtol=1e-5, atol=1e-5)


def test_intermediates_nchw_map_patch_order():
    encoder = small_encoder()
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        expected = reference_blocks(encoder, x)[1][:, 1:]  # B, N, D with N in row-major (2 x 3) order
        (level,) = encoder.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert level.shape == (1, 32, 2, 3)
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(level[0, :, r, c], expected[0, r * 3 + c], rtol=1e-5, atol=1e-5)


def test_features_only_getter_matches_intermediates():
    torch.manual_seed(0)
    net = timm.create_model(
        "usfm_vit_tiny_patch16", img_size=32, features_only=True, out_indices=(1, 3), depth=4, drop_path_rate=0.0
    ).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        feats = net(x)
        ref = net.model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b)


def test_pooled_head_is_fc_norm_of_mean_patch_tokens():
    encoder = small_encoder(num_classes=4)
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        last = reference_blocks(encoder, x)[-1]
        pooled = F.layer_norm(last[:, 1:].mean(dim=1), (32,), encoder.fc_norm.weight, encoder.fc_norm.bias, eps=1e-6)
        expected = pooled @ encoder.head.weight.T + encoder.head.bias
        torch.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-5)


def test_pretraining_variant_has_token_norm():
    encoder = small_encoder(use_fc_norm=False)
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        last = reference_blocks(encoder, x)[-1]
        expected = F.layer_norm(last, (32,), encoder.norm.weight, encoder.norm.bias, eps=1e-6)
        torch.testing.assert_close(encoder.forward_features(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("img_size", [30, (32, 40), 0])
def test_bad_img_size_raises(img_size):
    with pytest.raises(ValueError, match="img_size"):
        create_usfm_encoder("tiny", img_size=img_size)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size must be one of"):
        create_usfm_encoder("huge")
    with pytest.raises(ValueError, match="use_abs_pos_emb"):
        USFMEncoder(img_size=32, embed_dim=32, depth=1, num_heads=2, use_abs_pos_emb=True)
    with pytest.raises(TypeError, match="img_size"):
        USFMEncoder(img_size="32", embed_dim=32, depth=1, num_heads=2)


def test_wrong_input_shape_raises_value_error():
    encoder = small_encoder()
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 48\).*got \(1, 1, 32, 32\)"):
        encoder(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="got \\(1, 3, 32, 48\\)"):
        encoder.forward_intermediates(torch.rand(1, 3, 32, 48))


def test_optimizer_hooks():
    encoder = small_encoder()
    nwd = encoder.no_weight_decay()
    assert "cls_token" in nwd
    assert {f"blocks.{i}.attn.relative_position_bias_table" for i in range(3)} <= nwd
    matcher = encoder.group_matcher()
    assert "patch_embed" in matcher["stem"]


def test_init_config_rebuilds_the_same_architecture():
    encoder = small_encoder(mlp_ratio=2.0)
    clone = USFMEncoder(**encoder.init_config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in encoder.state_dict().items()}
    clone.load_state_dict(encoder.state_dict())
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), encoder(x))
