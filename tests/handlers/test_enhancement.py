"""Tests for usfm_monai.handlers.enhancement (side-by-side enhancement figures).

Oracles: gray levels worked out by hand (``round(255 * clip(x, 0, 1))``), PNG files written and read back with
PIL (the figure must show the file as PIL sees it, whatever MONAI's ``(W, H)`` loading order), and a constant
image, which any resize must leave constant.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from usfm_monai.handlers.enhancement import SideBySideWriter, load_target_image, side_by_side


def test_side_by_side_gray_levels_gap_and_clipping():
    a = torch.tensor([[0.0, 0.5, 1.0], [0.2, 1.5, -0.3]])  # (X=2, Y=3); out-of-range values are clipped
    b = torch.full((1, 2, 3), 0.25)
    out = side_by_side([a, b], gap=2, gap_value=7, transpose=False)
    expected_a = np.array([[0, 128, 255], [51, 255, 0]], dtype=np.uint8)  # round(255 x): 127.5 -> 128, 51.0
    expected_b = np.full((2, 3), 64, dtype=np.uint8)  # round(63.75)
    expected = np.concatenate([expected_a, np.full((2, 2), 7, np.uint8), expected_b], axis=1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_side_by_side_transpose_and_resize_to_common_size():
    a = np.arange(6, dtype=np.float32).reshape(3, 2) / 10.0  # (X=3, Y=2): width 3, height 2 once upright
    constant = np.full((6, 4), 0.6, dtype=np.float32)  # a different size: resized to (3, 2), stays constant
    out = side_by_side([a, constant], gap=1)
    assert out.shape == (2, 3 + 1 + 3)
    np.testing.assert_array_equal(out[:, :3], np.round(a.T * 255).astype(np.uint8))
    np.testing.assert_array_equal(out[:, 3], [255, 255])
    np.testing.assert_array_equal(out[:, 4:], np.full((2, 3), 153, np.uint8))  # round(0.6 * 255)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(panels=[]), "at least one panel"),
        (dict(panels=[np.zeros((2, 2, 2))]), r"panels\[0\] must be a 2-D image"),
        (dict(panels=[np.zeros((2, 2))], gap=-1), "gap must be"),
        (dict(panels=[np.zeros((2, 2))], gap_value=300), "gap_value must be"),
    ],
    ids=["no-panel", "two-channels", "negative-gap", "gap-value"],
)
def test_side_by_side_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        side_by_side(**kwargs)


def _write_png(path, array):
    Image.fromarray(array).save(path)
    return path


def _engine_with_output(output):
    engine = Engine(lambda e, b: None)
    engine.state.output = output
    return engine


def test_writer_round_trips_orientation_and_looks_up_targets(tmp_path):
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, size=(6, 10), dtype=np.uint8)  # PIL layout (H=6, W=10), not square on purpose
    high = rng.integers(0, 256, size=(6, 10), dtype=np.uint8)
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    low_path = _write_png(str(tmp_path / "low" / "case1.png"), low)
    _write_png(str(tmp_path / "high" / "case1.png"), high)

    image = load_target_image(low_path)  # the bundle's loading: MONAI reads the PNG as (1, W, H)
    assert tuple(image.shape) == (1, 10, 6)
    image = MetaTensor(image, meta={"filename_or_obj": low_path})
    pred = 1.0 - image  # any image works; an inverted one is easy to check
    writer = SideBySideWriter(output_dir=str(tmp_path / "figs"), target_dir=str(tmp_path / "high"), gap=3)
    writer(_engine_with_output([{"image": image, "pred": pred, "label": None}]))

    figure = np.array(Image.open(tmp_path / "figs" / "case1_side_by_side.png"))
    assert figure.shape == (6, 3 * 10 + 2 * 3)
    np.testing.assert_array_equal(figure[:, :10], low)  # shown as the file is, not transposed
    np.testing.assert_array_equal(figure[:, 13:23], 255 - low)
    np.testing.assert_array_equal(figure[:, 26:], high)
    np.testing.assert_array_equal(figure[:, 10:13], 255)


def test_writer_uses_label_from_output_and_decollates_dict_output(tmp_path):
    names = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    image = MetaTensor(torch.zeros(2, 1, 4, 4), meta={"filename_or_obj": names})
    image.is_batch = True
    pred = torch.full((2, 1, 4, 4), 0.5)
    label = torch.ones(2, 1, 4, 4)
    writer = SideBySideWriter(output_dir=str(tmp_path / "out"), gap=0, postfix="cmp")
    writer(_engine_with_output({"image": image, "pred": pred, "label": label}))  # decollate=False output
    for stem in ("a", "b"):
        figure = np.array(Image.open(tmp_path / "out" / f"{stem}_cmp.png"))
        np.testing.assert_array_equal(figure, np.concatenate([np.zeros((4, 4)), np.full((4, 4), 128),
                                                              np.full((4, 4), 255)], axis=1).astype(np.uint8))


def test_writer_without_target_writes_two_panels_and_numbers_unnamed_images(tmp_path):
    writer = SideBySideWriter(output_dir=str(tmp_path), target_dir=str(tmp_path / "nowhere"), gap=2)
    item = {"image": torch.zeros(1, 5, 3), "pred": torch.ones(1, 5, 3)}
    writer(_engine_with_output([item, item]))
    assert sorted(os.listdir(tmp_path)) == ["image_00000_side_by_side.png", "image_00001_side_by_side.png"]
    figure = np.array(Image.open(tmp_path / "image_00001_side_by_side.png"))
    assert figure.shape == (3, 5 + 2 + 5)
    np.testing.assert_array_equal(figure[:, 7:], 255)


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="postfix"):
        SideBySideWriter(output_dir=str(tmp_path), postfix="")
    with pytest.raises(ValueError, match="gap"):
        SideBySideWriter(output_dir=str(tmp_path), gap=-2)
    writer = SideBySideWriter(output_dir=str(tmp_path))
    with pytest.raises(KeyError, match="'pred'"):
        writer(_engine_with_output([{"image": torch.zeros(1, 4, 4)}]))
    with pytest.raises(TypeError, match="dict or a list of dicts"):
        writer(_engine_with_output(torch.zeros(1)))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_target_image(str(tmp_path / "missing.png"))
