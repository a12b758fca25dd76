"""Inference inputs: unreadable files are skipped and listed (issue 14 item 9), multi-frame DICOM files become one
item per frame, DICOM files without an ultrasound region are reported."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fixtures.layouts import save, write_corrupt

from usfm_monai.data.inference_inputs import InferenceInputs, inference_items


def test_unreadable_file_is_skipped_listed_and_fails_at_the_end(tmp_path):
    rng = np.random.default_rng(0)
    good = [save(str(tmp_path / f"{n}.png"), rng.integers(0, 256, (8, 8), dtype=np.uint8)) for n in ("a", "c")]
    broken = write_corrupt(str(tmp_path / "b.png"))
    inputs = InferenceInputs(str(tmp_path), task="segmentation")
    assert [i["image"] for i in inputs.items] == good
    assert [p for p, _ in inputs.failures] == [broken]
    with pytest.raises(RuntimeError, match=r"1 input file\(s\) could not be read.*\n  .*b\.png: Cannot read image"):
        inputs.raise_failures()
    with pytest.raises(RuntimeError, match="b.png"):
        inference_items(str(tmp_path), task="segmentation")
    only_broken = tmp_path / "only"
    write_corrupt(str(only_broken / "x.png"))
    with pytest.raises(ValueError, match="none of the 1 image file"):
        InferenceInputs(str(only_broken), task="segmentation")


def test_multiframe_dicom_expands_to_frames_and_missing_region_is_reported(tmp_path, caplog):
    pytest.importorskip("pydicom")
    from fixtures.dicom import write_us_dicom

    loop = np.random.default_rng(1).integers(0, 256, (3, 12, 16), dtype=np.uint8)
    cine = write_us_dicom(str(tmp_path / "cine.dcm"), loop)
    still = write_us_dicom(str(tmp_path / "still.dcm"), loop[0], region=(1, 1, 14, 10))
    with caplog.at_level("WARNING"):
        inputs = InferenceInputs(str(tmp_path), task="segmentation")
    assert inputs.items == [{"image": cine, "frame": k} for k in range(3)] + [{"image": still}]
    assert inputs.no_region == [cine] and "cine.dcm" in caplog.text and "SequenceOfUltrasoundRegions" in caplog.text
    single = InferenceInputs(str(tmp_path), task="segmentation", expand_frames=False)
    assert single.items == [{"image": still}] and "multi-frame DICOM (3 frames)" in single.failures[0][1]


def test_synthetic_inputs_are_generated_when_first_read(tmp_path):
    from usfm_monai.data.datalist import materialize

    target = tmp_path / "synthetic"
    inputs = InferenceInputs("synthetic", task="segmentation", synthetic_dir=str(target),
                             synthetic_kwargs={"num_images": 10, "image_size": 32})
    assert len(inputs.items) == 1 and not target.exists()  # known from the plan; nothing written
    materialize(inputs.items)
    assert inputs.items[0].keys() == {"image"} and os.path.isfile(inputs.items[0]["image"])
    assert inputs.items[:] == list(inputs.items) == inference_items(
        "synthetic", "segmentation", str(target), {"num_images": 10, "image_size": 32})
