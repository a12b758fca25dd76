"""DICOM ultrasound as users have it: single- and multi-frame (cine), grey or RGB, with the ultrasound-region header.

Pixels are read with MONAI's ``ITKReader`` (GDCM underneath; ``LoadImage`` picks it for ``.dcm``), which returns
every layout found in ultrasound files in one convention: after ``EnsureChannelFirst``, ``(C, W, H[, F])``: ``C`` = 1 (MONOCHROME) or 3
(RGB), ``W`` = columns, ``H`` = rows, ``F`` = frames of a multi-frame file. (MONAI's ``PydicomReader`` is built
for CT/MR series and scrambles the axes of a multi-frame ultrasound file.) Headers are read with pydicom,
without the pixel data.

The ultrasound-region header (``SequenceOfUltrasoundRegions``, tags ``RegionLocationMinX0``/``MinY0``/
``MaxX1``/``MaxY1``, DICOM PS3.3 C.8.5.5) gives the part of the frame that holds the image, without the
scanner's annotations and colour bars; :func:`ultrasound_region` returns its bounding box.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DICOM_EXTENSIONS",
    "is_dicom",
    "read_dicom_header",
    "dicom_num_frames",
    "ultrasound_region",
    "read_dicom_frames",
    "luma",
]

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")


def is_dicom(path: str) -> bool:
    """Whether ``path`` is named as a DICOM file (``.dcm`` or ``.dicom``, any case)."""
    return str(path).lower().endswith(DICOM_EXTENSIONS)


def read_dicom_header(path: str):
    """The pydicom dataset of ``path`` without its pixel data.

    Raises:
        ValueError: the file is not a readable DICOM file (message names it).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError, KeyError) as e:
        raise ValueError(f"Cannot read DICOM file {path}: {e}") from e


def dicom_num_frames(path: str, header=None) -> int:
    """``NumberOfFrames`` of a DICOM file (1 when the tag is absent: a single-frame file)."""
    ds = read_dicom_header(path) if header is None else header
    try:
        n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"DICOM file {path}: NumberOfFrames {ds.NumberOfFrames!r} is not an integer.") from e
    if n < 1:
        raise ValueError(f"DICOM file {path}: NumberOfFrames is {n}, expected >= 1.")
    return n


def ultrasound_region(path: str, header=None) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (inclusive pixel coordinates, x = column) of the imaged region.

    The box covers the regions of ``SequenceOfUltrasoundRegions`` whose ``RegionSpatialFormat`` is 1 (2-D
    tissue image); when no region carries that format, it covers all regions (some writers leave the tag out).

    Args:
        path: the DICOM file (used for the header and in messages).
        header: its pydicom dataset, if already read.

    Returns:
        the box, or ``None`` when the file has no ultrasound-region header.

    Raises:
        ValueError: a region lacks one of the four location tags, is empty (``x1 < x0``), or lies outside the
            ``Columns`` x ``Rows`` frame (message names the file and the values).
    """
    ds = read_dicom_header(path) if header is None else header
    regions = list(getattr(ds, "SequenceOfUltrasoundRegions", None) or [])
    if not regions:
        return None
    tissue = [r for r in regions if getattr(r, "RegionSpatialFormat", None) == 1]
    boxes = []
    for r in tissue or regions:
        try:
            box = tuple(int(getattr(r, t)) for t in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                      "RegionLocationMaxX1", "RegionLocationMaxY1"))
        except AttributeError as e:
            raise ValueError(f"DICOM file {path}: an ultrasound region lacks a location tag ({e}).") from e
        boxes.append(box)
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    cols, rows = int(getattr(ds, "Columns", x1 + 1)), int(getattr(ds, "Rows", y1 + 1))
    if not (0 <= x0 <= x1 < cols and 0 <= y0 <= y1 < rows):
        raise ValueError(
            f"DICOM file {path}: ultrasound region (x0, y0, x1, y1) = {(x0, y0, x1, y1)} does not fit in its "
            f"{cols}x{rows} (Columns x Rows) frame."
        )
    return x0, y0, x1, y1


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` uint8 RGB, bit-exact with PIL's ``convert("L")``; returns ``(...)`` uint8."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_dicom_frames(path: str, crop_region: bool = False, frames: Sequence[int] | None = None) -> np.ndarray:
    """Decode a DICOM file to 8-bit grey frames.

    Args:
        path: a single- or multi-frame DICOM file, MONOCHROME or RGB, 8 bits stored.
        crop_region: crop every frame to :func:`ultrasound_region` (whole frame, logged, when the header has none).
        frames: indices of the frames to return (default all).

    Returns:
        ``(F, H, W)`` uint8 array (``F`` = 1 for a single-frame file). RGB is converted like PIL's
        ``convert("L")`` (:func:`luma`).

    Raises:
        ValueError: the file cannot be decoded, holds values outside ``[0, 255]`` (16-bit data), or a frame
            index is out of range (message names the file).
    """
    from monai.data import ITKReader

    header = read_dicom_header(path)
    reader = ITKReader()  # called directly: LoadImage(reader=...) would fall back to PydicomReader on failure
    try:
        arr, meta = reader.get_data(reader.read(path))
    except RuntimeError as e:  # ITK/GDCM errors
        raise ValueError(f"Cannot read DICOM pixels of {path}: {e}") from e
    arr = np.asarray(arr)
    if meta.get("original_channel_dim") != -1:  # MONAI marks a missing channel axis with NaN
        arr = arr[..., None]  # W, H[, F], C
    if arr.ndim == 3:
        arr = arr[:, :, None]  # W, H, 1, C
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"DICOM file {path}: expected 1 or 3 channels of 2-D frames, got shape {arr.shape}.")
    arr = np.transpose(arr, (2, 1, 0, 3))  # F, H, W, C
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(
            f"DICOM file {path}: values span [{arr.min()}, {arr.max()}]; only 8-bit ultrasound is supported here."
        )
    arr = arr.astype(np.uint8)
    gray = arr[..., 0] if arr.shape[-1] == 1 else luma(arr)
    if frames is not None:
        frames = list(frames)
        bad = [k for k in frames if not 0 <= k < gray.shape[0]]
        if bad:
            raise ValueError(f"DICOM file {path} has {gray.shape[0]} frame(s); frame indices {bad} are out of range.")
        gray = gray[frames]
    if crop_region:
        box = ultrasound_region(path, header)
        if box is None:
            logger.info("%s has no SequenceOfUltrasoundRegions: whole frame kept.", os.path.basename(path))
        else:
            x0, y0, x1, y1 = box
            gray = gray[:, y0 : y1 + 1, x0 : x1 + 1]
    return np.ascontiguousarray(gray)
