"""Tests for usfm_monai.networks.weights.

Oracles: a fake authors' checkpoint made from timm's 3-channel BEiT with ONE shared relative position bias (the
layout of USFM_latest.pth), whose outputs on the replicated, ImageNet-normalized image must equal ours on the
grayscale image; timm's ``resize_rel_pos_bias_table`` for square grids; hand-built separable tables whose exact
resized values are known for the axis that does not change; round trips through our own export.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from timm.layers import resize_rel_pos_bias_table as timm_resize
from timm.models.beit import Beit

from usfm_monai.networks.encoder import USFMEncoder
from usfm_monai.networks.mim import export_encoder
from usfm_monai.networks.weights import (
    WeightLoadReport,
    checkpoint_filter_fn,
    convert_authors_checkpoint,
    load_encoder_weights,
    resize_rel_pos_bias_table,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
DIM, DEPTH, HEADS = 64, 2, 4


def randomize_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "relative_position_bias_table" in name or "gamma" in name or name.endswith(("q_bias", "v_bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def authors_model(img_size=32, use_fc_norm=False, seed=0) -> Beit:
    """3-channel BEiT with a shared relative position bias, as the authors' pre-trained encoder."""
    torch.manual_seed(seed)
    model = Beit(
        img_size=img_size, patch_size=16, in_chans=3, num_classes=0, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True, init_values=0.1,
        use_fc_norm=use_fc_norm,
    )
    randomize_(model, seed)
    return model.eval()


