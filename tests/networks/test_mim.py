"""Tests for usfm_monai.networks.mim.

Oracles: the SimMIM decoder written out by hand (1×1 convolution as a matrix product and PixelShuffle as an
explicit index map ``out[c, 16i + r, 16j + s] = conv[c·256 + 16r + s, i, j]``); features of a fresh encoder loaded
from the export; the L1 reconstruction error before and after a few optimizer steps.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from usfm_monai.networks.encoder import USFMEncoder
from usfm_monai.networks.mim import USFMMaskedImageModel, export_encoder
from usfm_monai.networks.weights import load_encoder_weights


def hand_decoder(model: USFMMaskedImageModel, x: torch.Tensor) -> torch.Tensor:
    enc = model.encoder
    tokens = enc.forward_features(x)[:, 1:]  # final-norm patch tokens, B, N, D
    B, _, D = tokens.shape
    gh, gw = enc.grid_size
    conv = model.decoder[0]
    maps = tokens @ conv.weight.view(conv.out_channels, D).T + conv.bias  # B, N, 256·C
    C = x.shape[1]
    out = torch.zeros(B, C, gh * 16, gw * 16)
    for n in range(gh * gw):
        i, j = divmod(n, gw)
        for c in range(C):
            patch = maps[:, n, c * 256 : (c + 1) * 256].view(B, 16, 16)  # r, s
            out[:, c, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = patch
    return out


@pytest.mark.parametrize("img_size", [224, 256])
def test_reconstruction_equals_hand_decoder(img_size):
    torch.manual_seed(0)
    model = USFMMaskedImageModel(size="tiny", img_size=img_size, encoder_kwargs=dict(depth=2)).eval()
    x = torch.rand(1, 1, img_size, img_size)
    with torch.no_grad():
        out = model(x)
        expected = hand_decoder(model, x)
    assert out.shape == (1, 1, img_size, img_size)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_two_channel_non_square():
    torch.manual_seed(0)
    model = USFMMaskedImageModel(size="tiny", img_size=(32, 48), in_chans=2, encoder_kwargs=dict(depth=1)).eval()
    x = torch.rand(2, 2, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand_decoder(model, x), rtol=1e-4, atol=1e-5)


def test_export_keys_follow_the_authors_layout(tmp_path):
    """The export is the authors' encoder layout, up to the documented conversions (per-block tables)."""
    from timm.models.beit import Beit

    model = USFMMaskedImageModel(size="tiny", img_size=32, encoder_kwargs=dict(depth=2))
    assert isinstance(model.encoder.norm, torch.nn.LayerNorm)  # the pre-training per-token norm
    raw = torch.load(export_encoder(model, tmp_path / "e.pt"), map_location="cpu", weights_only=True)
    ours = set(raw["state_dict"])
    # the authors' pre-training encoder (USFM_latest.pth): timm BEiT with ONE shared relative position bias
    enc = model.encoder
    authors = Beit(
        img_size=32, patch_size=16, in_chans=3, num_classes=0, embed_dim=enc.embed_dim, depth=2,
        num_heads=enc.blocks[0].attn.num_heads, use_abs_pos_emb=False, use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True, init_values=0.1, use_fc_norm=False,
    )
    theirs = set(authors.state_dict()) | {"mask_token"}
    per_block = {f"blocks.{i}.attn.relative_position_bias_table" for i in range(2)}
    shared = {"rel_pos_bias.relative_position_bias_table", "rel_pos_bias.relative_position_index"}
    assert per_block <= ours and not any(k.startswith("rel_pos_bias.") for k in ours)
    assert not any(k.endswith("relative_position_index") for k in ours)  # recomputed buffers are not written
    assert "norm.weight" in ours and not any(k.startswith("fc_norm.") for k in ours)
    assert ours - per_block == theirs - shared - {"mask_token"}
    # and the exported tensors are the encoder's own (copies on the CPU)
    for k, v in enc.state_dict().items():
        if k in ours:
            assert torch.equal(raw["state_dict"][k], v)


def test_export_then_load_gives_identical_features(tmp_path):
    torch.manual_seed(0)
    model = USFMMaskedImageModel(size="tiny", img_size=32, drop_path_rate=0.0, encoder_kwargs=dict(depth=2))
    with torch.no_grad():
        for blk in model.encoder.blocks:
            blk.attn.relative_position_bias_table.normal_()
    path = export_encoder(model, tmp_path / "usfm_encoder.pt", config={"note": "test", "steps": [1, 2]})
    assert os.listdir(tmp_path) == ["usfm_encoder.pt"]  # the temporary file was moved into place
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "config"} and raw["config"]["steps"] == [1, 2]

    fresh = USFMEncoder(**{k: v for k, v in raw["config"].items() if k not in ("note", "steps")})
    report = load_encoder_weights(fresh, path)
    assert report.missing == [] and report.unexpected == []
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_features(x), model.encoder.eval().forward_features(x))


def test_export_rejects_non_plain_config_and_missing_folder(tmp_path):
    model = USFMMaskedImageModel(size="tiny", img_size=32, encoder_kwargs=dict(depth=1))
    with pytest.raises(TypeError, match=r"config\['bad'\]"):
        export_encoder(model, tmp_path / "e.pt", config={"bad": object()})
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export_encoder(model, tmp_path / "nowhere" / "e.pt")
    with pytest.raises(TypeError, match="USFMEncoder"):
        export_encoder(torch.nn.Linear(2, 2), tmp_path / "e.pt")
    with pytest.raises(ValueError, match="drop_path_rate"):
        USFMMaskedImageModel(size="tiny", img_size=32, encoder_kwargs=dict(drop_path_rate=0.0))


def test_few_steps_reduce_l1():
    torch.manual_seed(0)
    model = USFMMaskedImageModel(size="tiny", img_size=32, encoder_kwargs=dict(depth=2, embed_dim=64, num_heads=2))
    target = torch.rand(1, 1, 32, 32)
    masked = target * (torch.rand(1, 1, 32, 32) > 0.4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.no_grad():
        start = F.l1_loss(model.eval()(masked), target).item()
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        loss = F.l1_loss(model(masked), target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = F.l1_loss(model.eval()(masked), target).item()
    assert end < 0.7 * start
