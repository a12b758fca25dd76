"""Generic preparers for datasets laid out as folders: image + mask folders, or one folder per class.

Both make a fixed split (training/validation/test) by ordering groups of exact copies (same decoded pixels)
by ``sha256(f"{seed}:{pixel sha1}")`` with largest-remainder quotas per stratum, so copies never straddle
splits. Unreadable files are reported (printed, listed in ``metadata.skipped``) and left out.
"""

from __future__ import annotations

import os
import re

import numpy as np

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.prepare.common import (
    SPLIT_NAMES,
    PreparationReport,
    canonical_split,
    check_ratios,
    find_split_folders,
    list_images,
    pixel_hash,
    read_gray,
    read_mask,
    read_split_file,
    relative_paths,
    split_counts,
    split_description,
    split_records,
    split_records_official,
    write_mask,
)

__all__ = ["prepare_image_mask_folders", "prepare_class_folders"]


def prepare_image_mask_folders(
    image_dir: str,
    mask_dir: str,
    output: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    mask_suffix: str = "",
    threshold: int = 0,
    output_mask_dir: str | None = None,
    base_dir: str | None = None,
    organ: str | None = None,
    split_file: str | None = None,
) -> str:
    """Pair images with binary masks by relative path and write a segmentation datalist.

    **Official splits** are kept: ``<image_dir>/<split>/...`` folders (mirrored in ``mask_dir``) or a
    ``split_file`` listing (CSV/JSON, image paths relative to ``base_dir``; unlisted images are skipped). Without
    an official validation part, validation is drawn from the official training part only.

    Image ``<image_dir>/a/b.jpg`` pairs with the mask ``<mask_dir>/a/b<mask_suffix>.<any image extension>``.
    Masks are binarized (first channel > ``threshold``; use 127 for JPEG masks) and written as 0/255 PNGs to
    ``<output_mask_dir>/a/b.png``. The split is stratified by whether the mask is empty.

    Args:
        image_dir: folder of images (searched recursively).
        mask_dir: folder of masks, mirroring ``image_dir``.
        output: the datalist JSON to write.
        val_fraction: fraction for ``validation``.
        test_fraction: fraction for ``test``.
        seed: split seed, recorded in the metadata.
        mask_suffix: suffix of mask file stems, e.g. ``"_mask"``.
        threshold: foreground is a first-channel value above it.
        output_mask_dir: where to write binary masks; default ``<folder of output>/<output stem>_masks``.
        base_dir: the ``dataset_dir`` paths are made relative to; default the common parent of ``image_dir``
            and ``mask_dir``.
        organ: optional organ tag added to every item.
        split_file: optional official split listing (CSV with path and split columns, or JSON).

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``image_dir`` or ``mask_dir`` is not a folder, or no image has a mask.
        ValueError: bad fractions, or a mask whose size differs from its image (names both files).
    """
    ratios = check_ratios((1.0 - val_fraction - test_fraction, val_fraction, test_fraction))
    image_dir, mask_dir, output = os.path.abspath(image_dir), os.path.abspath(mask_dir), os.path.abspath(output)
    for name, folder in (("image_dir", image_dir), ("mask_dir", mask_dir)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{name} {folder} is not a folder.")
    stem = os.path.splitext(os.path.basename(output))[0]
    output_mask_dir = (
        os.path.abspath(output_mask_dir) if output_mask_dir else os.path.join(os.path.dirname(output), f"{stem}_masks")
    )
    base_dir = os.path.abspath(base_dir) if base_dir else os.path.commonpath([image_dir, mask_dir])
    masks: dict[str, str] = {}
    for path in list_images(mask_dir):
        masks.setdefault(os.path.splitext(os.path.relpath(path, mask_dir))[0], path)
    report = PreparationReport()
    records = []
    split_dirs = find_split_folders(image_dir)
    official = read_split_file(os.path.abspath(split_file), base_dir) if split_file else None
    for image in list_images(image_dir):
        rel = os.path.splitext(os.path.relpath(image, image_dir))[0]
        section = None
        if split_dirs:
            section = canonical_split(rel.split(os.sep)[0])
        elif official is not None:
            section = official.get(os.path.normpath(image))
            if section is None:
                report.skip(image, f"not listed in the split file {split_file}")
                continue
        mask_path = masks.get(rel + mask_suffix)
        if mask_path is None:
            report.skip(image, f"no mask {os.path.join(mask_dir, rel + mask_suffix)}.*")
            continue
        try:
            gray = read_gray(image)
            mask = read_mask(mask_path, threshold=threshold)
        except ValueError as e:
            report.skip(image, str(e))
            continue
        if mask.shape != gray.shape:
            raise ValueError(
                f"Mask {mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image} has size "
                f"{gray.shape[1]}x{gray.shape[0]}."
            )
        label = os.path.join(output_mask_dir, rel + ".png")
        write_mask(label, mask)
        stratum = "foreground" if np.any(mask) else "empty"
        records.append({"path": image, "label": label, "hash": pixel_hash(gray), "stratum": stratum,
                        "official_split": section})
    if not records:
        raise FileNotFoundError(f"No image in {image_dir} has a readable mask in {mask_dir} (suffix {mask_suffix!r}).")
    split_info = None
    if split_dirs or official is not None:
        sections, duplicates, _, split_info = split_records_official(records, ratios, seed, stratum_key="stratum")
        split_info = dict(split_info, source=f"split file {split_file}" if official is not None else "split folders",
                          cross_split_duplicates=relative_paths(split_info["cross_split_duplicates"], base_dir))
    else:
        sections, duplicates, _ = split_records(records, ratios, seed, stratum_key="stratum")
    lists = {
        split: [dict({"image": r["path"], "label": r["label"]}, **({"organ": organ} if organ else {})) for r in recs]
        for split, recs in sections.items()
    }
    metadata = dict(
        name="image/mask folders",
        tool="usfm_monai.data.prepare.folders.prepare_image_mask_folders",
        dataset_dir=os.path.basename(base_dir),
        task="segmentation",
        seed=int(seed),
        ratios=list(ratios),
        split=split_description("empty/non-empty mask"),
        **({"official_split": split_info} if split_info else {}),
        labels={"0": "background", "255": "foreground"},
        mask_threshold=threshold,
        mask_dir=os.path.relpath(output_mask_dir, base_dir).replace(os.sep, "/"),
        sizes={split: len(v) for split, v in lists.items()},
        duplicates=relative_paths(duplicates, base_dir),
        skipped=report.as_metadata(base_dir),
    )
    path = write_datalist(output, lists, metadata, base_dir=base_dir)
    print(f"Image/mask folders: wrote {path} (paths relative to {base_dir})")
    for split in SPLIT_NAMES:
        print(f"  {split}: {len(lists[split])}")
    report.print_skipped()
    return path


def prepare_class_folders(
    root: str,
    output: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    exclude: str | None = None,
    split_file: str | None = None,
) -> str:
    """Write a classification datalist from ``<root>/<class>/**/*.{png,jpg,jpeg,bmp,dcm}``.

    Class indices follow the sorted class folder names. The split is stratified by class; copies of one image
    filed under different classes are reported and excluded (no single true label).

    **Official splits** are kept: ``<root>/<split>/<class>/...`` folders (``train``/``val``/``test``, see
    :func:`~usfm_monai.data.prepare.common.canonical_split`) or a ``split_file`` listing (CSV/JSON, paths
    relative to ``root``; unlisted files are skipped). Without an official validation part, validation is drawn
    from the official training part only (``val_fraction / (1 - test_fraction)`` of it, stratified, seeded);
    ``test_fraction`` is then unused (:func:`~usfm_monai.data.prepare.common.split_records_official`).

    Args:
        root: folder with one subfolder per class (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        val_fraction: fraction of each class for ``validation``.
        test_fraction: fraction of each class for ``test``.
        seed: split seed, recorded in the metadata.
        exclude: optional regular expression; matching file names are ignored (e.g. ``"_mask"``).
        split_file: optional official split listing (CSV with path and split columns, or JSON).

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``root`` has no class subfolder with images.
        ValueError: bad fractions, or a malformed split folder layout or split file.
    """
    ratios = check_ratios((1.0 - val_fraction - test_fraction, val_fraction, test_fraction))
    root = os.path.abspath(root)
    pattern = re.compile(exclude) if exclude else None
    split_dirs = find_split_folders(root)
    official = read_split_file(os.path.abspath(split_file), root) if split_file else None
    if split_dirs and official is not None:
        raise ValueError(f"{root} has split folders {sorted(split_dirs)} and a split_file was given: use one.")

    def subdirs(folder: str) -> list[str]:
        return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")) \
            if os.path.isdir(folder) else []

    report = PreparationReport()
    records = []
    for section, folder in (split_dirs.items() if split_dirs else [(None, root)]):
        for class_name in subdirs(folder):
            for path in list_images(os.path.join(folder, class_name)):
                if pattern is not None and pattern.search(os.path.basename(path)):
                    continue
                if official is not None:
                    section = official.get(os.path.normpath(path))
                    if section is None:
                        report.skip(path, f"not listed in the split file {split_file}")
                        continue
                try:
                    records.append({"path": path, "class_name": class_name, "hash": pixel_hash(read_gray(path)),
                                    "official_split": section})
                except ValueError as e:
                    report.skip(path, str(e))
    classes = sorted({r["class_name"] for r in records})
    if not classes:
        raise FileNotFoundError(
            f"No readable images found in {root} (expected <root>/<class>/*.png or <root>/<split>/<class>/*.png)."
        )
    split_info = None
    if split_dirs or official is not None:
        sections, duplicates, conflicts, split_info = split_records_official(records, ratios, seed, drop_conflicts=True)
        split_info = dict(split_info, source=f"split file {split_file}" if official is not None
                          else "split folders " + ", ".join(os.path.basename(f) for f in split_dirs.values()),
                          cross_split_duplicates=relative_paths(split_info["cross_split_duplicates"], root))
    else:
        sections, duplicates, conflicts = split_records(records, ratios, seed, drop_conflicts=True)
    lists = {
        split: [
            {"image": r["path"], "label": classes.index(r["class_name"]), "class_name": r["class_name"]} for r in recs
        ]
        for split, recs in sections.items()
    }
    counts = split_counts(sections)
    metadata = dict(
        name="class folders",
        tool="usfm_monai.data.prepare.folders.prepare_class_folders",
        dataset_dir="the root argument",
        task="classification",
        seed=int(seed),
        ratios=list(ratios),
        split=split_description("class"),
        **({"official_split": split_info} if split_info else {}),
        class_names=classes,
        sizes={split: len(v) for split, v in lists.items()},
        class_counts=counts,
        duplicates=relative_paths(duplicates, root),
        conflicting_duplicates=relative_paths(conflicts, root),
        conflicting_duplicates_policy="excluded from every split (no single true label)",
        skipped=report.as_metadata(root),
    )
    path = write_datalist(output, lists, metadata, base_dir=root)
    print(f"Class folders: wrote {path}")
    for split in SPLIT_NAMES:
        print(f"  {split}: {len(lists[split])} {counts[split]}")
    for group in conflicts:
        print("  copies with different labels: " + " = ".join(f"{m['path']} ({m['class_name']})" for m in group))
    report.print_skipped()
    return path
