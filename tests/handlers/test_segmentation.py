"""Tests of usfm_monai.handlers.segmentation: overlay pixels by hand, file names and orientation against PIL."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from matplotlib import colormaps
from monai.data import MetaTensor
from monai.transforms import LoadImage, SaveImage
from PIL import Image

from usfm_monai.handlers.segmentation import SegmentationOverlay, overlay_mask


def _expected(gray: np.ndarray, mask: np.ndarray, alpha: float, color: np.ndarray) -> np.ndarray:
    """Hand-worked blend: gray everywhere, ``(1 - alpha) gray + alpha color`` on the mask; (3, H, W) uint8."""
    rgb = np.repeat(gray[None], 3, axis=0).astype(np.float64)
    on = mask.astype(bool)
    for c in range(3):
        rgb[c][on] = (1 - alpha) * gray[on] + alpha * color[c]
    return np.floor(rgb * 255.0 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_binary_overlay_matches_hand_blend(as_tensor):
    rng = np.random.default_rng(0)
    gray = rng.random((7, 5)).astype(np.float32)
    mask = np.zeros((7, 5), dtype=np.float32)
    mask[2:5, 1:4] = 1
    image_in, mask_in = (torch.from_numpy(gray)[None], torch.from_numpy(mask)) if as_tensor else (gray[None], mask)
    out = overlay_mask(image_in, mask_in, alpha=0.4, cmap="hsv")
    red = np.asarray(colormaps["hsv"](1.0)[:3])
    assert out.dtype == np.uint8 and out.shape == (3, 7, 5)
    np.testing.assert_allclose(out.astype(int), _expected(gray, mask, 0.4, red).astype(int), atol=1)
    # background pixels keep the exact gray level
    np.testing.assert_array_equal(out[:, 0, 0], np.floor(np.float64(gray[0, 0]) * 255 + 0.5).astype(np.uint8))


def test_multiclass_colors_follow_the_colormap():
    gray = np.full((4, 4), 0.5, dtype=np.float32)
    mask = np.array([[0, 1, 2, 2]] * 4, dtype=np.float32)
    out = overlay_mask(gray, mask, alpha=1.0, cmap="viridis", num_classes=3)
    for k in (1, 2):
        color = np.floor(np.asarray(colormaps["viridis"](k / 2)[:3]) * 255 + 0.5)
        np.testing.assert_allclose(out[:, 0, k + (k == 2)].astype(float), color, atol=1)
    np.testing.assert_array_equal(out[:, 0, 0], [128, 128, 128])


def test_alpha_zero_is_identity_and_values_are_clipped():
    gray = np.array([[-0.5, 0.25], [1.5, 1.0]], dtype=np.float32)
    out = overlay_mask(gray, np.ones((2, 2)), alpha=0.0)
    expected = np.floor(np.clip(gray, 0, 1) * 255 + 0.5).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[c], expected)


@pytest.mark.parametrize(
    "image, mask, kwargs, match",
    [
        (np.zeros((1, 4, 4)), np.zeros((4, 4)), {"alpha": 1.5}, "alpha"),
        (np.zeros((1, 4, 4)), np.zeros((4, 4)), {"num_classes": 1}, "num_classes"),
        (np.zeros((1, 4, 4)), np.zeros((4, 5)), {}, "spatial size"),
        (np.zeros((2, 4, 4)), np.zeros((4, 4)), {}, "1 or 3 channels"),
        (np.zeros((1, 4, 4)), np.full((4, 4), 255.0), {}, "class indices"),
        (np.zeros((1, 1, 4, 4)), np.zeros((4, 4)), {}, "image must have shape"),
    ],
    ids=["alpha", "num_classes", "size", "channels", "values", "ndim"],
)
def test_overlay_bad_input(image, mask, kwargs, match):
    with pytest.raises(ValueError, match=match):
        overlay_mask(image, mask, **kwargs)


def test_handler_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        SegmentationOverlay("/tmp/unused", alpha=-0.1)
    with pytest.raises(ValueError, match="mask_scale"):
        SegmentationOverlay("/tmp/unused", mask_scale=0)


def _engine_with_output(output) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.output = output
    return engine


def test_handler_writes_overlays_in_the_orientation_of_the_input_file(tmp_path):
    # a non-square PNG: any transpose or flip in the chain would change its size or its pixels
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)  # PIL/numpy layout (H, W)
    src_path = str(tmp_path / "scan 01.png")
    Image.fromarray(src).save(src_path)
    image = LoadImage(image_only=True, ensure_channel_first=True)(src_path) / 255.0  # MONAI layout (1, W, H)
    mask = torch.zeros(image.shape[1:])  # (W, H), no channel axis, as MONAI Label wants it
    mask[3:9, 2:6] = 255  # stored as 0/255
    mask = MetaTensor(mask, meta=dict(image.meta))
    # the reference mask file, written the way inference.json writes it
    SaveImage(output_dir=str(tmp_path / "masks"), output_postfix="seg", output_ext=".png", output_dtype=np.uint8,
              separate_folder=False, print_log=False)(mask.to(torch.uint8))

    out_dir = tmp_path / "overlays"
    handler = SegmentationOverlay(str(out_dir), mask_scale=255, alpha=0.5)
    engine = _engine_with_output([{"image": image, "pred": mask}])
    handler.attach(engine)
    handler(engine)

    overlay = np.asarray(Image.open(out_dir / "scan 01_overlay.png"))
    saved_mask = np.asarray(Image.open(tmp_path / "masks" / "scan 01_seg.png")) > 0
    assert overlay.shape == (12, 20, 3)
    assert saved_mask.shape == (12, 20) and saved_mask.sum() == 24
    # gray where the mask file is 0: exactly the source pixels; colored (red-dominant) exactly where it is set
    for c in range(3):
        np.testing.assert_array_equal(overlay[..., c][~saved_mask], src[~saved_mask])
    red = np.asarray(colormaps["hsv"](1.0)[:3]) * 255
    np.testing.assert_allclose(overlay[saved_mask].astype(float), 0.5 * src[saved_mask][:, None] + 0.5 * red, atol=1)


def test_handler_numbers_items_without_file_names_and_needs_its_keys(tmp_path):
    image, pred = torch.rand(1, 6, 6), torch.zeros(1, 6, 6)
    handler = SegmentationOverlay(str(tmp_path), output_postfix="ov")
    handler(_engine_with_output([{"image": image, "pred": pred}, {"image": image, "pred": pred}]))
    assert sorted(os.listdir(tmp_path)) == ["image_00000_ov.png", "image_00001_ov.png"]
    with pytest.raises(KeyError, match="'pred'"):
        handler(_engine_with_output([{"image": image, "label": pred}]))
