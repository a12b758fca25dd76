"""USEnhance2023 low/high-quality pairs (Guo et al. 2023; paper Table 1, image enhancement).

Layout::

    <root>/train_datasets/<organ>/low_quality/NNNN.png
    <root>/train_datasets/<organ>/high_quality/NNNN.png

(``root`` may also be the ``train_datasets`` folder itself). A pair is a low- and a high-quality file with the
same name in the same organ; files without a partner are reported and left out. The challenge's own test set
has no public high-quality images, so training/validation/test are all cut from ``train_datasets``: a fixed
split stratified by organ, pairs ordered by ``sha256(f"{seed}:{organ}/{name}")`` with largest-remainder quotas.
Paths are relative to ``root`` (the ``dataset_dir``).
"""

from __future__ import annotations

import os
from collections import Counter

from usfm_monai.data.datalist import write_datalist
from usfm_monai.data.prepare.common import (
    SPLIT_NAMES,
    PreparationReport,
    check_ratios,
    list_images,
    natural_key,
    read_gray,
    split_records,
)

__all__ = ["prepare_usenhance"]


def prepare_usenhance(
    root: str,
    output: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> str:
    """Write the USEnhance2023 enhancement datalist.

    Items: ``{"image": "<organ>/low_quality/NNNN.png", "target": "<organ>/high_quality/NNNN.png", "organ"}``
    (paths with the ``train_datasets/`` prefix when ``root`` is its parent). Unpaired and unreadable files are
    skipped and listed in ``metadata.skipped``.

    Args:
        root: the USEnhance folder holding ``train_datasets`` (or ``train_datasets`` itself).
        output: the datalist JSON to write.
        val_fraction: fraction of each organ's pairs for validation.
        test_fraction: fraction of each organ's pairs for test.
        seed: split seed, recorded in the metadata.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: no ``<organ>/{low_quality,high_quality}`` folders under ``root``.
        ValueError: bad fractions, or a pair whose two images differ in size (names both files).
    """
    ratios = check_ratios((1.0 - val_fraction - test_fraction, val_fraction, test_fraction))
    root = os.path.abspath(root)
    data_dir = os.path.join(root, "train_datasets") if os.path.isdir(os.path.join(root, "train_datasets")) else root
    organs = sorted(
        d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d, "low_quality"))
        or os.path.isdir(os.path.join(data_dir, d, "high_quality"))
    ) if os.path.isdir(data_dir) else []
    if not organs:
        raise FileNotFoundError(
            f"No <organ>/low_quality and <organ>/high_quality folders found in {data_dir} "
            "(expected <root>/train_datasets/<organ>/{low_quality,high_quality}/NNNN.png)."
        )
    report = PreparationReport()
    records = []
    for organ in organs:
        found = {}
        for quality in ("low_quality", "high_quality"):
            folder = os.path.join(data_dir, organ, quality)
            paths = list_images(folder, recursive=False) if os.path.isdir(folder) else []
            found[quality] = {os.path.basename(p): p for p in paths}
        low, high = found["low_quality"], found["high_quality"]
        for name in sorted(set(low) ^ set(high), key=natural_key):
            path = low.get(name) or high.get(name)
            other = "high_quality" if name in low else "low_quality"
            report.skip(path, f"unpaired: no {other}/{name}")
        for name in sorted(set(low) & set(high), key=natural_key):
            try:
                low_shape, high_shape = read_gray(low[name]).shape, read_gray(high[name]).shape
            except ValueError as e:
                report.skip(low[name], f"pair not readable: {e}")
                continue
            if low_shape != high_shape:
                raise ValueError(
                    f"Pair of different sizes: {low[name]} is {low_shape[1]}x{low_shape[0]} (WxH) but "
                    f"{high[name]} is {high_shape[1]}x{high_shape[0]}."
                )
            records.append({"path": low[name], "target": high[name], "organ": organ, "pair_id": f"{organ}/{name}"})
    sections, _, _ = split_records(records, ratios, seed, stratum_key="organ", group_key="pair_id")
    lists = {
        name: [{"image": r["path"], "target": r["target"], "organ": r["organ"]} for r in recs]
        for name, recs in sections.items()
    }
    counts = {name: dict(sorted(Counter(r["organ"] for r in recs).items())) for name, recs in sections.items()}
    metadata = dict(
        name="USEnhance2023 low/high-quality pairs",
        tool="usfm_monai.data.prepare.usenhance.prepare_usenhance",
        dataset_dir="USEnhance folder (the root argument)",
        task="enhancement",
        seed=int(seed),
        ratios=list(ratios),
        split="stratified by organ; pairs ordered by sha256(f'{seed}:{organ}/{name}'), largest-remainder quotas",
        organs=organs,
        sizes={name: len(v) for name, v in lists.items()},
        organ_counts=counts,
        skipped=report.as_metadata(root),
    )
    path = write_datalist(output, lists, metadata, base_dir=root)
    print(f"USEnhance: wrote {path}")
    for name in SPLIT_NAMES:
        print(f"  {name}: {len(lists[name])} {counts[name]}")
    report.print_skipped()
    return path
