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
    "canonical_split",
    "find_split_folders",
    "read_split_file",
    "split_records_official",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".nii", ".nii.gz")
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

    Single-frame DICOM (grey or RGB, 8-bit; :func:`usfm_monai.data.dicom.read_dicom_frames`) and 2-D NIfTI
    (stored ``(W, H)``, 8-bit values) are read too; the datalist then references the file itself. A multi-frame
    DICOM file is refused: extract its frames with ``usfm-monai prepare_frames``.

    Returns:
        ``(H, W)`` uint8 array in ``[0, 255]``.

    Raises:
        ValueError: the file cannot be decoded (message names the file).
    """
    lower = str(path).lower()
    if lower.endswith((".dcm", ".dicom")):
        from usfm_monai.data.dicom import read_dicom_frames

        frames = read_dicom_frames(path)
        if frames.shape[0] != 1:
            raise ValueError(
                f"Cannot read image {path}: multi-frame DICOM ({frames.shape[0]} frames); extract the frames with "
                "`usfm-monai prepare_frames`."
            )
        return frames[0]
    if lower.endswith((".nii", ".nii.gz")):
        return _read_nifti_2d(path)
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"Cannot read image {path}: 16/32-bit integer images ({img.mode}) are not supported.")
    return np.asarray(img.convert("L"))


def _read_nifti_2d(path: str) -> np.ndarray:
    import nibabel as nib

    try:
        arr = np.asarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error ...
        raise ValueError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e
    arr = arr.reshape(arr.shape[:2] + tuple(s for s in arr.shape[2:] if s != 1))
    if arr.ndim != 2:
        raise ValueError(f"Cannot read image {path}: expected a 2-D NIfTI image, got shape {arr.shape}.")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"Cannot read image {path}: values span [{arr.min()}, {arr.max()}], expected 8-bit [0, 255].")
    return np.ascontiguousarray(arr.T).astype(np.uint8)  # stored (W, H) -> (H, W)


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
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
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


#: folder or listing names of an official split, and the datalist section each one maps to
SPLIT_ALIASES = {
    "train": "training", "training": "training",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}


def canonical_split(name: str) -> str | None:
    """The datalist section of an official split name (``train`` → ``training``, ``val`` → ``validation``,
    ``testing`` → ``test``; any case), or ``None``."""
    return SPLIT_ALIASES.get(str(name).strip().lower())


def find_split_folders(root: str) -> dict[str, str]:
    """``{section: folder}`` when ``root``'s subfolders are an official split (``root/train``, ``root/test`` ...).

    Returns ``{}`` when no subfolder has a split name.

    Raises:
        ValueError: split folders sit next to other folders (ambiguous), or two folders map to one section.
    """
    if not os.path.isdir(root):
        return {}
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    named = {d: canonical_split(d) for d in subdirs}
    splits = [d for d in subdirs if named[d]]
    if not splits:
        return {}
    others = [d for d in subdirs if not named[d]]
    if others:
        raise ValueError(
            f"{root} mixes split folders {splits} with other folders {others}: expected either <root>/<split>/... "
            "or no split folders."
        )
    out: dict[str, str] = {}
    for d in splits:
        if named[d] in out:
            raise ValueError(f"{root}: folders {os.path.basename(out[named[d]])!r} and {d!r} are both the {named[d]} split.")
        out[named[d]] = os.path.join(root, d)
    return out


def read_split_file(path: str, base_dir: str) -> dict[str, str]:
    """Read an official split listing: ``{absolute image path: section}``.

    Formats:
        - CSV with a header holding a path column (``image``, ``path``, ``file`` or ``filename``) and a
          ``split`` (or ``set``/``subset``) column;
        - JSON ``{"train": [paths or {"image": path}], "test": [...]}`` (decathlon-like) or ``{path: split}``.

    Paths are relative to ``base_dir`` (or absolute); split names go through :func:`canonical_split`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown format, missing columns, or an unknown split name (message names the file and row).
    """
    import csv
    import json

    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path} does not exist.")
    pairs: list[tuple[str, str]] = []
    if path.lower().endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"split file {path}: expected a JSON object, got {type(data).__name__}.")
        for key, value in data.items():
            if key == "metadata":
                continue
            if isinstance(value, list):
                pairs += [(v["image"] if isinstance(v, dict) else v, key) for v in value]
            elif isinstance(value, str):
                pairs.append((key, value))
            else:
                raise ValueError(f"split file {path}: entry {key!r} must be a list of paths or a split name.")
    elif path.lower().endswith((".csv", ".tsv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.lower().endswith(".tsv") else ","))
        fields = {k.strip().lower(): k for k in (rows[0].keys() if rows else [])}
        pcol = next((fields[c] for c in ("image", "path", "file", "filename") if c in fields), None)
        scol = next((fields[c] for c in ("split", "set", "subset") if c in fields), None)
        if pcol is None or scol is None:
            raise ValueError(
                f"split file {path}: expected a header with a path column (image/path/file/filename) and a split "
                f"column (split/set/subset), found {sorted(fields)}."
            )
        pairs = [(row[pcol], row[scol]) for row in rows]
    else:
        raise ValueError(f"split file {path}: expected a .csv, .tsv or .json file.")
    out: dict[str, str] = {}
    for rel, name in pairs:
        section = canonical_split(name)
        if section is None:
            raise ValueError(f"split file {path}: {rel!r} has split {name!r}, expected one of {sorted(SPLIT_ALIASES)}.")
        full = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(base_dir, rel))
        if out.get(full, section) != section:
            raise ValueError(f"split file {path}: {rel!r} is listed in both {out[full]} and {section}.")
        out[full] = section
    return out


def split_records_official(
    records: Sequence[dict],
    ratios: Sequence[float],
    seed: int = 0,
    stratum_key: str = "class_name",
    group_key: str = "hash",
    drop_conflicts: bool = False,
    names: Sequence[str] = SPLIT_NAMES,
    split_key: str = "official_split",
) -> tuple[dict[str, list[dict]], list[list[str]], list[list[dict]], dict]:
    """Keep a dataset's own split (``record[split_key]``); draw validation from its training part when absent.

    The official sections are kept as they are. When the official split has no validation part (and ``names``
    has one), validation is drawn from the official training records with :func:`split_records`: stratified by
    ``stratum_key``, seeded, copies kept together, fraction ``ratios[validation] / (ratios[training] +
    ratios[validation])`` of the training part. The test part is never touched.

    Args:
        records: dicts with ``"path"``, ``stratum_key``, ``group_key`` and ``split_key`` (a section name).
        ratios: the preparer's ratios (only the training : validation proportion is used).
        seed, stratum_key, group_key, drop_conflicts, names: as in :func:`split_records`.
        split_key: key of each record's official section.

    Returns:
        ``(sections, duplicates, conflicts, info)`` as :func:`split_records`, plus ``info`` for the metadata:
        ``{"official_sections", "validation", "cross_split_duplicates"}`` (copies found in two official sections).

    Raises:
        ValueError: a record's section is not one of ``names``.
    """
    ratios = check_ratios(ratios, names)
    bad = sorted({str(r[split_key]) for r in records} - set(names))
    if bad:
        raise ValueError(f"official split sections {bad} are not among the datalist sections {list(names)}.")
    parts = {name: [r for r in records if r[split_key] == name] for name in names}
    sections: dict[str, list[dict]] = {}
    duplicates: list[list[str]] = []
    conflicts: list[list[dict]] = []
    draw_val = "validation" in names and "training" in names and not parts["validation"]
    for name in names:
        if draw_val and name in ("training", "validation"):
            continue
        s, d, c = split_records(parts[name], (1.0,), seed, stratum_key, group_key, drop_conflicts, names=(name,))
        sections[name] = s[name]
        duplicates += d
        conflicts += c
    if draw_val:
        t, v = ratios[list(names).index("training")], ratios[list(names).index("validation")]
        frac = v / (t + v) if t + v > 0 else 0.0
        s, d, c = split_records(parts["training"], (1.0 - frac, frac), seed, stratum_key, group_key,
                                drop_conflicts, names=("training", "validation"))
        sections.update(s)
        duplicates += d
        conflicts += c
        validation = (f"drawn from the official training part: fraction {frac:.4g}, seed {seed}, "
                      + split_description(stratum_key))
    else:
        validation = "official"
    where: dict[str, set[str]] = {}
    for r in records:
        where.setdefault(r[group_key], set()).add(r[split_key])
    cross = [sorted((r["path"] for r in records if r[group_key] == g), key=natural_key)
             for g, secs in where.items() if len(secs) > 1]
    info = {
        "official_sections": {name: len(parts[name]) for name in names if parts[name]},
        "validation": validation,
        "cross_split_duplicates": sorted(cross, key=lambda g: natural_key(g[0])),
    }
    sections = {name: sections.get(name, []) for name in names}
    return sections, duplicates, conflicts, info
