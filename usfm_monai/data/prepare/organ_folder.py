"""Pretraining datalists from folders of unlabeled ultrasound images, one folder per organ (paper §3.1).

The 3M-US database (paper Fig. 3) is a collection of per-organ image sets; organ-balanced sampling (eq. 1,
:mod:`usfm_monai.data.sampling`) needs each image's organ, which this preparer takes from its top-level folder::

    <root>/<organ>/**/*.{png,jpg,jpeg,bmp}   ->   {"image": "<organ>/.../x.png", "organ": "<organ>"}

A fixed validation split (for reconstruction-loss monitoring) is cut per organ: groups of exact copies
(same decoded pixels) are ordered by ``sha256(f"{seed}:{pixel sha1}")`` with largest-remainder quotas.
Unreadable files are reported (printed and listed in ``metadata.skipped``) and left out.
"""

from __future__ import annotations

import os
import re

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.prepare.busi import scan_busi
from usfm_monai.data.prepare.common import (
    PreparationReport,
    check_ratios,
    find_split_folders,
    list_images,
    pixel_hash,
    read_gray,
    split_counts,
    split_description,
    read_split_file,
    relative_paths,
    split_records,
    split_records_official,
)

__all__ = ["prepare_organ_folder", "prepare_busi_pretrain"]

_NAMES = ("training", "validation")


def _pretrain_datalist(records, root, output, val_fraction, seed, report, name, tool, extra=None) -> str:
    ratios = check_ratios((1.0 - val_fraction, val_fraction), _NAMES)
    readable = []
    for rec in records:
        try:
            readable.append(dict(rec, hash=pixel_hash(read_gray(rec["path"]))))
        except ValueError as e:
            report.skip(rec["path"], str(e))
    split_info = None
    if any("official_split" in r for r in readable):
        sections, duplicates, _, split_info = split_records_official(
            readable, ratios, seed, stratum_key="organ", names=_NAMES
        )
        split_info["cross_split_duplicates"] = relative_paths(split_info["cross_split_duplicates"], root)
    else:
        sections, duplicates, _ = split_records(readable, ratios, seed, stratum_key="organ", names=_NAMES)
    lists = {split: [{"image": r["path"], "organ": r["organ"]} for r in recs] for split, recs in sections.items()}
    counts = split_counts(sections, key="organ")
    metadata = dict(
        name=name,
        tool=tool,
        task="pretrain",
        seed=int(seed),
        ratios=list(ratios),
        split=split_description("organ"),
        **({"official_split": split_info} if split_info else {}),
        organs=sorted({r["organ"] for r in readable}),
        sizes={split: len(v) for split, v in lists.items()},
        organ_counts=counts,
        num_duplicate_groups=len(duplicates),
        skipped=report.as_metadata(root),
        **(extra or {}),
    )
    path = write_datalist(output, lists, metadata, base_dir=root)
    print(f"{name}: wrote {path}")
    for split in _NAMES:
        print(f"  {split}: {len(lists[split])} {counts[split]}")
    report.print_skipped()
    return path


def prepare_organ_folder(
    root: str,
    output: str,
    val_fraction: float = 0.05,
    seed: int = 0,
    exclude: str | None = None,
    split_file: str | None = None,
) -> str:
    """Write a pretraining datalist from ``<root>/<organ>/**/*.{png,jpg,jpeg,bmp}``.

    An official split is kept: ``<root>/<split>/<organ>/...`` folders or a ``split_file`` (CSV/JSON; its
    ``test`` entries are left out, pretraining has no test section). Without an official validation part,
    validation is drawn from the training part (stratified by organ, seeded).

    Args:
        root: folder with one subfolder per organ (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        val_fraction: fraction of each organ's images for ``validation``.
        seed: split seed, recorded in the metadata.
        exclude: optional regular expression; files whose name matches (``re.search``) are ignored, e.g.
            ``"_mask"`` for datasets that keep masks next to the images.
        split_file: optional official split listing (paths relative to ``root``); unlisted files are skipped.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``root`` has no organ subfolder with images.
        ValueError: ``val_fraction`` outside ``[0, 1]``.
    """
    root = os.path.abspath(root)
    pattern = re.compile(exclude) if exclude else None
    records = []
    report = PreparationReport()
    split_dirs = find_split_folders(root)
    official = read_split_file(os.path.abspath(split_file), root) if split_file else None
    organs: list[str] = []
    for section, folder in (split_dirs.items() if split_dirs else [(None, root)]):
        found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")) \
            if os.path.isdir(folder) else []
        organs += [o for o in found if o not in organs]
        for organ in found:
            for path in list_images(os.path.join(folder, organ)):
                if pattern is not None and pattern.search(os.path.basename(path)):
                    continue
                rec = {"path": path, "organ": organ}
                if official is not None:
                    section = official.get(os.path.normpath(path))
                    if section is None:
                        report.skip(path, f"not listed in the split file {split_file}")
                        continue
                if section == "test":
                    continue  # pretraining uses no test images
                if section is not None:
                    rec["official_split"] = section
                records.append(rec)
    if not records:
        raise FileNotFoundError(
            f"No images found in {root} (expected <root>/<organ>/**/*.png|jpg|jpeg|bmp; organ folders: {organs})."
        )
    return _pretrain_datalist(
        records, root, output, val_fraction, seed, report, "Organ-folder pretraining",
        "usfm_monai.data.prepare.organ_folder.prepare_organ_folder",
        {"dataset_dir": "the root argument", "exclude": exclude},
    )


def prepare_busi_pretrain(busi_dir: str, output: str, val_fraction: float = 0.05, seed: int = 0) -> str:
    """Write a pretraining datalist of BUSI's 780 images (no masks), all with organ ``breast``.

    Args:
        busi_dir: the ``Dataset_BUSI_with_GT`` folder (the ``dataset_dir`` the paths are relative to).
        output: the datalist JSON to write.
        val_fraction: fraction of images for ``validation``.
        seed: split seed, recorded in the metadata.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: ``busi_dir`` is not a BUSI folder.
    """
    busi_dir = os.path.abspath(busi_dir)
    report = PreparationReport()
    records = [{"path": r["path"], "organ": "breast"} for r in scan_busi(busi_dir, report)]
    return _pretrain_datalist(
        records, busi_dir, output, val_fraction, seed, report, "BUSI pretraining",
        "usfm_monai.data.prepare.organ_folder.prepare_busi_pretrain",
        {"dataset_dir": "Dataset_BUSI_with_GT (the busi_dir argument)"},
    )
