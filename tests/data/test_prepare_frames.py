"""prepare_frames: cine loops (multi-frame DICOM) -> PNG frames + pretraining datalist; stride, near-duplicates,
patient-level split."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom")

from fixtures.dicom import write_us_dicom  # noqa: E402
from usfm_monai.data.prepare.frames import frame_difference, prepare_frames, sample_frames  # noqa: E402


def _loop(seed: int, segments=(3, 1, 2)) -> tuple[np.ndarray, int]:
    """Frames made of still segments: segment ``s`` repeats one random picture ``segments[s]`` times."""
    rng = np.random.default_rng(seed)
    frames = [f for n in segments for f in [rng.integers(0, 256, (24, 32), dtype=np.uint8)] * n]
    return np.stack(frames), len(segments)


def test_sample_frames_drops_exact_stills_and_honors_stride():
    frames, n_segments = _loop(0)
    kept, stats = sample_frames(frames, stride=1, min_difference=0.02)
    assert kept == [0, 3, 4]  # first frame of each still segment (segments of 3, 1, 2 frames)
    assert stats == {"read": 6, "considered": 6, "kept": n_segments, "near_duplicates": 3}
    kept, stats = sample_frames(frames, stride=2, min_difference=0.0)
    assert kept == [0, 2, 4] and stats["near_duplicates"] == 0
    # the difference is the mean |a - b| at 64x64 in [0, 1]: a frame against its inverse (all values 0 vs 255)
    black = np.zeros((24, 32), np.uint8)
    assert frame_difference(black, black + 255) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="stride"):
        sample_frames(frames, stride=0)


def test_prepare_frames_datalist_stats_and_patient_split(tmp_path):
    root = tmp_path / "cine"
    loops = {}
    for i in range(6):
        organ = "heart" if i < 4 else "liver"
        frames, _ = _loop(i)
        # patient p{i//2}: two loops of the same patient must share a split
        path = write_us_dicom(str(root / organ / f"p{i // 2}" / f"loop{i}.dcm"), frames, patient_id=f"P{i // 2}",
                              region=(2, 1, 29, 22) if i == 0 else None)
        loops[f"{organ}/p{i // 2}/loop{i}"] = frames
    out = prepare_frames(str(root), str(tmp_path / "frames.json"), val_fraction=0.34, seed=1)
    with open(out) as f:
        data = json.load(f)
    meta = data["metadata"]
    totals = meta["frame_sampling"]["totals"]
    assert totals == {"loops": 6, "read": 36, "considered": 36, "kept": 18, "near_duplicates": 18}
    items = data["training"] + data["validation"]
    assert len(items) == 18 and {i["organ"] for i in items} == {"heart", "liver"}
    base = tmp_path / "frames_frames"
    for item in items:  # the PNG holds the frame (cropped to the region for loop0)
        png = np.asarray(Image.open(base / item["image"]))
        frame = loops[item["loop"]][item["frame"]]
        np.testing.assert_array_equal(png, frame[1:23, 2:30] if item["loop"].endswith("loop0") else frame)
    split_of = {}
    for section in ("training", "validation"):
        for item in data[section]:
            assert split_of.setdefault(item["patient"], section) == section  # a patient never straddles
    assert set(split_of.values()) == {"training", "validation"}
    assert meta["no_ultrasound_region"] == [k for k in sorted(loops) if not k.endswith("loop0")]
    with pytest.raises(FileNotFoundError, match="expected <root>/<organ>"):
        prepare_frames(str(tmp_path / "empty"), str(tmp_path / "x.json"))
