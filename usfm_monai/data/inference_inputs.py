"""Inputs of the bundles' ``inference.json``: an image file, a folder of images, or the synthetic default.

Every file is read once before the run (:func:`probe_image`, with MONAI's ``LoadImage`` as the bundles read it).
A file that cannot be read is skipped with a warning instead of aborting the run; :class:`InferenceInputs`
keeps the list, and its :meth:`~InferenceInputs.raise_failures`, called after the evaluator in the bundles'
``run`` section, prints it and fails the run (non-zero exit) once the masks of the readable files are written.
A multi-frame DICOM file (cine loop) becomes one item per frame, ``{"image": path, "frame": k}``, which
:class:`usfm_monai.transforms.ultrasound.SelectFramed` turns into a 2-D image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from usfm_monai.data.datalist import DeferredDatalist, resolve_datalist
from usfm_monai.data.dicom import dicom_num_frames, is_dicom, read_dicom_header, ultrasound_region

__all__ = [
    "IMAGE_EXTENSIONS", "InferenceInputs", "SyntheticImageItems", "inference_items", "list_image_files", "probe_image",
]

logger = logging.getLogger(__name__)

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


def probe_image(path: str) -> dict[str, Any]:
    """Read ``path`` as the bundles do (MONAI ``LoadImage``: PIL, ITK for DICOM, NiBabel/ITK for NIfTI).

    Returns:
        ``{"frames": F, "region": (x0, y0, x1, y1) | None, "dicom": bool}``: ``F`` > 1 for a multi-frame DICOM
        file; ``region`` is its ultrasound-region box (``None`` when absent or not DICOM).

    Raises:
        ValueError: the file cannot be read (message names it and the reader's error).
    """
    from monai.transforms import LoadImage

    info: dict[str, Any] = {"frames": 1, "region": None, "dicom": is_dicom(path)}
    if info["dicom"]:
        header = read_dicom_header(path)
        info["frames"] = dicom_num_frames(path, header)
        info["region"] = ultrasound_region(path, header)
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(path)
    except Exception as e:  # readers raise OSError, RuntimeError, ValueError, EOFError, zlib.error ...
        raise ValueError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e
    if img.numel() == 0:
        raise ValueError(f"Cannot read image {path}: it holds no pixels (shape {tuple(img.shape)}).")
    if info["dicom"] and info["frames"] > 1 and img.shape[-1] != info["frames"]:
        raise ValueError(
            f"DICOM file {path}: NumberOfFrames is {info['frames']} but the pixels read have shape {tuple(img.shape)}."
        )
    return info


class InferenceInputs:
    """The items of an inference run, with the files that could not be read.

    Args:
        dataset_dir: an image file, a folder of images, or ``"synthetic"`` for the ``section`` images of the
            synthetic dataset of ``task`` (generated on first use into ``synthetic_dir``).
        task: synthetic task name (``"pretrain"``, ``"segmentation"``, ``"classification"``, ``"enhancement"``).
        synthetic_dir: where the synthetic dataset lives.
        synthetic_kwargs: arguments of :func:`usfm_monai.data.synthetic.ensure_synthetic_dataset`.
        section: datalist section used for the synthetic default.
        extensions: accepted file types for files and folders.
        expand_frames: one item per frame of a multi-frame DICOM file (the bundle's preprocessing must start
            with ``SelectFramed``); when ``False``, such files are listed as failures.

    Attributes:
        items: ``[{"image": path}, ...]`` (plus ``"frame"`` for frames of multi-frame DICOM files); for the synthetic
            default a :class:`SyntheticImageItems`, whose images are generated when an item is first read or on
            ``usfm_monai.data.datalist.materialize`` (the bundles' ``run`` step), not when a config is read.
        failures: ``[(path, reason), ...]`` of the skipped files.
        no_region: DICOM files without an ultrasound-region header (their whole frame is used).

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist or holds no image file.
        ValueError: not one of the files can be read (lists them all).
    """

    def __init__(
        self,
        dataset_dir: str,
        task: str,
        synthetic_dir: str | None = None,
        synthetic_kwargs: Mapping[str, Any] | None = None,
        section: str = "test",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        expand_frames: bool = True,
    ) -> None:
        self.failures: list[tuple[str, str]] = []
        self.no_region: list[str] = []
        if dataset_dir == "synthetic":
            planned = resolve_datalist(
                "synthetic", None, section=section, task=task, synthetic_dir=synthetic_dir,
                required_keys=("image",), synthetic_kwargs=synthetic_kwargs, defer=True,
            )
            if not len(planned):
                raise ValueError(
                    f"the synthetic '{task}' dataset in {synthetic_dir} has no '{section}' images; pick another "
                    "section or point dataset_dir at an image file or folder."
                )
            self.items = SyntheticImageItems(planned)
            return
        files = list_image_files(dataset_dir, extensions)
        self.items = []
        for path in files:
            try:
                info = probe_image(path)
            except ValueError as e:
                self._fail(path, str(e))
                continue
            if info["dicom"] and info["region"] is None:
                self.no_region.append(path)
            if info["frames"] == 1:
                self.items.append({"image": path})
            elif expand_frames:
                self.items += [{"image": path, "frame": k} for k in range(info["frames"])]
            else:
                self._fail(path, f"multi-frame DICOM ({info['frames']} frames); this bundle reads single frames "
                                 "(extract them with `usfm-monai prepare_frames`).")
        if self.no_region:
            logger.warning(
                "%d DICOM file(s) have no ultrasound-region header (SequenceOfUltrasoundRegions); their whole frame "
                "is used: %s", len(self.no_region), ", ".join(os.path.basename(p) for p in self.no_region[:5]),
            )
        if not self.items:
            raise ValueError(f"none of the {len(files)} image file(s) under {dataset_dir} can be read:\n"
                             + self._failure_lines())

    def _fail(self, path: str, reason: str) -> None:
        self.failures.append((path, reason))
        logger.warning("skipping %s: %s", path, reason)

    def _failure_lines(self) -> str:
        return "\n".join(f"  {path}: {reason}" for path, reason in self.failures)

    def raise_failures(self) -> None:
        """Fail the run when files were skipped: raises ``RuntimeError`` listing them (call after the evaluator).

        Raises:
            RuntimeError: one line per skipped file with the reason.
        """
        if self.failures:
            raise RuntimeError(
                f"{len(self.failures)} input file(s) could not be read and were skipped (the outputs of the "
                f"{len(self.items)} other item(s) were written):\n" + self._failure_lines()
            )


class SyntheticImageItems(Sequence):
    """``{"image": path}`` items of one section of the deferred synthetic dataset, generated when first read.

    Args:
        datalist: the section, a :class:`~usfm_monai.data.datalist.DeferredDatalist`.
    """

    def __init__(self, datalist: DeferredDatalist) -> None:
        self.datalist = datalist

    def __len__(self) -> int:
        return len(self.datalist)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {"image": self.datalist[index]["image"]}

    def materialize(self) -> SyntheticImageItems:
        """Generate the images now (idempotent). Returns ``self``."""
        self.datalist.materialize()
        return self


def inference_items(
    dataset_dir: str,
    task: str,
    synthetic_dir: str | None = None,
    synthetic_kwargs: Mapping[str, Any] | None = None,
    section: str = "test",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    expand_frames: bool = True,
) -> list[dict[str, Any]]:
    """``[{"image": path}, ...]`` for an inference run: :class:`InferenceInputs` that raises at once on a failure.

    Bundles use :class:`InferenceInputs` instead, which skips unreadable files and reports them at the end.

    Raises:
        RuntimeError: a file cannot be read (lists every such file).
    """
    inputs = InferenceInputs(dataset_dir, task, synthetic_dir, synthetic_kwargs, section, extensions, expand_frames)
    inputs.raise_failures()
    return list(inputs.items)
