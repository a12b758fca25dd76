"""Fast start-up checks of the files a datalist names: is each one a readable 8-bit image?

A truncated PNG, a zero-byte file or a text file in a datalist otherwise surfaces as
``OSError: image file is truncated`` deep inside a DataLoader worker, some iterations into training, without the
path. :func:`verify_image_file` reads only what a header check needs (PIL's ``Image.verify()``, which for PNG also
checks every chunk's CRC; the NIfTI header with nibabel; the DICOM header with pydicom when it is installed), so a
few thousand files take seconds. :func:`find_unreadable_files` runs it over datalist items and names each bad
item; :func:`usfm_monai.data.datalist.load_datalist` calls it at start-up (``check_files`` in the bundles' configs
switches it off for very large sets). Inference-input code can call :func:`verify_image_file` on its own.

Images must be 8-bit, as everywhere in this package (the dataset preparers and
:class:`usfm_monai.transforms.ScaleIntensity8Bit` reject other bit depths too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.utils import optional_import
from PIL import Image, UnidentifiedImageError

__all__ = ["HIGH_BIT_DEPTH_MODES", "UNCHECKED_EXTENSIONS", "verify_image_file", "find_unreadable_files"]

#: PIL modes of 16/32-bit images, which the package does not read (see :class:`ScaleIntensity8Bit`).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: formats MONAI reads through ITK that have no cheap header check here; they are only checked for existence.
UNCHECKED_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".npz")

_NIFTI_EXTENSIONS = (".nii", ".nii.gz", ".hdr", ".img")
_DICOM_EXTENSIONS = (".dcm", ".dicom")


def _extension(path: str) -> str:
    lower = path.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def verify_image_file(path: str | os.PathLike) -> None:
    """Check that ``path`` is a non-empty image file that the bundles can read, without decoding its pixels.

    - ``.nii`` / ``.nii.gz``: the header is read with nibabel.
    - ``.dcm``: the header is read with pydicom (``stop_before_pixels``) when pydicom is installed.
    - :data:`UNCHECKED_EXTENSIONS`: existence and size only.
    - anything else (PNG, JPEG, BMP, TIFF, ... or a text file): PIL must identify it and ``Image.verify()`` must
      pass (for PNG this reads every chunk and checks its CRC, so a truncated file fails), and it must be 8-bit.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, cannot be identified or read as an image, is truncated or corrupt, or is
            a 16/32-bit image; the message starts with the path and says which.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes).")
    ext = _extension(path)
    if ext in UNCHECKED_EXTENSIONS:
        return
    if ext in _NIFTI_EXTENSIONS:
        import nibabel

        try:
            nibabel.load(path)
        except Exception as err:  # nibabel raises ImageFileError, EOFError, gzip errors... all mean "unreadable"
            raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err}).") from err
        return
    if ext in _DICOM_EXTENSIONS:
        pydicom, has_pydicom = optional_import("pydicom")
        if has_pydicom:
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as err:  # InvalidDicomError, EOFError, ... all mean "unreadable"
                raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err}).") from err
        return
    mode, fmt = None, "image"
    try:
        with Image.open(path) as img:
            mode, fmt = img.mode, img.format
            img.verify()
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not an image file (PIL cannot identify its format).") from err
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated or corrupt data as OSError ("Truncated File Read", bad CRC) or SyntaxError
        raise ValueError(f"{path}: the {fmt} file is truncated or corrupt ({type(err).__name__}: {err}).") from err
    if mode in HIGH_BIT_DEPTH_MODES:
        raise ValueError(
            f"{path}: a 16/32-bit image (PIL mode {mode}); only 8-bit images are supported, as in the dataset "
            "preparers. Convert it to 8-bit grayscale first."
        )


def find_unreadable_files(
    items: Sequence[dict[str, Any]], keys: Sequence[str], where: str = "datalist"
) -> list[str]:
    """Run :func:`verify_image_file` on the files under ``keys`` of every item; describe the failures.

    Args:
        items: datalist items with absolute paths (strings or lists of strings; other values are skipped).
        keys: the keys holding image paths, e.g. ``("image", "label")``.
        where: how to name the list in the messages, e.g. ``"section 'training' of /data/busi.json"``.

    Returns:
        one line per bad file, ``"item <i> of <where>, key '<key>': <reason>"``; empty when all are readable.
    """
    problems = []
    for index, item in enumerate(items):
        for key in keys:
            value = item.get(key)
            paths = value if isinstance(value, list) else [value]
            for path in paths:
                if not isinstance(path, str):
                    continue
                try:
                    verify_image_file(path)
                except (FileNotFoundError, ValueError) as err:
                    problems.append(f"item {index} of {where}, key {key!r}: {err}")
    return problems
