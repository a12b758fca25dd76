"""TN3K thyroid nodule segmentation (Gong et al. 2023; paper Table 1).

Official layout (the authors' download)::

    <tn3k_dir>/trainval-image/0000.jpg ...   2879 images      <tn3k_dir>/test-image/0000.jpg ...   614 images
    <tn3k_dir>/trainval-mask/0000.jpg ...                      <tn3k_dir>/test-mask/0000.jpg ...
    <tn3k_dir>/tn3k-trainval-fold{0..4}.json                   {"train": [...], "val": [...]}

The fold files hold integer indices into the **sorted** list of ``trainval-image`` files. Masks are JPEGs, so
they are thresholded at > 127 and rewritten as lossless 0/255 PNGs ``<mask_dir>/{trainval,test}/<name>.png``.
Training/validation come from the chosen fold, test is the official test set. Paths in the datalist are relative
to ``tn3k_dir`` (the ``dataset_dir``). Unlike the other preparers, any bad file stops the run with an error
listing the problems: a skipped file would silently shift the meaning of the fold indices.
"""

from __future__ import annotations

import os

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.prepare.common import list_images, read_gray, read_mask, write_mask
from usfm_monai.io import read_json

__all__ = ["prepare_tn3k"]

_NUM_FOLDS = 5
_MASK_THRESHOLD = 127


def _load_fold(path: str, num_images: int) -> dict[str, list[int]]:
    fold = read_json(path, "TN3K fold file")
    out = {}
    for key in ("train", "val"):
        if not isinstance(fold, dict) or key not in fold:
            raise KeyError(f"TN3K fold file {path} must hold {{'train': [...], 'val': [...]}}; {key!r} is missing.")
        indices = fold[key]
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise ValueError(f"{key!r} in TN3K fold file {path} must be a list of integer indices.")
        bad = [i for i in indices if not 0 <= i < num_images]
        if bad:
            raise ValueError(
                f"{key!r} in TN3K fold file {path} has indices out of range {bad[:5]} "
                f"({len(bad)} in all); trainval-image holds {num_images} images (indices 0..{num_images - 1})."
            )
        out[key] = indices
    overlap = sorted(set(out["train"]) & set(out["val"]))
    if overlap:
        raise ValueError(f"TN3K fold file {path} lists indices in both 'train' and 'val': {overlap[:5]}.")
    return out


def _pairs(tn3k_dir: str, part: str, mask_dir: str, problems: list[str]) -> list[dict]:
    image_dir = os.path.join(tn3k_dir, f"{part}-image")
    source_mask_dir = os.path.join(tn3k_dir, f"{part}-mask")
    for folder in (image_dir, source_mask_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"TN3K folder {folder} does not exist (expected the official TN3K layout).")
    images = sorted(list_images(image_dir, recursive=False))  # plain sort: the fold files index this order
    masks: dict[str, list[str]] = {}
    for path in list_images(source_mask_dir, recursive=False):
        masks.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    items = []
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        candidates = masks.get(stem, [])
        label = os.path.join(mask_dir, part, stem + ".png")
        items.append({"image": image, "label": label})
        if not candidates:
            problems.append(f"{image}: no mask {os.path.join(source_mask_dir, stem)}.jpg/.png")
            continue
        try:
            shape = read_gray(image).shape
            mask = read_mask(candidates[0], threshold=_MASK_THRESHOLD)
        except ValueError as e:
            problems.append(str(e))
            continue
        if mask.shape != shape:
            problems.append(
                f"mask {candidates[0]} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image} has "
                f"size {shape[1]}x{shape[0]}"
            )
            continue
        write_mask(label, mask)  # an empty mask (no nodule) is legal
    return items


def prepare_tn3k(tn3k_dir: str, output: str, fold: int = 0, mask_dir: str | None = None) -> str:
    """Write TN3K's binary masks (0/255 PNG) and a datalist for one cross-validation fold.

    Items: ``{"image": "trainval-image/0000.jpg", "label": "<mask_dir rel>/trainval/0000.png"}``; sections
    ``training`` / ``validation`` (from ``tn3k-trainval-fold{fold}.json``) and ``test`` (official test set).

    Args:
        tn3k_dir: the TN3K folder (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        fold: 0..4.
        mask_dir: where to write the PNG masks; default ``<folder of output>/tn3k_masks``.

    Returns:
        the absolute path of the written datalist.

    Raises:
        ValueError: ``fold`` not in 0..4; fold indices out of range or overlapping; missing, unreadable or
            mis-sized masks or images (all problems are listed, each naming its file).
        FileNotFoundError: a TN3K folder or the fold file is missing.
        KeyError: the fold file lacks ``train`` or ``val``.
    """
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < _NUM_FOLDS:
        raise ValueError(f"fold must be an int in 0..{_NUM_FOLDS - 1}, got {fold!r}.")
    tn3k_dir = os.path.abspath(tn3k_dir)
    output = os.path.abspath(output)
    if mask_dir is None:
        mask_dir = os.path.join(os.path.dirname(output), "tn3k_masks")
    mask_dir = os.path.abspath(mask_dir)
    problems: list[str] = []
    trainval = _pairs(tn3k_dir, "trainval", mask_dir, problems)
    fold_file = os.path.join(tn3k_dir, f"tn3k-trainval-fold{fold}.json")
    indices = _load_fold(fold_file, len(trainval))
    test = _pairs(tn3k_dir, "test", mask_dir, problems)
    if problems:
        listed = "\n  ".join(problems[:10])
        raise ValueError(
            f"TN3K at {tn3k_dir}: {len(problems)} problem(s); the first {min(len(problems), 10)}:\n  {listed}"
        )
    sections = {
        "training": [trainval[i] for i in sorted(indices["train"])],
        "validation": [trainval[i] for i in sorted(indices["val"])],
        "test": test,
    }
    unused = len(trainval) - len(indices["train"]) - len(indices["val"])
    metadata = dict(
        name=f"TN3K thyroid nodule segmentation, fold {fold}",
        tool="usfm_monai.data.prepare.tn3k.prepare_tn3k",
        dataset_dir="TN3K folder (the tn3k_dir argument)",
        task="segmentation",
        fold=fold,
        fold_file=os.path.basename(fold_file),
        mask_threshold=_MASK_THRESHOLD,
        labels={"0": "background", "255": "thyroid nodule"},
        mask_dir=os.path.relpath(mask_dir, tn3k_dir).replace(os.sep, "/"),
        sizes={name: len(v) for name, v in sections.items()},
        trainval_images_not_in_fold=unused,
    )
    path = write_datalist(output, sections, metadata, base_dir=tn3k_dir)
    print(f"TN3K fold {fold}: wrote {path}")
    for name, items in sections.items():
        print(f"  {name}: {len(items)}")
    if unused:
        print(f"  trainval images in neither train nor val of the fold file: {unused}")
    print(f"  masks written to {mask_dir}")
    return path
