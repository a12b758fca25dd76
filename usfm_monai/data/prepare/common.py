"""Shared pieces of the dataset preparers: reading images and masks, duplicate detection, fixed splits.

Images are read with PIL, which decodes every PNG flavor found in public ultrasound datasets (1-bit, 8-bit
gray, palette, RGB, RGBA). The splits are fixed by a seed and do not depend on numpy's generator: each group
of items is ordered by ``sha256(f"{seed}:{group_id}")``, so the same files and seed give the same split on any
machine and library version.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "PreparationReport",
    "read_gray",
    "read_mask",
    "write_mask",
    "pixel_hash",
    "natural_key",
    "list_images",
    "check_ratios",
    "split_quotas",
    "stratified_group_split",
    "split_records",
    "split_description",
    "split_counts",
    "relative_paths",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_NAMES = ("training", "validation", "test")


@dataclass
class PreparationReport:
    """What a preparer skipped or flagged; stored in the datalist's metadata and printed."""

    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": path, "reason": reason})

    def as_metadata(self, base_dir: str) -> list[dict[str, str]]:
        """The skipped files with paths relative to ``base_dir`` (machine-independent)."""
        out = []
        for e in self.skipped:
            rel = os.path.relpath(e["path"], base_dir).replace(os.sep, "/")
            out.append({"path": rel, "reason": e["reason"].replace(e["path"], rel)})
        return out

    def print_skipped(self, limit: int = 20) -> None:
        if not self.skipped:
            return
        print(f"  skipped {len(self.skipped)} file(s):")
        for entry in self.skipped[:limit]:
            print(f"    {entry['path']}: {entry['reason']}")
        if len(self.skipped) > limit:
            print(f"    ... and {len(self.skipped) - limit} more (see the datalist's metadata)")


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        # PIL raises OSError for truncated files and SyntaxError for some malformed headers
        raise ValueError(f"Cannot read image {path}: {e}") from e
    return img


def read_gray(path: str) -> np.ndarray:
    """Decode an image to 8-bit grayscale.

    RGB and RGBA are converted with ITU-R BT.601 luma (PIL's ``convert("L")``, alpha dropped), which returns
    exactly the channel when the three channels are identical, so a gray picture stored as RGB decodes to the
    same array as the same picture stored as gray.

    Returns:
        ``(H, W)`` uint8 array in ``[0, 255]``.

    Raises:
        ValueError: the file cannot be decoded (message names the file).
    """
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"Cannot read image {path}: 16/32-bit integer images ({img.mode}) are not supported.")
    return np.asarray(img.convert("L"))


def read_mask(path: str, threshold: int = 0) -> np.ndarray:
    """Decode a mask: foreground is a first-channel value above ``threshold``.

    Works for 1-bit (0/1), 8-bit gray (0/255 or label values), palette (the first RGB channel of the palette
    color), RGB and RGBA masks. Use ``threshold=127`` for masks saved as JPEG (compression noise).

    Returns:
        ``(H, W)`` bool array.

    Raises:
        ValueError: the file cannot be decoded (message names the file).
    """
    img = _open(path)
    if img.mode == "P":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > threshold


