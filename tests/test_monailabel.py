"""Tests for scripts/monailabel_roundtrip.py: the answer checks (always) and the real server round trip (opt-in).

The round trip starts a real MONAI Label 0.8.5 server in its own virtual environment; it takes about 75 s on two
cores once the venv exists (several minutes to create it), so it only runs with ``USFM_RUN_MONAILABEL=1`` (CI runs
``python scripts/monailabel_roundtrip.py --check`` as its own step instead). It skips cleanly when the BUSI image is
absent or ``USFM_SKIP_MONAILABEL=1``. Oracles: hand-made answers with known defects; the bundle's own pipeline run
eagerly in-process (inside the script) for the served masks and probabilities.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "monailabel_roundtrip.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("monailabel_roundtrip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ml = _load_script()


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def input_png(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.zeros((7, 11), dtype=np.uint8)).save(path)  # PIL size (W, H) = (11, 7)
    return path


def test_check_segmentation_accepts_matching_mask(input_png):
    mask = np.zeros((7, 11), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    note = ml.check_segmentation(_png_bytes(mask), input_png, {"lesion": 1}, expected=mask.copy())
    assert "(11, 7)" in note and "100.00%" in note


@pytest.mark.parametrize(
    "mask, expected, match",
    [
        (np.zeros((11, 7), np.uint8), None, r"mask is \(7, 11\).*input image is \(11, 7\)"),  # transposed
        (np.full((7, 11), 255, np.uint8), None, r"values \[255\]"),  # scaled, not class indices
        (np.zeros((7, 11), np.uint8), np.ones((7, 11), np.uint8), "agrees with the eager bundle on only 0.00%"),
    ],
    ids=["transposed", "not-indices", "disagrees"],
)
def test_check_segmentation_rejects(input_png, mask, expected, match):
    with pytest.raises(ValueError, match=match):
        ml.check_segmentation(_png_bytes(mask), input_png, {"lesion": 1}, expected=expected)


def test_check_segmentation_rejects_non_png(input_png, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((7, 11), np.uint8)).save(buf, format="TIFF")
    with pytest.raises(ValueError, match="not a PNG"):
        ml.check_segmentation(buf.getvalue(), input_png, {"lesion": 1})


def test_check_segmentation_of_a_region_dicom(input_png, tmp_path):
    pytest.importorskip("pydicom")
    big = tmp_path / "big.png"
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(big)
    dcm, region = ml.write_region_dicom(big, tmp_path / "image.dcm")
    assert ml.image_size(dcm) == (30, 20) and region == (3, 2, 26, 17)  # (x0, y0, x1, y1), 10 % margins
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 5:20] = 1
    assert "background outside the region" in ml.check_segmentation(_png_bytes(mask), dcm, {"lesion": 1}, None, region)
    mask[0, 29] = 1  # one foreground pixel in the border the region header excludes
    with pytest.raises(ValueError, match=r"1 foreground pixels outside the ultrasound region"):
        ml.check_segmentation(_png_bytes(mask), dcm, {"lesion": 1}, None, region)
    with pytest.raises(ValueError, match=r"input image is \(30, 20\)"):
        ml.check_segmentation(_png_bytes(mask.T.copy()), dcm, {"lesion": 1})


LABELS = {"benign": 0, "malignant": 1, "normal": 2}


def _cls_answer(scores, names=("benign", "malignant", "normal")) -> bytes:
    prediction = [{"idx": i, "label": n, "score": s} for i, (n, s) in enumerate(zip(names, scores))]
    return json.dumps({"prediction": prediction}).encode()


def test_check_classification_accepts_probabilities():
    note = ml.check_classification(_cls_answer([0.2, 0.5, 0.3]), LABELS, expected=[0.2, 0.5 + 1e-4, 0.3 - 1e-4])
    assert "malignant=0.500" in note and "1.0e-04" in note


@pytest.mark.parametrize(
    "answer, expected, match",
    [
        (_cls_answer([0.5, 0.5]), None, "expected 3 classes"),
        (_cls_answer([0.2, 0.5, 0.3], names=("a", "b", "c")), None, "channel_def"),
        (_cls_answer([2.0, -0.5, -0.5]), None, "not probabilities"),
        (_cls_answer([0.2, 0.5, 0.4]), None, "not probabilities"),
        (_cls_answer([0.2, 0.5, 0.3]), [0.3, 0.4, 0.3], "differ from the eager"),
    ],
    ids=["count", "names", "range", "sum", "eager"],
)
def test_check_classification_rejects(answer, expected, match):
    with pytest.raises(ValueError, match=match):
        ml.check_classification(answer, LABELS, expected=expected)


def test_served_config_must_compose_postprocessing():
    good = {"preprocessing": {"_target_": "Compose", "transforms": []}, "postprocessing": [{"_target_": "X"}]}
    ml._check_served_config(good, "b")
    bad = dict(good, postprocessing={"_target_": "Activationsd", "keys": "pred"})
    with pytest.raises(ValueError, match=r"bundle 'cls'.*'postprocessing' must be a Compose.*'Activationsd'"):
        ml._check_served_config(bad, "cls")


def test_patch_app_for_classification(tmp_path):
    main_py = tmp_path / "main.py"
    main_py.write_text("        for n, b in self.models.items():\n                i = BundleInferTask(b, self.conf)\n")
    ml._patch_app_for_classification(main_py)
    # the patched argument switches Restored off exactly for classification model names
    expr = main_py.read_text().split("add_post_restore=")[1].rsplit(")", 1)[0]
    assert eval(expr, {"n": "usfm_busi_classification"}) is False
    assert eval(expr, {"n": "usfm_tn3k_segmentation"}) is True
    with pytest.raises(ValueError, match="expected the line"):
        ml._patch_app_for_classification(main_py)  # already patched: the sample line is gone


def test_free_port_is_bindable():
    import socket

    port = ml.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536


@pytest.mark.monailabel
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("USFM_RUN_MONAILABEL") != "1", reason="set USFM_RUN_MONAILABEL=1 to run")
@pytest.mark.skipif(os.environ.get("USFM_SKIP_MONAILABEL") == "1", reason="USFM_SKIP_MONAILABEL=1")
def test_monailabel_server_roundtrip():
    image = ml.default_image()
    if not image.is_file():
        pytest.skip(f"BUSI image not found: {image}")
    out = ml.run_roundtrip(image, repeats=2)
    seg = out["results"]["usfm_tn3k_segmentation"]
    cls = out["results"]["usfm_busi_classification"]
    assert out["info"]["version"] == "0.8.5"
    assert seg["type"] == "segmentation" and seg["labels"] == {"lesion": 1}
    assert cls["type"] == "classification" and cls["labels"] == LABELS
    with Image.open(image) as im:
        assert f"mask {im.size}" in seg["check"]
    assert all(t > 0 for t in seg["seconds"] + cls["seconds"])