def authors_checkpoint(model: Beit) -> dict:
    """What USFM_latest.pth holds: the encoder state, the shared table + its index, the MIM mask token."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["rel_pos_bias.relative_position_index"] = model.rel_pos_bias.relative_position_index.clone()
    state["mask_token"] = torch.zeros(1, 1, DIM)
    return state


def ours(img_size=32, in_chans=1, use_fc_norm=True, seed=1, **kwargs) -> USFMEncoder:
    torch.manual_seed(seed)
    return USFMEncoder(
        img_size=img_size, in_chans=in_chans, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, drop_path_rate=0.0,
        use_fc_norm=use_fc_norm, **kwargs,
    ).eval()


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    return (x.repeat(1, 3, 1, 1) - MEAN) / STD


# ---------------------------------------------------------------------------------------------------------------
# the authors' layout
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["flat", "model", "state_dict_module"])
def test_authors_checkpoint_grayscale_equals_rgb_normalized(wrap):
    src = authors_model()
    state = authors_checkpoint(src)
    if wrap == "model":
        state = {"model": state}
    elif wrap == "state_dict_module":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    dst = ours()
    report = load_encoder_weights(dst, state)
    assert isinstance(report, WeightLoadReport)
    assert report.layout == "authors_usfm"
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(dst.state_dict())
    assert any("shared" in c for c in report.converted) and any("folded" in c for c in report.converted)
    assert any("mask_token" in c for c in report.converted)

    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        got = dst.forward_intermediates(x, intermediates_only=True)
        expected = src.forward_intermediates(normalize_rgb(x), intermediates_only=True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the pre-training token norm has no slot in a pooled encoder: fc_norm starts as identity affine
    assert torch.equal(dst.fc_norm.weight, torch.ones(DIM)) and torch.equal(dst.fc_norm.bias, torch.zeros(DIM))


def test_authors_fc_norm_model_pooled_output_equal():
    src = authors_model(use_fc_norm=True)
    dst = ours()
    state = convert_authors_checkpoint(authors_checkpoint(src), dst)
    dst.load_state_dict(state, strict=True)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(normalize_rgb(x)), rtol=1e-4, atol=1e-4)


def test_authors_checkpoint_into_three_channel_encoder_takes_unnormalized_rgb():
    src = authors_model(use_fc_norm=True)
    dst = ours(in_chans=3)
    dst.load_state_dict(convert_authors_checkpoint(authors_checkpoint(src), dst))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src((x - MEAN) / STD), rtol=1e-4, atol=1e-4)


def test_convert_authors_is_pure_and_requires_signature():
    src = authors_model()
    state = authors_checkpoint(src)
    before = {k: v.clone() for k, v in state.items()}
    out = convert_authors_checkpoint(state, ours())
    assert set(state) == set(before) and all(torch.equal(state[k], before[k]) for k in state)
    assert "rel_pos_bias.relative_position_bias_table" not in out
    for i in range(DEPTH):
        assert torch.equal(
            out[f"blocks.{i}.attn.relative_position_bias_table"], state["rel_pos_bias.relative_position_bias_table"]
        )
    state.pop("rel_pos_bias.relative_position_bias_table")
    with pytest.raises(KeyError, match="rel_pos_bias.relative_position_bias_table"):
        convert_authors_checkpoint(state, ours())


def test_authors_checkpoint_resized_to_larger_grid_is_finite():
    src = authors_model(img_size=32)  # 2 x 2 grid
    dst = ours(img_size=48)  # 3 x 3 grid
    report = load_encoder_weights(dst, authors_checkpoint(src))
    assert len(report.resized) == DEPTH and "(2, 2) -> (3, 3)" in report.resized[0]
    for blk in dst.blocks:
        assert torch.isfinite(blk.attn.relative_position_bias_table).all()
    with torch.no_grad():
        assert torch.isfinite(dst(torch.rand(1, 1, 48, 48))).all()


# ---------------------------------------------------------------------------------------------------------------
# relative position bias resizing
# ---------------------------------------------------------------------------------------------------------------


def test_resize_identity_is_exact():
    table = torch.randn(27 * 27 + 3, 4)
    assert torch.equal(resize_rel_pos_bias_table(table, (14, 14), (14, 14)), table)
    table = torch.randn(27 * 31 + 3, 4)
    assert torch.equal(resize_rel_pos_bias_table(table, (14, 16), (14, 16)), table)


def test_resize_224_to_256_finite_and_matches_timm():
    torch.manual_seed(0)
    table = torch.randn(27 * 27 + 3, 12)
    got = resize_rel_pos_bias_table(table, (14, 14), (16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's interpolator indexes with a list (torch deprecation warning)
        expected = timm_resize(table, new_window_size=(16, 16), new_bias_shape=(31 * 31 + 3, 12))
    assert got.shape == (31 * 31 + 3, 12) and torch.isfinite(got).all()
    # timm stops its bisection for the geometric ratio at 1e-6, hence the tolerance
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    assert torch.equal(got[-3:], table[-3:])


def separable_table(f_dy, f_dx, window, heads=2):
    """Table whose value at offset (dy, dx) is f_dy(dy) + f_dx(dx) (+ head index), with 3 marked extra rows."""
    wh, ww = window
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32)
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32)
    grid = f_dy(dy)[:, None] + f_dx(dx)[None, :]  # 2Wh-1, 2Ww-1
    table = torch.stack([grid.reshape(-1) + h for h in range(heads)], dim=-1)
    extra = 100.0 * torch.arange(1, heads + 1, dtype=torch.float32).expand(3, heads)
    return torch.cat([table, extra], dim=0)


def as_grid(table, window):
    wh, ww = window
    return table[:-3].reshape(2 * wh - 1, 2 * ww - 1, -1)


def test_resize_width_only_keeps_height_axis_exactly():
    src = separable_table(lambda dy: dy**2, lambda dx: 0 * dx, (14, 14))
    out = resize_rel_pos_bias_table(src, (14, 14), (14, 16))
    grid = as_grid(out, (14, 16))
    expected_rows = torch.arange(-13, 14, dtype=torch.float32) ** 2
    assert grid.shape == (27, 31, 2)
    # the value depends on dy only and dy is not resampled: every column equals the source rows
    for col in range(31):
        torch.testing.assert_close(grid[:, col, 0], expected_rows, rtol=0, atol=1e-5)
        torch.testing.assert_close(grid[:, col, 1], expected_rows + 1, rtol=0, atol=1e-5)
    assert torch.equal(out[-3:], src[-3:])


def test_resize_height_only_keeps_width_axis_exactly():
    src = separable_table(lambda dy: 0 * dy, lambda dx: dx**3, (14, 14))
    out = resize_rel_pos_bias_table(src, (14, 14), (16, 14))
    grid = as_grid(out, (16, 14))
    expected_cols = torch.arange(-13, 14, dtype=torch.float32) ** 3
    assert grid.shape == (31, 27, 2)
    for row in range(31):
        torch.testing.assert_close(grid[row, :, 0], expected_cols, rtol=0, atol=1e-4)


def test_resize_changed_axis_not_transposed_and_interpolates():
    # value grows with dy only; resampling dy (height) must keep it constant along dx (the authors' code transposes)
    src = separable_table(lambda dy: dy.abs(), lambda dx: 0 * dx, (14, 12))
    out = resize_rel_pos_bias_table(src, (14, 12), (16, 12))
    grid = as_grid(out, (16, 12))[..., 0]  # 31, 23
    assert torch.isfinite(grid).all()
    assert torch.allclose(grid, grid[:, :1].expand_as(grid), atol=1e-6)
    column = grid[:, 0]
    assert column[15] == 0  # the zero offset is a knot of both grids
    assert column[0] == pytest.approx(13.0, abs=1e-3) and column[-1] == pytest.approx(13.0, abs=1e-3)  # ends -> ends
    assert torch.all(column[16:].diff() > 0)  # monotone, no overshoot from the interpolation
    assert torch.all(column <= 13.0 + 1e-3)


def test_resize_shape_mismatch_raises():
    with pytest.raises(ValueError, match="does not match source window"):
        resize_rel_pos_bias_table(torch.randn(10, 2), (14, 14), (16, 16))


def test_export_config_gives_non_square_source_grid():
    src = ours(img_size=(48, 32))  # grid 3 x 2
    with torch.no_grad():
        for blk in src.blocks:
            table = separable_table(lambda dy: dy * 10, lambda dx: 0 * dx, (3, 2), HEADS)
            blk.attn.relative_position_bias_table.copy_(table)
    dst = ours(img_size=48)  # grid 3 x 3: height unchanged, width resampled
    report = load_encoder_weights(dst, {"state_dict": src.state_dict(), "config": src.init_config})
    assert report.layout == "usfm_monai_export" and "(3, 2) -> (3, 3)" in report.resized[0]
    grid = as_grid(dst.blocks[0].attn.relative_position_bias_table.detach(), (3, 3))[..., 0]
    expected = torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0])[:, None].expand(5, 5)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# our layouts, strictness, errors
# ---------------------------------------------------------------------------------------------------------------


def test_export_round_trip(tmp_path):
    src = ours(seed=3)
    randomize_(src, 3)
    path = export_encoder(src, tmp_path / "encoder.pt", config={"epoch": 7})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"]["epoch"] == 7 and raw["config"]["embed_dim"] == DIM
    dst = ours(seed=4)
    report = load_encoder_weights(dst, path)
    assert report.layout == "usfm_monai_export" and report.source == str(tmp_path / "encoder.pt")
    assert report.loaded == len(src.state_dict()) and report.converted == [] and report.resized == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


class Wrapper(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(DIM, 3)


@pytest.mark.parametrize("ddp", [False, True])
def test_training_checkpoint_with_prefix(tmp_path, ddp):
    src = Wrapper(ours(seed=5))
    randomize_(src, 5)
    network = {(f"module.{k}" if ddp else k): v for k, v in src.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"network": network, "optimizer": {"state": {}, "param_groups": []}, "trainer": {"epoch": 2}}, path)
    dst = ours(seed=6)
    report = load_encoder_weights(dst, path)
    assert report.layout == "training_checkpoint" and report.prefix == "encoder."
    assert report.ignored == 2 + 2  # optimizer, trainer; head.weight, head.bias
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # the wrapper itself can be the target (its 'encoder' attribute is used)
    load_encoder_weights(Wrapper(ours(seed=7)), path)


def test_several_encoders_need_prefix():
    a, b = ours(seed=1), ours(seed=2)
    state = {f"gen_a.{k}": v for k, v in a.state_dict().items()}
    state.update({f"gen_b.{k}": v for k, v in b.state_dict().items()})
    with pytest.raises(ValueError, match=r"several encoders.*gen_a\..*gen_b\."):
        load_encoder_weights(ours(), state)
    dst = ours(seed=3)
    report = load_encoder_weights(dst, state, prefix="gen_b.")
    assert report.prefix == "gen_b." and torch.equal(dst.cls_token, b.cls_token)
    with pytest.raises(KeyError, match="nope"):
        load_encoder_weights(dst, state, prefix="nope.")


def test_head_dropped_when_target_has_none():
    src = ours(num_classes=5)
    dst = ours()
    report = load_encoder_weights(dst, src.state_dict())
    assert report.layout == "state_dict" and any("head" in c for c in report.converted)
    assert report.unexpected == []


def test_pretraining_export_into_pooled_encoder_reports_norm_transition():
    src = ours(use_fc_norm=False, seed=8)
    dst = ours(use_fc_norm=True, seed=9)
    report = load_encoder_weights(dst, src.state_dict())
    assert any("norm.weight" in c for c in report.converted) and any("fc_norm" in c for c in report.converted)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = dst.forward_intermediates(x, intermediates_only=True)
        b = src.forward_intermediates(x, intermediates_only=True)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_strict_lists_missing_and_unexpected_and_leaves_model_untouched():
    src = ours(seed=10)
    state = src.state_dict()
    state.pop("blocks.1.mlp.fc2.weight")
    state["blocks.9.extra"] = torch.zeros(1)
    dst = ours(seed=11)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    listed = r"missing keys \['blocks.1.mlp.fc2.weight'\].*unexpected keys \['blocks.9.extra'\]"
    with pytest.raises(ValueError, match=listed):
        load_encoder_weights(dst, state)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    report = load_encoder_weights(dst, state, strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.weight"] and report.unexpected == ["blocks.9.extra"]
    assert torch.equal(dst.cls_token, src.cls_token)
    assert torch.equal(dst.blocks[1].mlp.fc2.weight, before["blocks.1.mlp.fc2.weight"])


def test_shape_mismatch_raises_with_key():
    src = USFMEncoder(img_size=32, embed_dim=32, depth=DEPTH, num_heads=HEADS)
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        load_encoder_weights(ours(), src.state_dict(), strict=False)


def test_missing_file_and_bad_inputs(tmp_path):
    missing = tmp_path / "nowhere" / "USFM_latest.pth"
    with pytest.raises(FileNotFoundError, match="USFM_latest.pth"):
        load_encoder_weights(ours(), missing)
    pickled = tmp_path / "pickled_objects.pth"
    torch.save({"model": {}, "args": WeightLoadReport(source="x", layout="y")}, pickled)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_encoder_weights(ours(), pickled)
    with pytest.raises(TypeError, match="path_or_state_dict"):
        load_encoder_weights(ours(), 3)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", bytes(range(100))], ids=["empty", "text", "garbage"])
def test_pretrained_file_that_is_not_torch_is_named(tmp_path, content):
    path = tmp_path / "usfm_encoder.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"encoder weights file \S*usfm_encoder\.pt (is empty|\(\d+ bytes\) is not a file)"):
        load_encoder_weights(ours(), path)
    with pytest.raises(ValueError, match="no encoder found"):
        load_encoder_weights(ours(), {"weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="encoder"):
        load_encoder_weights(torch.nn.Linear(2, 2), {"weight": torch.zeros(1)})


def test_checkpoint_filter_fn_dispatches_on_signature():
    authors = authors_checkpoint(authors_model())
    dst = ours()
    converted = checkpoint_filter_fn({"model": authors}, dst)
    assert converted["patch_embed.proj.weight"].shape == (DIM, 1, 16, 16)
    plain = checkpoint_filter_fn(ours(seed=12).state_dict(), dst)
    assert plain["patch_embed.proj.weight"].shape == (DIM, 1, 16, 16)
    assert set(plain) == set(dst.state_dict())
    assert os.environ.get("TIMM_USE_SCIPY_INTERP", "0") == "0"


def test_timm_resize_moves_an_unchanged_axis_ours_keeps_it():
    """Why ours is kept (see its docstring): timm's ratio search starts at 1.01, so an unchanged axis is resampled."""
    src = separable_table(lambda dy: dy**2, lambda dx: 0 * dx, (14, 14))
    ours_out = as_grid(resize_rel_pos_bias_table(src, (14, 14), (14, 16)), (14, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm_out = as_grid(timm_resize(src, (14, 16), (27 * 31 + 3, 2), old_window_size=(14, 14)), (14, 16))
    exact = (torch.arange(-13, 14, dtype=torch.float32) ** 2)[:, None].expand(27, 31)
    torch.testing.assert_close(ours_out[..., 0], exact, rtol=0, atol=1e-4)
    assert (timm_out[..., 0] - exact).abs().max() > 1.0


# ---------------------------------------------------------------------------------------------------------------
# wrappers: DataParallel / DistributedDataParallel / torch.compile, in models and in saved keys
# ---------------------------------------------------------------------------------------------------------------


def test_unwrap_model_and_find_encoder():
    from usfm_monai.networks.weights import find_encoder, unwrap_model

    enc = ours()
    model = Wrapper(enc)
    assert find_encoder(enc) == (enc, "")
    assert find_encoder(model) == (enc, "encoder.")
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model), torch.compile(torch.nn.DataParallel(model))):
        assert unwrap_model(wrapped) is model
        assert find_encoder(wrapped) == (enc, "encoder.")
    optimizer = torch.optim.SGD(enc.parameters(), lr=0.1)
    assert unwrap_model(optimizer) is optimizer and unwrap_model(None) is None
    with pytest.raises(TypeError, match="patch_embed and blocks"):
        find_encoder(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("wrap", ["compile", "ddp_compile"])
def test_state_dict_of_a_wrapped_model_loads(wrap):
    src = Wrapper(ours(seed=8))
    randomize_(src, 8)
    wrapped = torch.compile(torch.nn.DataParallel(src) if wrap == "ddp_compile" else src)
    state = wrapped.state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    dst = ours(seed=9)
    report = load_encoder_weights(dst, {"network": state})
    assert report.prefix == "encoder." and report.missing == [] and report.unexpected == []
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_export_of_a_wrapped_model_equals_the_plain_export(tmp_path):
    src = Wrapper(ours(seed=10))
    plain = torch.load(export_encoder(src, tmp_path / "a.pt"), weights_only=True)
    wrapped = torch.load(export_encoder(torch.compile(torch.nn.DataParallel(src)), tmp_path / "b.pt"), weights_only=True)
    assert plain["config"] == wrapped["config"] and set(plain["state_dict"]) == set(wrapped["state_dict"])
    assert all(torch.equal(plain["state_dict"][k], wrapped["state_dict"][k]) for k in plain["state_dict"])