def write_mask(path: str, mask: np.ndarray) -> None:
    """Write a binary mask as an 8-bit gray PNG with values 0 and 255 (parent folders created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(path)


def pixel_hash(gray: np.ndarray) -> str:
    """SHA-1 of the decoded pixels and shape: equal for exact duplicates whatever their file encoding."""
    h = hashlib.sha1(str(gray.shape).encode())
    h.update(np.ascontiguousarray(gray).tobytes())
    return h.hexdigest()


def natural_key(text: str) -> list:
    """Sort key where digit runs compare as numbers: ``benign (2)`` before ``benign (10)``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_images(folder: str, recursive: bool = True) -> list[str]:
    """Image files (:data:`IMAGE_EXTENSIONS`, any case) under ``folder``, sorted naturally; hidden files skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
        if not recursive:
            break
    return sorted(found, key=lambda p: natural_key(os.path.relpath(p, folder)))


def check_ratios(ratios: Sequence[float], names: Sequence[str] = SPLIT_NAMES) -> tuple[float, ...]:
    """Validate split ratios: one non-negative number per split, summing to 1."""
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != len(names) or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(
            f"ratios must be {len(names)} non-negative numbers ({', '.join(names)}) summing to 1, got {ratios}."
        )
    return ratios


def split_quotas(n: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * ratios``: integers summing to ``n``, each within 1 of its share."""
    shares = [n * r for r in ratios]
    quotas = [int(np.floor(s)) for s in shares]
    order = sorted(range(len(ratios)), key=lambda i: (-(shares[i] - quotas[i]), i))
    for i in order[: n - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _order_key(seed: int, group_id: Hashable) -> str:
    return hashlib.sha256(f"{seed}:{group_id}".encode()).hexdigest()


def stratified_group_split(
    groups: Mapping[Hashable, tuple[Hashable, int]],
    ratios: Sequence[float],
    seed: int = 0,
    names: Sequence[str] = SPLIT_NAMES,
) -> dict[Hashable, str]:
    """Assign whole groups to splits, stratified by each group's stratum (e.g. its class).

    For each stratum with ``n`` items, the quota of split ``s`` is ``n * ratios[s]`` rounded by largest
    remainder (:func:`split_quotas`). Groups are taken larger first, then in the order of
    ``sha256(f"{seed}:{group_id}")``, and each goes to the split with the most quota left (ties: the first
    split). With single-item groups every split gets exactly its quota, so each stratum's count per split is
    within one item of ``n * ratio``; groups of copies (duplicates) never straddle splits.

    Args:
        groups: ``{group_id: (stratum, size)}``; ``group_id`` is stable (e.g. a pixel hash or a relative path).
        ratios: one fraction per split, summing to 1.
        seed: the split's seed.
        names: split names.

    Returns:
        ``{group_id: split_name}``.

    Raises:
        ValueError: bad ``ratios`` or a group size < 1.
    """
    ratios = check_ratios(ratios, names)
    strata: dict[Hashable, list[Hashable]] = {}
    for gid, (stratum, size) in groups.items():
        if size < 1:
            raise ValueError(f"Group {gid!r} has size {size}; every group needs at least one item.")
        strata.setdefault(stratum, []).append(gid)
    out: dict[Hashable, str] = {}
    for stratum in sorted(strata, key=str):
        gids = sorted(strata[stratum], key=lambda g: (-groups[g][1], _order_key(seed, g)))
        left = split_quotas(sum(groups[g][1] for g in gids), ratios)
        for gid in gids:
            i = max(range(len(names)), key=lambda k: (left[k], -k))
            left[i] -= groups[gid][1]
            out[gid] = names[i]
    return out


def split_records(
    records: Sequence[dict],
    ratios: Sequence[float],
    seed: int = 0,
    stratum_key: str = "class_name",
    group_key: str = "hash",
    drop_conflicts: bool = False,
    names: Sequence[str] = SPLIT_NAMES,
) -> tuple[dict[str, list[dict]], list[list[str]], list[list[dict]]]:
    """Group records by ``group_key`` (exact copies), then split the groups with :func:`stratified_group_split`.

    Args:
        records: dicts with at least ``"path"``, ``stratum_key`` and ``group_key``.
        ratios: one fraction per split, summing to 1.
        seed: the split's seed.
        stratum_key: the key to stratify on (a group whose copies disagree gets the stratum ``"a+b"``).
        group_key: records with equal values are copies and share a split.
        drop_conflicts: drop groups whose copies carry different ``stratum_key`` values (for classification:
            such an image has no single true label).
        names: split names.

    Returns:
        ``(sections, duplicates, conflicts)``: ``{split_name: [records]}`` sorted naturally by path;
        duplicate groups (lists of paths) whose copies agree; groups (lists of
        ``{"path", stratum_key}``) whose copies disagree.
    """
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec[group_key], []).append(rec)
    duplicates, conflicts, kept = [], [], {}
    for gid, members in groups.items():
        strata = sorted({str(m[stratum_key]) for m in members})
        if len(strata) > 1:
            conflicts.append([{"path": m["path"], stratum_key: m[stratum_key]} for m in members])
            if drop_conflicts:
                continue
        elif len(members) > 1:
            duplicates.append(sorted((m["path"] for m in members), key=natural_key))
        kept[gid] = ("+".join(strata), len(members))
    assignment = stratified_group_split(kept, ratios, seed, names)
    sections: dict[str, list[dict]] = {name: [] for name in names}
    for gid, split in assignment.items():
        sections[split].extend(groups[gid])
    for name in names:
        sections[name].sort(key=lambda r: natural_key(r["path"]))
    duplicates.sort(key=lambda g: natural_key(g[0]))
    conflicts.sort(key=lambda g: natural_key(g[0]["path"]))
    return sections, duplicates, conflicts


def split_description(stratified_by: str) -> str:
    """The ``metadata.split`` text of a datalist split by :func:`split_records` (hashes of the decoded pixels)."""
    return (
        f"stratified by {stratified_by}; groups of exact copies ordered by sha256(f'{{seed}}:{{pixel sha1}}'), "
        "largest-remainder quotas"
    )


def split_counts(sections: Mapping[str, Sequence[dict]], key: str = "class_name") -> dict[str, dict[str, int]]:
    """``{split: {value of key: number of records}}``, values sorted, for a datalist's ``metadata``."""
    return {name: dict(sorted(Counter(r[key] for r in recs).items())) for name, recs in sections.items()}


def relative_paths(groups: Sequence[Sequence], base_dir: str) -> list:
    """Paths (or ``{"path": ...}`` dicts) in nested lists, made relative to ``base_dir`` for the metadata."""

    def rel(x):
        if isinstance(x, dict):
            return {k: (os.path.relpath(v, base_dir).replace(os.sep, "/") if k == "path" else v) for k, v in x.items()}
        return os.path.relpath(x, base_dir).replace(os.sep, "/")

    return [[rel(x) for x in g] for g in groups]
