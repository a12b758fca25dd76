"""Tests of bundles/seg_tn3k: metadata, standard properties, and a tiny train -> evaluate -> infer run."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

BUNDLE = "seg_tn3k"


def test_verify_metadata(bundle):
    meta = bundle.verify_metadata()  # raises when invalid
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {"0": "background", "1": "lesion"}
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"


@pytest.mark.parametrize(
    "workflow_type, files", [("train", ("train.json", "quick.json")), ("infer", ("inference.json",))]
)
def test_standard_properties(tmp_path, workflow_type, files, bundle):
    workflow = bundle.workflow(files, workflow_type, tmp_path, encoder_size="tiny", **bundle.tiny())
    assert not workflow.check_properties()


def test_missing_pretrained_weights_fail_clearly(tmp_path, bundle):
    missing = os.path.join(str(tmp_path), "models", "usfm_encoder.pt")
    parser = bundle.parser(["train.json"], bundle_root=str(tmp_path), encoder_size="tiny", image_size=64,
                           pretrained=missing)
    parser.get_parsed_content("network_def")  # building the network reads no file
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("train#handlers")  # the weights loader checks the file when it is built
    cause = info.value.__cause__
    assert isinstance(cause, FileNotFoundError)
    assert missing in str(cause)


def test_overlay_switch_rejects_lower_case_string(tmp_path, bundle):
    settings = {"bundle_root": str(tmp_path), "encoder_size": "tiny", "image_size": 64}
    parser = bundle.parser(["inference.json"], **settings, save_overlays=False)
    names = [type(h).__name__ for h in parser.get_parsed_content("handlers")]
    assert "SegmentationOverlay" not in names and "CheckpointLoader" in names
    parser = bundle.parser(["inference.json"], **settings, save_overlays="false")
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error of a "$" expression
        parser.get_parsed_content("handlers")
    assert isinstance(info.value.__cause__, TypeError) and "save_overlays" in str(info.value.__cause__)


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_evaluate_infer_end_to_end(tmp_path, bundle):
    root = tmp_path / "bundle"
    tiny = bundle.tiny()
    bundle.run(["train.json", "quick.json"], root, **tiny, epochs=1)
    assert os.path.isfile(root / "models" / "model.pt") and os.path.isfile(root / "models" / "checkpoint_last.pt")
    import torch

    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert set(state) == {"model"} and any(k.startswith("decode_head.") for k in state["model"])

    # evaluate on the test split: per-image CSV from MetricsSaver and the summary JSON must agree
    bundle.run(["train.json", "quick.json", "evaluate.json"], root, **tiny)
    eval_dir = root / "eval" / "test"
    with open(root / "data" / "synthetic_segmentation" / "datalist.json") as f:
        test_items = json.load(f)["test"]
    with open(eval_dir / "summary.json") as f:
        summary = json.load(f)["metrics"]
    assert set(summary) == {"dsc", "hd95", "iou", "acc", "sen"}
    for name in ("dsc", "iou", "acc", "sen"):
        values = np.array([float(r["class0"]) for r in _rows(eval_dir / f"{name}_raw.csv")])
        assert len(values) == len(test_items) and np.all((values >= 0) & (values <= 1))
        assert summary[name]["n"] == len(test_items)
        assert summary[name]["mean"] == pytest.approx(values.mean(), abs=1e-6)
    dsc = np.array([float(r["class0"]) for r in _rows(eval_dir / "dsc_raw.csv")])
    iou = np.array([float(r["class0"]) for r in _rows(eval_dir / "iou_raw.csv")])
    np.testing.assert_allclose(iou, dsc / (2 - dsc), atol=1e-5)  # IoU = DSC / (2 - DSC) for every image
    assert len(os.listdir(eval_dir / "overlays")) == len(test_items)

    # inference on a folder holding a non-square grayscale PNG and an RGB JPEG. A smooth, left-right asymmetric
    # picture survives the 64 px round trip, so the overlay's gray level identifies the orientation.
    rows, cols = np.mgrid[0:96, 0:80].astype(float)
    gray = 255 * (0.6 * cols / 79 + 0.4 * np.exp(-((rows - 30) ** 2 + (cols - 20) ** 2) / 300))
    gray = gray.astype(np.uint8)  # (96, 80): H != W
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(gray).save(inputs / "case_a.png")
    Image.fromarray(np.repeat(gray[:70, :][..., None], 3, axis=-1)).save(inputs / "case_b.jpg", quality=95)
    out = tmp_path / "pred"
    bundle.run(["inference.json", "quick.json"], root, **tiny, dataset_dir=inputs, output_dir=out)
    for stem, shape in (("case_a", (96, 80)), ("case_b", (70, 80))):
        mask = Image.open(out / f"{stem}_seg.png")
        assert mask.mode == "L" and mask.size[::-1] == shape
        assert set(np.unique(np.asarray(mask))) <= {0, 1}
        overlay = np.asarray(Image.open(out / "overlays" / f"{stem}_overlay.png")).astype(float)
        assert overlay.shape == (*shape, 3)
        # the overlay's gray background is the input image brought back through Invertd: same orientation
        source = gray[: shape[0]].astype(float)
        background = np.asarray(mask) == 0
        assert background.any()
        corr = np.corrcoef(overlay[..., 1][background], source[background])[0, 1]
        flipped = np.corrcoef(overlay[..., 1][background], source[:, ::-1][background])[0, 1]
        assert corr > 0.95 and flipped < 0.5
        # colored (lesion) pixels are exactly the mask's foreground
        colored = np.abs(overlay[..., 0] - overlay[..., 1]) > 2
        np.testing.assert_array_equal(colored, ~background)
