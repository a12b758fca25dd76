"""Nested, stratified label subsets of a training datalist (label-efficiency experiments, paper §4.1.3, Fig. 10).

The paper trains every method on 20 %, 40 %, 60 %, 80 % and 100 % of each training set, "the sampling indices on
training sets remain the same across different methods". :func:`make_nested_subsets` writes those subsets as
datalist files, so every method of an experiment reads exactly the same file:

- **Deterministic from a recorded seed**, with no global RNG: inside each stratum the items are ordered by
  ``sha256(f"{seed}:{image}")`` (``image`` = the item's relative image path as written in the datalist), so the
  order does not depend on the order of the source file, the platform or the Python version.
- **Nested**: the subset of ratio ``r`` is a prefix of one global selection order, so it contains every subset
  of a smaller ratio.
- **Stratified** (by class index, by foreground presence in the mask, or by any item key): every prefix of the
  selection order holds ``floor(k * n_s / N)`` or ``ceil(k * n_s / N)`` items of stratum ``s`` (``k`` items of
  ``N``, ``n_s`` in the stratum). Fixed largest-remainder (Hamilton) quotas computed per ratio can *decrease*
  for a stratum when the subset grows (the "Alabama paradox"), which would break nesting; the selection order is
  therefore built with the quota method of Balinski & Young (1975), which keeps both properties at every size:
  the next item goes to the stratum with the largest ``n_s / (a_s + 1)`` among those still below their upper
  quota ``ceil(k * n_s / N)`` (``a_s`` items already taken).

:func:`make_pretrain_datalist` builds a self-supervised pretraining datalist (``image`` + ``organ``) from the
images of labeled datalists, leaving out every image of their test sections, so a downstream test image is never
seen in pretraining.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import PathLike

from usfm_monai.io import read_json

__all__ = [
    "DEFAULT_RATIOS",
    "make_nested_subsets",
    "make_pretrain_datalist",
    "selection_order",
    "stratum_of",
    "subset_filename",
]

#: The label ratios of the paper's label-efficiency experiment (§4.1.3).
DEFAULT_RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0)

_TOOL = "usfm_monai.data.subsets.make_nested_subsets"


def _read_json(path: str, what: str) -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got a {type(data).__name__}.")
    return data


def _write_json_atomic(data: Any, path: str) -> bool:
    """Write ``data`` as JSON via a temporary file + ``os.replace``; skip (return False) if the content is equal.

    Skipping identical content keeps the file's mtime, so reruns do not look like new subsets.
    """
    text = json.dumps(data, indent=2) + "\n"
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return False
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a datalist is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return True


def _image_key(item: Mapping[str, Any], where: str) -> str:
    image = item.get("image")
    if isinstance(image, str):
        return image.replace(os.sep, "/")
    if isinstance(image, (list, tuple)) and image and all(isinstance(v, str) for v in image):
        return "|".join(v.replace(os.sep, "/") for v in image)
    raise TypeError(f"{where} must have an 'image' path (or list of paths), got {image!r}.")


def selection_order(counts: Sequence[int]) -> list[int]:
    """The stratum of each successive item of a nested stratified selection (quota method, Balinski & Young).

    Every prefix of length ``k`` of the returned sequence holds ``a_s`` entries of stratum ``s`` with
    ``floor(k * n_s / N) <= a_s <= ceil(k * n_s / N)``, and a longer prefix never holds fewer entries of any
    stratum (house monotone), which largest-remainder quotas computed per size do not guarantee.

    Args:
        counts: ``n_s``, the number of items of each stratum (non-negative ints).

    Returns:
        list of ``N = sum(counts)`` stratum indices; stratum ``s`` appears ``counts[s]`` times. Ties (equal
        priority ``n_s / (a_s + 1)``) go to the lower stratum index.

    Raises:
        ValueError: a count is negative or not an int.
    """
    counts = list(counts)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in counts):
        raise ValueError(f"counts must be non-negative ints, got {counts}.")
    total = int(sum(counts))
    taken = [0] * len(counts)
    order: list[int] = []
    for k in range(1, total + 1):
        best = -1
        for s, n in enumerate(counts):
            # eligible: still below the upper quota ceil(k * n / total), i.e. taken * total < k * n
            if taken[s] * total >= k * n:
                continue
            # priority n / (taken + 1), compared exactly in integers
            if best < 0 or n * (taken[best] + 1) > counts[best] * (taken[s] + 1):
                best = s
        order.append(best)
        taken[best] += 1
    return order


def stratum_of(item: Mapping[str, Any], stratify: str | None, dataset_dir: str, where: str = "item") -> str:
    """The stratum name of one datalist item.

    Args:
        item: a raw datalist item (relative paths).
        stratify: ``None`` (one stratum, ``"all"``); ``"foreground"`` (``"foreground"`` if the mask under
            ``label`` has any non-zero pixel, else ``"background"``); or an item key whose value is an int or a
            string (``"label"`` for a classification class index, ``"class_name"``, ``"organ"``, ...).
        dataset_dir: folder the mask path is relative to.
        where: description of the item for error messages.

    Raises:
        KeyError: the item lacks the key.
        TypeError: the value is not an int/string (e.g. ``stratify="label"`` on a segmentation datalist, whose
            ``label`` is a mask path: use ``"foreground"``), or the mask path is not a string.
        FileNotFoundError: the mask file does not exist.
    """
    if stratify is None:
        return "all"
    if stratify == "foreground":
        if "label" not in item:
            raise KeyError(f"{where} lacks the 'label' mask path needed for stratify='foreground'; it has {sorted(item)}.")
        label = item["label"]
        if not isinstance(label, str):
            raise TypeError(
                f"stratify='foreground' reads the mask file under 'label', but 'label' of {where} is "
                f"{type(label).__name__} {label!r}; use stratify='label' for class indices."
            )
        path = os.path.normpath(os.path.join(dataset_dir, label))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Mask {path} of {where} does not exist (paths are relative to {dataset_dir}).")
        from monai.transforms import LoadImage

        mask = LoadImage(image_only=True)(path)
        return "foreground" if bool((mask != 0).any()) else "background"
    if stratify not in item:
        raise KeyError(f"{where} lacks the stratification key {stratify!r}; it has {sorted(item)}.")
    value = item[stratify]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        hint = " (a mask path? use stratify='foreground')" if isinstance(value, str) else ""
        raise TypeError(f"Key {stratify!r} of {where} must be an int or a string to stratify by, got {value!r}{hint}.")
    if isinstance(value, str) and stratify == "label":
        raise TypeError(
            f"Key 'label' of {where} is the string {value!r}, a mask path: stratify segmentation datalists with "
            "stratify='foreground' (or a class key such as 'class_name')."
        )
    return str(value)


def _check_ratios(ratios: Any) -> list[float]:
    if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
        ratios = [ratios]
    if not isinstance(ratios, Sequence) or isinstance(ratios, str) or not ratios:
        raise TypeError(f"ratios must be a non-empty list of numbers in (0, 1], got {ratios!r}.")
    out = []
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) <= 1.0:
            raise ValueError(f"every ratio must be a number in (0, 1], got {r!r} in {list(ratios)}.")
        out.append(float(r))
    if len(set(out)) != len(out):
        raise ValueError(f"ratios must be distinct, got {out}.")
    return out


def subset_filename(datalist_file: PathLike, ratio: float, seed: int) -> str:
    """File name of one subset: ``<source stem>_ratio<ratio>_seed<seed>.json`` (e.g. ``busi_ratio0.2_seed0.json``)."""
    stem = os.path.splitext(os.path.basename(os.fspath(datalist_file)))[0]
    return f"{stem}_ratio{float(ratio):g}_seed{int(seed)}.json"


def make_nested_subsets(
    datalist_file: PathLike,
    output_dir: PathLike,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    stratify: str | None = "label",
    dataset_dir: PathLike | None = None,
    section: str = "training",
) -> dict[float, str]:
    """Write nested, stratified subsets of a datalist's training section, one datalist file per ratio.

    Each output keeps the source file's JSON layout: every top-level entry is copied unchanged (items keep their
    relative paths and key order, ``validation`` and ``test`` are identical), except ``section``, which holds
    the selected items in their source order, and ``metadata``, which becomes ``{"subset": {...},
    "source_metadata": <the source's metadata>}``; ``subset`` records the tool, the source file and its
    sha256, the section, ratio, seed, stratification, the ordering rule, and per-stratum ``selected`` /
    ``available`` counts. A decathlon ``numTraining`` is updated. Files whose content would not change are not
    rewritten (their mtime is kept).

    The subset of ratio ``r`` has ``k = floor(r * N + 0.5)`` of the ``N`` items; see the module docstring for
    how they are chosen (nested across ratios, stratified within one item per stratum, deterministic in
    ``seed``).

    Args:
        datalist_file: the source datalist (decathlon-style JSON).
        output_dir: folder of the subset files (created), named by :func:`subset_filename`.
        ratios: label ratios in (0, 1]; the paper's default ``(0.2, 0.4, 0.6, 0.8, 1.0)``.
        seed: the subset seed (recorded); the same seed gives the same subsets.
        stratify: ``"label"`` (classification class index), ``"foreground"`` (segmentation: any non-zero mask
            pixel; reads every mask), another item key (e.g. ``"class_name"``), or ``None``.
        dataset_dir: folder the datalist's paths are relative to (only read for ``"foreground"``); default: the
            datalist's folder.
        section: the section to subsample.

    Returns:
        ``{ratio: absolute path of its datalist}``.

    Raises:
        FileNotFoundError: the datalist or a mask file does not exist.
        ValueError: invalid JSON, a ratio outside (0, 1] or repeated, a ratio giving an empty subset, or an
            empty/missing section.
        KeyError: the section or a stratification key is missing.
        TypeError: an item is not a dict with an ``image`` path, or its stratum value is unusable.
    """
    source = os.path.abspath(os.fspath(datalist_file))
    data = _read_json(source, "Datalist file")
    ratio_list = _check_ratios(ratios)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    if section not in data:
        raise KeyError(f"Section {section!r} not found in datalist {source}; it has {sorted(data)}.")
    items = data[section]
    if not isinstance(items, list) or not items:
        raise ValueError(f"Section {section!r} of datalist {source} must be a non-empty list of items, got {items!r:.80}.")
    base = os.path.abspath(os.fspath(dataset_dir)) if dataset_dir is not None else os.path.dirname(source)
    strata: list[str] = []
    keys: list[str] = []
    for index, item in enumerate(items):
        where = f"item {index} of section {section!r} in {source}"
        if not isinstance(item, dict):
            raise TypeError(f"{where} must be a dict, got {type(item).__name__}: {item!r}.")
        keys.append(_image_key(item, where))
        strata.append(stratum_of(item, stratify, base, where))

    names = sorted(set(strata))
    members: dict[str, list[int]] = {name: [] for name in names}
    for index, name in enumerate(strata):
        members[name].append(index)
    for name in names:
        # the hash of the relative path (not the file position) decides, so reordering the source changes nothing
        members[name].sort(key=lambda i: (hashlib.sha256(f"{int(seed)}:{keys[i]}".encode()).hexdigest(), i))
    order = selection_order([len(members[name]) for name in names])
    total = len(items)

    with open(source, "rb") as f:
        source_sha256 = hashlib.sha256(f.read()).hexdigest()
    out_dir = os.path.abspath(os.fspath(output_dir))
    paths: dict[float, str] = {}
    for ratio in ratio_list:
        k = int(np.floor(ratio * total + 0.5))
        if k < 1:
            raise ValueError(f"ratio {ratio} of the {total} items of section {section!r} in {source} selects no item.")
        taken = [order[:k].count(s) for s in range(len(names))]
        chosen = sorted(i for s, name in enumerate(names) for i in members[name][: taken[s]])
        subset = copy.deepcopy(data)
        subset[section] = [items[i] for i in chosen]
        if section == "training" and isinstance(subset.get("numTraining"), int):
            subset["numTraining"] = k
        subset["metadata"] = {
            "subset": {
                "tool": _TOOL,
                "source_datalist": source,
                "source_sha256": source_sha256,
                "section": section,
                "ratio": ratio,
                "seed": int(seed),
                "stratify": stratify,
                "ordering": "per stratum by sha256(f'{seed}:{image}'); strata interleaved by the quota method "
                "(Balinski & Young), so subsets are nested and within one item of proportional per stratum",
                "num_items": k,
                "num_source_items": total,
                "strata": {name: {"selected": taken[s], "available": len(members[name])} for s, name in enumerate(names)},
            },
            "source_metadata": data.get("metadata", {}),
        }
        path = os.path.join(out_dir, subset_filename(source, ratio, seed))
        _write_json_atomic(subset, path)
        paths[ratio] = path
    return paths


def make_pretrain_datalist(
    datalist_files: str | Sequence[str],
    output: PathLike,
    organ: str,
    train_sections: Sequence[str] = ("training",),
    val_sections: Sequence[str] = ("validation",),
    exclude_sections: Sequence[str] = ("test",),
) -> str:
    """Write a pretraining datalist (``image`` + ``organ``) from the images of labeled datalists, test excluded.

    Self-supervised pretraining on the downstream test images would leak them into the model; this collects the
    images of ``train_sections`` (into ``training``) and ``val_sections`` (into ``validation``) of every file and
    drops each image that appears in any ``exclude_sections`` of any of the files (and puts an image listed in
    both a training and a validation section into ``training`` only). All files must share one ``dataset_dir``:
    their relative ``image`` paths are copied unchanged. Items are sorted by path.

    Args:
        datalist_files: one datalist or a list of them (e.g. the classification and segmentation datalists of
            one dataset, whose test sets differ).
        output: the JSON file to write (atomically).
        organ: the ``organ`` of every item (the pretrain bundle's organ-balanced sampler reads it).
        train_sections, val_sections, exclude_sections: the sections to use and to exclude.

    Returns:
        the absolute path of the written datalist.

    Raises:
        FileNotFoundError: a datalist does not exist.
        ValueError: invalid JSON, or no training image is left.
        TypeError: an item has no ``image`` path.
    """
    files = [datalist_files] if isinstance(datalist_files, (str, os.PathLike)) else list(datalist_files)
    if not files:
        raise ValueError("datalist_files is empty: name at least one datalist.")
    loaded = [(os.path.abspath(os.fspath(f)), _read_json(os.path.abspath(os.fspath(f)), "Datalist file")) for f in files]

    def images(sections: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for path, data in loaded:
            for name in sections:
                for index, item in enumerate(data.get(name) or []):
                    item = {"image": item} if isinstance(item, str) else item
                    found.add(_image_key(item, f"item {index} of section {name!r} in {path}"))
        return found

    excluded = images(exclude_sections)
    train = sorted(images(train_sections) - excluded)
    val = sorted(images(val_sections) - excluded - set(train))
    if not train:
        raise ValueError(f"no training image left in {files} after excluding the sections {list(exclude_sections)}.")
    data = {
        "training": [{"image": p, "organ": organ} for p in train],
        "validation": [{"image": p, "organ": organ} for p in val],
        "metadata": {
            "tool": "usfm_monai.data.subsets.make_pretrain_datalist",
            "source_datalists": [p for p, _ in loaded],
            "organ": organ,
            "train_sections": list(train_sections),
            "val_sections": list(val_sections),
            "excluded_sections": list(exclude_sections),
            "num_excluded_images": len(excluded),
            "sizes": {"training": len(train), "validation": len(val)},
        },
    }
    path = os.path.abspath(os.fspath(output))
    _write_json_atomic(data, path)
    return path
