"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020; paper Table 1): classification and segmentation.

Raw layout (as distributed)::

    Dataset_BUSI_with_GT/<class>/<class> (N).png            the image (8-bit gray or RGB)
    Dataset_BUSI_with_GT/<class>/<class> (N)_mask.png       its lesion mask (1-bit, RGB or RGBA)
    Dataset_BUSI_with_GT/<class>/<class> (N)_mask_1.png     further lesions of some images

with ``<class>`` in ``benign`` (437), ``malignant`` (210), ``normal`` (133): 780 images. There is no official
split, so these preparers define a fixed one:

- **Split**: stratified by class, ratios ``(0.7, 0.1, 0.2)`` for training/validation/test, seed 0, made with
  :func:`usfm_monai.data.prepare.common.stratified_group_split` (order by ``sha256(f"{seed}:{pixel hash}")``,
  largest-remainder quotas): each class's count per split is within one image of its share, and the split
  does not depend on numpy's or Python's random generators.
- **Duplicates**: images are grouped by the SHA-1 of their decoded grayscale pixels, so copies never straddle
  splits whatever their file encoding. Copies filed under different classes (BUSI: ``benign (433)`` =
  ``malignant (145)``) are reported and **excluded from classification** (the image has no single true
  label); segmentation keeps them, in the same split.
- **Masks** (segmentation): the lesion mask is the union of all of an image's mask files, foreground = any
  non-zero value in the first channel; written as 0/255 8-bit PNGs ``<mask_dir>/<class>/<class> (N).png``.
- **Paths** in the datalists are relative to ``busi_dir`` (the ``Dataset_BUSI_with_GT`` folder), which is
  the bundles' ``dataset_dir``.

The versioned ``data_lists/busi_classification.json`` and ``data_lists/busi_segmentation.json`` were made with
(``<BUSI>`` = the folder holding ``Dataset_BUSI_with_GT``)::

    from usfm_monai.data.prepare.busi import prepare_busi_classification, prepare_busi_segmentation
    prepare_busi_classification("<BUSI>/Dataset_BUSI_with_GT", "data_lists/busi_classification.json")
    prepare_busi_segmentation("<BUSI>/Dataset_BUSI_with_GT", "data_lists/busi_segmentation.json",
                              mask_dir="<BUSI>/Dataset_BUSI_with_GT/busi_masks")

The segmentation datalist references the union masks as ``busi_masks/<class>/<class> (N).png``; they are
derived files, not part of the download, so run the second call once on your copy of BUSI (it rewrites the
same datalist and writes the masks), then set ``dataset_dir`` to your ``Dataset_BUSI_with_GT`` folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.prepare.common import (
    SPLIT_NAMES,
    PreparationReport,
    check_ratios,
    natural_key,
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

__all__ = ["BUSI_CLASSES", "scan_busi", "prepare_busi_classification", "prepare_busi_segmentation"]

BUSI_CLASSES = ("benign", "malignant", "normal")

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)
_IMAGE = re.compile(r"^(?P<stem>.+)\.png$", re.IGNORECASE)


