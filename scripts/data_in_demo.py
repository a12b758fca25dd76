#!/usr/bin/env python
"""Data in, as users have it: the three paths of the data-input work shown end to end on generated files.

1. an official split kept: BUSI-style class folders under ``train/`` and ``test/`` -> ``usfm-monai
   prepare_class_folders`` (validation drawn from ``train/`` only, stratified and seeded);
2. a multi-frame ultrasound DICOM (cine loop with a sequence-of-ultrasound-regions header) segmented by the
   ``seg_tn3k`` bundle's ``inference.json``: one mask per frame, in the frame's geometry;
3. ``usfm-monai prepare_frames`` on generated loops: frames read / kept / near-duplicates dropped.

Nothing is downloaded; the DICOM files are written with pydicom (the tests' writer). The network of step 2 is
freshly initialized (the check is about geometry, not accuracy). Prints one summary per step; exit status 0 when
every step did what it should.

Usage::

    python scripts/data_in_demo.py [--work_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures.dicom import write_us_dicom  # noqa: E402  (the tests' DICOM writer)


def official_split(work: Path) -> dict:
    from usfm_monai.data.prepare import prepare_class_folders

    rng = np.random.default_rng(0)
    root = work / "busi_official"
    counts = {"train": {"benign": 30, "malignant": 15, "normal": 10}, "test": {"benign": 8, "malignant": 4, "normal": 3}}
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(root / split / cls / f"{cls}_{i}.png")
    out = prepare_class_folders(str(root), str(work / "busi_official.json"), val_fraction=0.1, test_fraction=0.2)
    datalist = json.loads(Path(out).read_text())
    summary = {s: len(datalist[s]) for s in ("training", "validation", "test")}
    test_from_test = all(it["image"].startswith("test/") for it in datalist["test"])
    val_from_train = all(it["image"].startswith("train/") for it in datalist["validation"])
    print(f"[1] official split: {out}\n    items {summary}; test = the official test folder: {test_from_test}; "
          f"validation drawn from train/ only: {val_from_train}; metadata {datalist.get('metadata', {}).get('split')}")
    assert summary["test"] == 15 and test_from_test and val_from_train
    return summary


def dicom_cine_inference(work: Path) -> dict:
    import torch

    from usfm_monai.networks import USFMSegmenter

    rng = np.random.default_rng(1)
    bundle_root = work / "seg_bundle"
    (bundle_root / "models").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = USFMSegmenter(num_classes=2, size="tiny", img_size=64, in_chans=1, aux_head=True)
    torch.save({"model": net.state_dict()}, bundle_root / "models" / "model.pt")
    cine = work / "cine_in"
    frames, height, width = 4, 72, 96
    region = (8, 6, 87, 65)  # x0, y0, x1, y1: the imaged area; the rest is the scanner's frame
    write_us_dicom(str(cine / "loop.dcm"), rng.integers(0, 256, (frames, height, width), dtype=np.uint8), region=region)
    out = work / "cine_pred"
    configs = "[" + ",".join(repr(str(REPO / "bundles" / "seg_tn3k" / "configs" / n)) for n in ("inference.json", "quick.json")) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle_root),
           "--image_size", "64", "--num_workers", "0", "--batch_size", "1", "--dataset_dir", str(cine),
           "--output_dir", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stdout + proc.stderr)[-3000:])
    masks = sorted(out.glob("loop_seg_*.png"))
    shapes = {np.asarray(Image.open(m)).shape for m in masks}
    x0, y0, x1, y1 = region
    outside_clean = True
    for m in masks:
        mask = np.asarray(Image.open(m))
        outside = np.ones_like(mask, dtype=bool)
        outside[y0 : y1 + 1, x0 : x1 + 1] = False
        outside_clean &= not mask[outside].any()
    print(f"[2] DICOM cine inference: {frames} frames of {height}x{width} (region {region}) -> {len(masks)} masks "
          f"{[m.name for m in masks]}, shapes {sorted(shapes)}, background outside the region: {outside_clean}")
    assert len(masks) == frames and shapes == {(height, width)} and outside_clean
    return {"frames": frames, "masks": len(masks), "shape": [height, width]}


def frame_sampling(work: Path) -> dict:
    from usfm_monai.data.prepare import prepare_frames

    rng = np.random.default_rng(2)
    root = work / "loops"
    # per loop: 6 distinct frames, each shown 3 times in a row (a slow probe sweep), plus sensor noise of +-1 level
    for organ, patients in (("thyroid", ("P1", "P2", "P3")), ("liver", ("P4", "P5"))):
        for p in patients:
            distinct = rng.integers(0, 256, (6, 48, 64)).astype(np.int16)
            loop = np.repeat(distinct, 3, axis=0) + rng.integers(-1, 2, (18, 48, 64))
            write_us_dicom(str(root / organ / p / "loop.dcm"), np.clip(loop, 0, 255).astype(np.uint8), patient_id=p)
    out = prepare_frames(str(root), str(work / "frames.json"), stride=1, min_difference=0.02)
    sampling = json.loads(Path(out).read_text())["metadata"]["frame_sampling"]
    totals = sampling["totals"]
    print(f"[3] prepare_frames: {out}\n    {totals['loops']} loops: frames read {totals['read']}, kept "
          f"{totals['kept']}, near-duplicates dropped {totals['near_duplicates']} (stride {sampling['stride']}, "
          f"min_difference {sampling['min_difference']})")
    # 5 loops of 6 distinct frames each shown 3 times: 90 read, the 60 repeats dropped
    assert (totals["read"], totals["kept"], totals["near_duplicates"]) == (90, 30, 60), totals
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="usfm_data_in_"))
    work.mkdir(parents=True, exist_ok=True)
    official_split(work)
    dicom_cine_inference(work)
    frame_sampling(work)
    print(f"all steps passed; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
