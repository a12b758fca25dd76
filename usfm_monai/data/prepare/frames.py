"""Pretraining frames from ultrasound cine loops (multi-frame DICOM), for the organ-balanced sampler (eq. 1).

Layout read::

    <root>/<organ>/**/<loop>.dcm     ->   <output_dir>/<organ>/.../<loop>/frame_0003.png
                                          {"image": ..., "organ", "patient", "loop", "frame"}

Each loop is read (:func:`usfm_monai.data.dicom.read_dicom_frames`, cropped to its ultrasound region when the
header has one), every ``stride``-th frame is considered, and a frame is dropped as a near-duplicate when it
differs from the last kept frame of its loop by less than ``min_difference``: the mean absolute difference of
the two frames downsampled to 64 x 64 (area average), in ``[0, 1]`` grey levels. Cine loops hold long still
stretches whose frames would otherwise weigh an organ many times over.

The validation split is drawn by patient (``PatientID`` of the header, else the loop's first folder below the
organ, else the loop itself), stratified by organ, seeded: all frames of a loop, and all loops of a patient, stay
in one split. The datalist's ``metadata.frame_sampling`` records the counts (frames read / considered / kept /
near-duplicates dropped).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.dicom import DICOM_EXTENSIONS, read_dicom_header, read_dicom_frames, ultrasound_region
from usfm_monai.data.prepare.common import (
    PreparationReport,
    check_ratios,
    natural_key,
    split_counts,
    stratified_group_split,
)

__all__ = ["frame_difference", "sample_frames", "prepare_frames"]

_NAMES = ("training", "validation")


def frame_difference(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """Mean absolute difference of two ``(H, W)`` uint8 frames after area-downsampling to ``size x size``, in [0, 1]."""

    def small(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(x).resize((size, size), Image.BOX), dtype=np.float32) / 255.0

    return float(np.mean(np.abs(small(a) - small(b))))


def sample_frames(frames: np.ndarray, stride: int = 1, min_difference: float = 0.02) -> tuple[list[int], dict]:
    """Pick frames of a loop: every ``stride``-th, minus near-duplicates of the last kept frame.

    Args:
        frames: ``(F, H, W)`` uint8.
        stride: consider frames ``0, stride, 2 * stride, ...`` (>= 1).
        min_difference: a considered frame is kept when :func:`frame_difference` to the last kept frame is at
            least this (0 keeps every considered frame).

    Returns:
        ``(indices, stats)``: kept frame indices; ``{"read", "considered", "kept", "near_duplicates"}``.

    Raises:
        ValueError: ``stride < 1`` or ``min_difference < 0``.
    """
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}.")
    if min_difference < 0:
        raise ValueError(f"min_difference must be >= 0, got {min_difference}.")
    considered = list(range(0, frames.shape[0], int(stride)))
    kept: list[int] = []
    for k in considered:
        if not kept or min_difference == 0 or frame_difference(frames[kept[-1]], frames[k]) >= min_difference:
            kept.append(k)
    stats = {"read": int(frames.shape[0]), "considered": len(considered), "kept": len(kept),
             "near_duplicates": len(considered) - len(kept)}
    return kept, stats


def _list_loops(root: str) -> list[tuple[str, str]]:
    loops = []
    for organ in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")):
        for dirpath, dirs, files in os.walk(os.path.join(root, organ)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if not name.startswith(".") and name.lower().endswith(DICOM_EXTENSIONS):
                    loops.append((organ, os.path.join(dirpath, name)))
    return sorted(loops, key=lambda x: natural_key(os.path.relpath(x[1], root)))


def prepare_frames(
    root: str,
    output: str,
    output_dir: str | None = None,
    stride: int = 1,
    min_difference: float = 0.02,
    val_fraction: float = 0.05,
    seed: int = 0,
    crop_region: bool = True,
) -> str:
    """Extract frames of cine loops (``<root>/<organ>/**/*.dcm``) as PNGs and write a pretraining datalist.

    Args:
        root: folder with one subfolder per organ holding DICOM files (single- or multi-frame).
        output: the datalist JSON to write.
        output_dir: where frames are written, default ``<folder of output>/<output stem>_frames``; it is the
            ``dataset_dir`` the datalist's paths are relative to.
        stride: keep every ``stride``-th frame before the near-duplicate check.
        min_difference: near-duplicate threshold (mean absolute difference at 64 x 64, grey levels / 255).
        val_fraction: fraction of each organ's frames for ``validation``, drawn by patient.
        seed: split seed, recorded in the metadata.
        crop_region: crop frames to the DICOM ultrasound region when the header has one.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: no DICOM file under ``<root>/<organ>/``, or none readable.
        ValueError: bad ``stride``, ``min_difference`` or ``val_fraction``.
    """
    ratios = check_ratios((1.0 - val_fraction, val_fraction), _NAMES)
    root, output = os.path.abspath(root), os.path.abspath(output)
    stem = os.path.splitext(os.path.basename(output))[0]
    output_dir = os.path.abspath(output_dir) if output_dir else os.path.join(os.path.dirname(output), f"{stem}_frames")
    loops = _list_loops(root) if os.path.isdir(root) else []
    if not loops:
        raise FileNotFoundError(f"No DICOM files found in {root} (expected <root>/<organ>/**/*.dcm).")
    report = PreparationReport()
    records, per_loop, no_region = [], [], []
    totals = {"loops": 0, "read": 0, "considered": 0, "kept": 0, "near_duplicates": 0}
    for organ, path in loops:
        rel = os.path.relpath(path, os.path.join(root, organ))
        loop_id = f"{organ}/{os.path.splitext(rel)[0]}".replace(os.sep, "/")
        try:
            header = read_dicom_header(path)
            if crop_region and ultrasound_region(path, header) is None:
                no_region.append(loop_id)
            frames = read_dicom_frames(path, crop_region=crop_region)
        except ValueError as e:
            report.skip(path, str(e))
            continue
        kept, stats = sample_frames(frames, stride, min_difference)
        parts = rel.split(os.sep)
        patient = str(getattr(header, "PatientID", "") or "") or (f"{organ}/{parts[0]}" if len(parts) > 1 else loop_id)
        for k in kept:
            image = os.path.join(output_dir, loop_id, f"frame_{k:04d}.png")
            os.makedirs(os.path.dirname(image), exist_ok=True)
            Image.fromarray(frames[k]).save(image)
            records.append({"path": image, "organ": organ, "patient": patient, "loop": loop_id, "frame": k})
        per_loop.append(dict(loop=loop_id, patient=patient, **stats))
        totals["loops"] += 1
        for key in stats:
            totals[key] += stats[key]
    if not records:
        raise FileNotFoundError(f"None of the {len(loops)} DICOM file(s) under {root} could be read.")
    # split whole patients: one group per patient, stratified by organ (a patient with several organs is its own stratum)
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["patient"], []).append(rec)
    strata = {pid: ("+".join(sorted({r["organ"] for r in recs})), len(recs)) for pid, recs in groups.items()}
    assignment = stratified_group_split(strata, ratios, seed, _NAMES)
    sections = {name: [] for name in _NAMES}
    for pid, split in assignment.items():
        sections[split].extend(groups[pid])
    for name in _NAMES:
        sections[name].sort(key=lambda r: (natural_key(r["loop"]), r["frame"]))
    lists = {
        split: [{"image": r["path"], "organ": r["organ"], "patient": r["patient"], "loop": r["loop"],
                 "frame": r["frame"]} for r in recs]
        for split, recs in sections.items()
    }
    counts = split_counts(sections, key="organ")
    metadata = dict(
        name="Cine-loop frames for pretraining",
        tool="usfm_monai.data.prepare.frames.prepare_frames",
        dataset_dir=f"{os.path.basename(output_dir)} (the output_dir argument)",
        source=root,
        task="pretrain",
        seed=int(seed),
        ratios=list(ratios),
        split="by patient (PatientID, else first folder below the organ), stratified by organ; groups ordered by "
              "sha256(f'{seed}:{patient}'), largest-remainder quotas",
        organs=sorted({r["organ"] for r in records}),
        sizes={split: len(v) for split, v in lists.items()},
        organ_counts=counts,
        patients={split: len({r["patient"] for r in recs}) for split, recs in sections.items()},
        frame_sampling=dict(stride=int(stride), min_difference=float(min_difference),
                            difference="mean |a - b| of 64x64 area-downsampled frames, grey / 255",
                            crop_region=bool(crop_region), totals=totals, loops=per_loop),
        no_ultrasound_region=no_region if crop_region else [],
        skipped=report.as_metadata(root),
    )
    path = write_datalist(output, lists, metadata, base_dir=output_dir)
    print(f"Cine-loop frames: wrote {path} (frames in {output_dir})")
    print(f"  loops {totals['loops']}: frames read {totals['read']}, considered (stride {stride}) "
          f"{totals['considered']}, kept {totals['kept']}, near-duplicates dropped {totals['near_duplicates']}")
    for split in _NAMES:
        print(f"  {split}: {len(lists[split])} {counts[split]}")
    if no_region:
        print(f"  {len(no_region)} loop(s) without an ultrasound-region header (whole frame kept)")
    report.print_skipped()
    return path