def scan_busi(busi_dir: str, report: PreparationReport | None = None) -> list[dict]:
    """List BUSI's images with their mask files.

    Args:
        busi_dir: the ``Dataset_BUSI_with_GT`` folder.
        report: collects mask files without an image and files that are neither (not PNG).

    Returns:
        records ``{"path", "class_name", "stem", "masks": [paths]}`` in class, then natural order.

    Raises:
        FileNotFoundError: ``busi_dir`` holds none of the class folders ``benign``, ``malignant``, ``normal``.
    """
    busi_dir = os.path.abspath(busi_dir)
    present = [c for c in BUSI_CLASSES if os.path.isdir(os.path.join(busi_dir, c))]
    if not present:
        hint = ""
        if os.path.isdir(os.path.join(busi_dir, "Dataset_BUSI_with_GT")):
            hint = f" Did you mean {os.path.join(busi_dir, 'Dataset_BUSI_with_GT')}?"
        raise FileNotFoundError(
            f"{busi_dir} holds none of the BUSI class folders {BUSI_CLASSES} "
            f"(expected <busi_dir>/<class>/<class> (N).png).{hint}"
        )
    records = []
    for class_name in present:
        folder = os.path.join(busi_dir, class_name)
        images: dict[str, dict] = {}
        masks: dict[str, list[str]] = {}
        for name in sorted(os.listdir(folder), key=natural_key):
            path = os.path.join(folder, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            m = _MASK.match(name)
            if m:
                masks.setdefault(m["stem"], []).append(path)
                continue
            m = _IMAGE.match(name)
            if m:
                images[m["stem"]] = {"path": path, "class_name": class_name, "stem": m["stem"], "masks": []}
            elif report is not None:
                report.skip(path, "not a PNG image or mask")
        for stem, paths in masks.items():
            if stem in images:
                images[stem]["masks"] = sorted(paths, key=natural_key)
            elif report is not None:
                for path in paths:
                    report.skip(path, "mask without an image")
        records += [images[s] for s in sorted(images, key=natural_key)]
    return records


def _read_images(records: list[dict], report: PreparationReport) -> list[dict]:
    """Decode each image (for its pixel hash and size); unreadable ones are reported and dropped."""
    readable = []
    for rec in records:
        try:
            gray = read_gray(rec["path"])
        except ValueError as e:
            report.skip(rec["path"], str(e))
            continue
        readable.append(dict(rec, hash=pixel_hash(gray), shape=gray.shape))
    return readable


def _split(records, ratios, seed, drop_conflicts, split_file, busi_dir, report):
    """Split with :func:`split_records`, or keep the official split listed in ``split_file`` (see its docs)."""
    if not split_file:
        return (*split_records(records, ratios, seed, drop_conflicts=drop_conflicts), None)
    official = read_split_file(os.path.abspath(split_file), busi_dir)
    listed = []
    for rec in records:
        section = official.get(os.path.normpath(rec["path"]))
        if section is None:
            report.skip(rec["path"], f"not listed in the split file {split_file}")
        else:
            listed.append(dict(rec, official_split=section))
    sections, duplicates, conflicts, info = split_records_official(listed, ratios, seed, drop_conflicts=drop_conflicts)
    info = dict(info, source=f"split file {os.path.basename(split_file)}",
                cross_split_duplicates=relative_paths(info["cross_split_duplicates"], busi_dir))
    return sections, duplicates, conflicts, info


def _print_summary(title: str, output: str, sections, duplicates, conflicts, report) -> None:
    counts = split_counts(sections)
    print(f"{title}: wrote {output}")
    for name in SPLIT_NAMES:
        print(f"  {name}: {len(sections[name])} {counts[name]}")
    print(f"  exact duplicate groups (kept together): {len(duplicates)}")
    for group in conflicts:
        print("  copies with different labels: " + " = ".join(f"{m['path']} ({m['class_name']})" for m in group))
    report.print_skipped()


def prepare_busi_classification(
    busi_dir: str,
    output: str,
    seed: int = 0,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    split_file: str | None = None,
) -> str:
    """Write the BUSI 3-class classification datalist (benign=0, malignant=1, normal=2).

    Items: ``{"image": "<class>/<class> (N).png", "label": int, "class_name": str}``. Exact duplicates share a
    split; copies with conflicting labels are excluded and listed in ``metadata.conflicting_duplicates``;
    unreadable images are skipped and listed in ``metadata.skipped``. See the module docstring for the split.

    Args:
        busi_dir: the ``Dataset_BUSI_with_GT`` folder (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        seed: split seed, recorded in the metadata.
        ratios: training/validation/test fractions, summing to 1 (the default 7:1:2 with seed 0 is the preset
            comparable with published BUSI results that use a 7:1:2 random split).
        split_file: an official or published split to keep instead (CSV with path and split columns, or JSON;
            paths relative to ``busi_dir``; unlisted images are skipped). Validation, when the listing has none,
            is drawn from its training part only (``ratios[1] / (ratios[0] + ratios[1])`` of it, stratified by
            class, seeded); recorded in ``metadata.official_split``.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``busi_dir`` is not a BUSI folder.
        ValueError: bad ``ratios``.
    """
    ratios = check_ratios(ratios)
    busi_dir = os.path.abspath(busi_dir)
    report = PreparationReport()
    scanned = scan_busi(busi_dir, report)
    records = _read_images(scanned, report)
    sections, duplicates, conflicts, split_info = _split(records, ratios, seed, True, split_file, busi_dir, report)
    lists = {
        name: [
            {"image": r["path"], "label": BUSI_CLASSES.index(r["class_name"]), "class_name": r["class_name"]}
            for r in recs
        ]
        for name, recs in sections.items()
    }
    metadata = dict(
        name="BUSI classification",
        tool="usfm_monai.data.prepare.busi.prepare_busi_classification",
        dataset_dir="Dataset_BUSI_with_GT (the busi_dir argument)",
        task="classification",
        seed=int(seed),
        ratios=list(ratios),
        split=split_description("class"),
        **({"official_split": split_info} if split_info else {}),
        class_names=list(BUSI_CLASSES),
        num_images_found=len(scanned),
        sizes={name: len(v) for name, v in lists.items()},
        class_counts=split_counts(sections),
        duplicates=relative_paths(duplicates, busi_dir),
        conflicting_duplicates=relative_paths(conflicts, busi_dir),
        conflicting_duplicates_policy="excluded from every split (no single true label)",
        skipped=report.as_metadata(busi_dir),
    )
    path = write_datalist(output, lists, metadata, base_dir=busi_dir)
    _print_summary("BUSI classification", path, sections, duplicates, conflicts, report)
    return path


def prepare_busi_segmentation(
    busi_dir: str,
    output: str,
    include_normal: bool = False,
    seed: int = 0,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    mask_dir: str | None = None,
    split_file: str | None = None,
) -> str:
    """Write BUSI's lesion masks (union of each image's mask files) and the segmentation datalist.

    Items: ``{"image": "<class>/<class> (N).png", "label": "<mask_dir rel>/<class>/<class> (N).png",
    "class_name": str}``, labels 0/255. Stratified by class; exact duplicates share a split (copies with
    conflicting class labels are kept, stratified as ``"benign+malignant"``, and reported). Images without any
    mask file and unreadable files are skipped and listed in ``metadata.skipped``.

    Args:
        busi_dir: the ``Dataset_BUSI_with_GT`` folder (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        include_normal: also include ``normal`` images (empty masks).
        seed: split seed, recorded in the metadata.
        ratios: training/validation/test fractions, summing to 1 (the default 7:1:2 with seed 0 is the preset
            comparable with published BUSI results that use a 7:1:2 random split).
        split_file: an official or published split to keep instead (CSV with path and split columns, or JSON;
            paths relative to ``busi_dir``; unlisted images are skipped). Validation, when the listing has none,
            is drawn from its training part only (``ratios[1] / (ratios[0] + ratios[1])`` of it, stratified by
            class, seeded); recorded in ``metadata.official_split``.
        mask_dir: where to write the union masks; default ``<folder of output>/busi_masks``. Use
            ``<busi_dir>/busi_masks`` to keep the datalist portable (paths stay inside ``dataset_dir``).

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``busi_dir`` is not a BUSI folder.
        ValueError: bad ``ratios``, or a mask whose size differs from its image (names both files).
    """
    ratios = check_ratios(ratios)
    busi_dir = os.path.abspath(busi_dir)
    output = os.path.abspath(output)
    if mask_dir is None:
        mask_dir = os.path.join(os.path.dirname(output), "busi_masks")
    mask_dir = os.path.abspath(mask_dir)
    report = PreparationReport()
    records = [r for r in scan_busi(busi_dir, report) if include_normal or r["class_name"] != "normal"]
    records = _read_images(records, report)
    kept = []
    for rec in records:
        if not rec["masks"]:
            report.skip(rec["path"], "no mask file (<name>_mask.png)")
            continue
        union = np.zeros(rec["shape"], dtype=bool)
        try:
            for mask_path in rec["masks"]:
                mask = read_mask(mask_path)
                if mask.shape != union.shape:
                    raise ValueError(
                        f"Mask {mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                        f"{rec['path']} has size {union.shape[1]}x{union.shape[0]}."
                    )
                union |= mask
        except ValueError as e:
            if str(e).startswith("Cannot read"):
                report.skip(rec["path"], f"unreadable mask: {e}")
                continue
            raise
        label = os.path.join(mask_dir, rec["class_name"], rec["stem"] + ".png")
        write_mask(label, union)
        kept.append(dict(rec, label=label))
    sections, duplicates, conflicts, split_info = _split(kept, ratios, seed, False, split_file, busi_dir, report)
    lists = {
        name: [{"image": r["path"], "label": r["label"], "class_name": r["class_name"]} for r in recs]
        for name, recs in sections.items()
    }
    classes = [c for c in BUSI_CLASSES if include_normal or c != "normal"]
    metadata = dict(
        name="BUSI lesion segmentation",
        tool="usfm_monai.data.prepare.busi.prepare_busi_segmentation",
        dataset_dir="Dataset_BUSI_with_GT (the busi_dir argument)",
        task="segmentation",
        seed=int(seed),
        ratios=list(ratios),
        split=split_description("class"),
        **({"official_split": split_info} if split_info else {}),
        classes=classes,
        labels={"0": "background", "255": "lesion (union of all mask files of the image)"},
        mask_dir=os.path.relpath(mask_dir, busi_dir).replace(os.sep, "/"),
        sizes={name: len(v) for name, v in lists.items()},
        class_counts=split_counts(sections),
        duplicates=relative_paths(duplicates, busi_dir),
        conflicting_duplicates=relative_paths(conflicts, busi_dir),
        conflicting_duplicates_policy="kept, in the same split",
        skipped=report.as_metadata(busi_dir),
    )
    path = write_datalist(output, lists, metadata, base_dir=busi_dir)
    _print_summary("BUSI segmentation", path, sections, duplicates, conflicts, report)
    print(f"  masks written to {mask_dir}")
    return path
