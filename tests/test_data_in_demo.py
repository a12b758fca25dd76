"""scripts/data_in_demo.py: the official split, DICOM cine inference and frame sampling shown in the README."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("pydicom")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "data_in_demo.py"


def test_data_in_demo_runs_every_step(tmp_path):
    spec = importlib.util.spec_from_file_location("data_in_demo", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    # each step asserts its own outcome (official test folder kept, one full-size mask per frame, ...)
    assert demo.official_split(tmp_path) == {"training": 48, "validation": 7, "test": 15}
    assert demo.dicom_cine_inference(tmp_path) == {"frames": 4, "masks": 4, "shape": [72, 96]}
    totals = demo.frame_sampling(tmp_path)
    assert (totals["loops"], totals["read"], totals["kept"], totals["near_duplicates"]) == (5, 90, 30, 60)
