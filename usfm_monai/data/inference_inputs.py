"""Inputs of the bundles' ``inference.json``: an image file, a folder of images, or the synthetic default."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from usfm_monai.data.datalist import resolve_datalist

__all__ = ["IMAGE_EXTENSIONS", "list_image_files", "inference_items"]

#: file types the inference bundles read (PIL for 2-D pictures, ITK/NiBabel for NIfTI, ITK for DICOM)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith(ext) for ext in extensions)


def list_image_files(
    path: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude_suffixes: Sequence[str] = ("_mask",)
) -> list[str]:
    """Sorted absolute paths of the images at ``path`` (a file, or a folder searched recursively).

    Files whose stem ends with one of ``exclude_suffixes`` (BUSI-style ``<name>_mask.png``, ``_mask_1`` ...)
    are skipped so a raw dataset folder can be passed as is.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the folder holds no image with those extensions.
        ValueError: ``path`` is a file whose extension is not one of ``extensions``.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        if not _is_image(path, extensions):
            raise ValueError(f"{path} is not an image file: expected one of {list(extensions)}.")
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"inference input {path} does not exist: pass an image file or a folder of images.")
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            stem = name.split(".")[0]
            if _is_image(name, extensions) and not any(s in stem for s in exclude_suffixes):
                files.append(os.path.join(root, name))
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(extensions)}) found under {path}.")
    return sorted(files)


def inference_items(
    dataset_dir: str,
    task: str,
    synthetic_dir: str | None = None,
    synthetic_kwargs: Mapping[str, Any] | None = None,
    section: str = "test",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[dict[str, Any]]:
    """``[{"image": path}, ...]`` for an inference run.

    Args:
        dataset_dir: an image file, a folder of images, or ``"synthetic"`` for the ``section`` images of the
            synthetic dataset of ``task`` (generated on first use into ``synthetic_dir``).
        task: synthetic task name (``"pretrain"``, ``"segmentation"``, ``"classification"``, ``"enhancement"``).
        synthetic_dir: where the synthetic dataset lives.
        synthetic_kwargs: arguments of :func:`usfm_monai.data.synthetic.ensure_synthetic_dataset`.
        section: datalist section used for the synthetic default.
        extensions: accepted file types for files and folders.
    """
    if dataset_dir == "synthetic":
        items = resolve_datalist(
            "synthetic", None, section=section, task=task, synthetic_dir=synthetic_dir,
            required_keys=("image",), synthetic_kwargs=synthetic_kwargs,
        )
        if not items:
            raise ValueError(
                f"the synthetic '{task}' dataset in {synthetic_dir} has no '{section}' images; pick another section "
                "or point dataset_dir at an image file or folder."
            )
        return [{"image": item["image"]} for item in items]
    return [{"image": f} for f in list_image_files(dataset_dir, extensions)]
