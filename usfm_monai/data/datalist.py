"""Datalists: load and validate decathlon-style JSON files, and the ``"synthetic"`` default dataset.

A datalist is MONAI's decathlon format (``monai.data.load_decathlon_datalist``)::

    {"training": [{"image": "benign/benign (1).png", "label": 0, "class_name": "benign"}, ...],
     "validation": [...], "test": [...], "metadata": {"tool": ..., "seed": 0, ...}}

with every path relative to the dataset folder (``dataset_dir``). Item keys: ``image``; ``organ``
(pretraining); ``label`` (a mask path for segmentation, an int class index for classification);
``target`` (the high-quality image for enhancement).

Unlike ``load_decathlon_datalist``, which only checks that the file and section exist, :func:`load_datalist`
validates the whole list up front (required keys, referenced files), so a bad dataset fails before a loader is
built (MONAI's ``Workflow.run`` only warns on an empty loader).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.config import PathLike

from usfm_monai.io import read_json, save_json_atomic

__all__ = ["TASK_REQUIRED_KEYS", "PATH_KEYS", "load_datalist", "resolve_datalist", "write_datalist"]

#: The keys each task's items must carry.
TASK_REQUIRED_KEYS = {
    "pretrain": ("image",),
    "segmentation": ("image", "label"),
    "classification": ("image", "label"),
    "enhancement": ("image", "target"),
}

#: Keys whose string values are file paths (relative to ``dataset_dir``).
PATH_KEYS = ("image", "label", "target")

_MAX_LISTED = 5


def _resolve_value(value: Any, base_dir: str, where: str) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return os.path.normpath(os.path.join(base_dir, os.fspath(value)))
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        # a list of files is loaded by LoadImaged as a multi-channel image
        return [os.path.normpath(os.path.join(base_dir, os.fspath(v))) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # a class index (classification) or a regression target
    raise TypeError(f"{where} must be a path, a list of paths or a number, got {type(value).__name__}: {value!r}.")


def load_datalist(
    datalist_file: PathLike,
    section: str = "training",
    base_dir: PathLike | None = None,
    required_keys: Sequence[str] = ("image",),
    path_keys: Sequence[str] = PATH_KEYS,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Load one section of a decathlon-style datalist, resolve its paths and validate it.

    Args:
        datalist_file: the JSON file.
        section: the list to load, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: folder the relative paths are relative to; default: the datalist's folder.
        required_keys: keys every item must have.
        path_keys: keys whose string values are paths to resolve (and check); int/float values (class
            indices) are left alone. Other keys (``organ``, ``class_name``) are copied unchanged.
        check_files: check that every referenced file exists.

    Returns:
        list of dicts (new objects), with absolute normalized paths under ``path_keys``. Items given as bare
        strings (allowed by the decathlon format for ``test``) become ``{"image": path}``.

    Raises:
        FileNotFoundError: the datalist file does not exist, or referenced files are missing (the first few
            are listed, with the count).
        ValueError: the file is not valid JSON, is not a JSON object, or the section is not a list.
        KeyError: the section is absent (the available sections are listed) or an item lacks a required key
            (the item index and key are named).
        TypeError: an item is not a dict/string, or a path key holds something other than a path or number.
    """
    datalist_file = os.path.abspath(os.fspath(datalist_file))
    data = read_json(datalist_file, "Datalist file")
    if not isinstance(data, dict):
        raise ValueError(
            f"Datalist file {datalist_file} must hold a JSON object with lists such as 'training', "
            f"got a {type(data).__name__}."
        )
    available = sorted(k for k, v in data.items() if isinstance(v, list))
    if section not in data:
        raise KeyError(f"Section {section!r} not found in datalist {datalist_file}; available sections: {available}.")
    items = data[section]
    if not isinstance(items, list):
        raise ValueError(
            f"Section {section!r} of datalist {datalist_file} must be a list of items, got {type(items).__name__}."
        )
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.path.dirname(datalist_file)
    out: list[dict[str, Any]] = []
    missing: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict):
            raise TypeError(
                f"Item {index} of section {section!r} in {datalist_file} must be a dict (or a path string), "
                f"got {type(item).__name__}: {item!r}."
            )
        for key in required_keys:
            if key not in item:
                raise KeyError(
                    f"Item {index} of section {section!r} in {datalist_file} lacks the required key {key!r}; "
                    f"it has {sorted(item)}."
                )
        resolved = dict(item)
        for key in path_keys:
            if key not in item:
                continue
            where = f"Key {key!r} of item {index} of section {section!r} in {datalist_file}"
            resolved[key] = _resolve_value(item[key], base, where)
            if check_files:
                paths = resolved[key] if isinstance(resolved[key], list) else [resolved[key]]
                missing += [p for p in paths if isinstance(p, str) and not os.path.exists(p)]
        out.append(resolved)
    if missing:
        listed = "\n  ".join(missing[:_MAX_LISTED])
        raise FileNotFoundError(
            f"{len(missing)} file(s) referenced by section {section!r} of {datalist_file} do not exist "
            f"(paths resolved against {base}); the first {min(len(missing), _MAX_LISTED)}:\n  {listed}"
        )
    return out


def _find_datalist(datalist_file: PathLike, dataset_dir: str) -> str:
    """Absolute path as given, else relative to the current folder, else relative to ``dataset_dir``."""
    datalist_file = os.fspath(datalist_file)
    candidates = [datalist_file] if os.path.isabs(datalist_file) else [
        os.path.abspath(datalist_file),
        os.path.join(dataset_dir, datalist_file),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"Datalist file {datalist_file!r} not found; looked for: {candidates}.")


def resolve_datalist(
    dataset_dir: PathLike,
    datalist_file: PathLike | None = None,
    section: str = "training",
    task: str = "pretrain",
    synthetic_dir: PathLike | None = None,
    required_keys: Sequence[str] | None = None,
    synthetic_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The validated items of one datalist section, from a real dataset or the synthetic default.

    - ``dataset_dir == "synthetic"``: the synthetic dataset for ``task`` is generated on first use into
      ``synthetic_dir`` (:func:`usfm_monai.data.synthetic.ensure_synthetic_dataset`, idempotent and safe across
      DDP ranks) and its ``datalist.json`` is loaded; ``datalist_file`` is ignored.
    - otherwise ``dataset_dir`` is a real dataset folder, and ``datalist_file`` (default
      ``<dataset_dir>/datalist.json``) is found as an absolute path, relative to the current folder (e.g.
      ``data_lists/busi_classification.json``) or relative to ``dataset_dir``; paths inside it are relative to
      ``dataset_dir``.

    Args:
        dataset_dir: ``"synthetic"`` or a dataset folder.
        datalist_file: the datalist for a real dataset.
        section: ``"training"``, ``"validation"`` or ``"test"``.
        task: ``"pretrain"``, ``"segmentation"``, ``"classification"`` or ``"enhancement"``; picks the synthetic
            dataset and the default ``required_keys`` (:data:`TASK_REQUIRED_KEYS`).
        synthetic_dir: where the synthetic dataset lives, e.g. ``<bundle>/data/synthetic_<task>``.
        required_keys: keys every item must have; default by ``task``.
        synthetic_kwargs: extra arguments of ``ensure_synthetic_dataset`` (``num_images``, ``image_size``,
            ``seed``, ...).

    Returns:
        list of dicts with absolute paths, validated by :func:`load_datalist`.

    Raises:
        ValueError: unknown ``task``, or ``synthetic_dir`` missing for the synthetic dataset.
        FileNotFoundError: ``dataset_dir`` or the datalist does not exist, or referenced files are missing.
        KeyError, TypeError: see :func:`load_datalist`.
    """
    if task not in TASK_REQUIRED_KEYS:
        raise ValueError(f"task must be one of {tuple(TASK_REQUIRED_KEYS)}, got {task!r}.")
    keys = TASK_REQUIRED_KEYS[task] if required_keys is None else tuple(required_keys)
    if os.fspath(dataset_dir) == "synthetic":
        if synthetic_dir is None:
            raise ValueError(
                'dataset_dir="synthetic" needs synthetic_dir, the folder to generate the synthetic dataset into '
                "(e.g. <bundle>/data/synthetic_<task>)."
            )
        from usfm_monai.data.synthetic import ensure_synthetic_dataset

        path = ensure_synthetic_dataset(os.fspath(synthetic_dir), task, **dict(synthetic_kwargs or {}))
        return load_datalist(path, section, base_dir=os.path.dirname(path), required_keys=keys)
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} is not a folder; pass a dataset folder or 'synthetic' for the built-in data."
        )
    path = _find_datalist(datalist_file if datalist_file is not None else "datalist.json", dataset_dir)
    return load_datalist(path, section, base_dir=dataset_dir, required_keys=keys)


def _relative(value: Any, base_dir: str) -> Any:
    if isinstance(value, (str, os.PathLike)):
        value = os.fspath(value)
        return os.path.relpath(value, base_dir).replace(os.sep, "/") if os.path.isabs(value) else value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [_relative(v, base_dir) for v in value]
    return value


def write_datalist(
    path: PathLike,
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    metadata: Mapping[str, Any] | None = None,
    base_dir: PathLike | None = None,
    path_keys: Sequence[str] = PATH_KEYS,
) -> str:
    """Write a decathlon-style datalist atomically, with paths relative to ``base_dir``.

    Absolute paths under ``path_keys`` are made relative to ``base_dir`` (with ``/`` separators); relative paths
    are written as given. The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a partial file.

    Args:
        path: the JSON file to write (parent folders are created).
        sections: e.g. ``{"training": [...], "validation": [...], "test": [...]}``.
        metadata: written under ``"metadata"`` (tool, seed, split ratios, class names, ...).
        base_dir: folder paths are made relative to; default: the datalist's folder.
        path_keys: keys holding paths.

    Returns:
        the absolute path of the written file.

    Raises:
        ValueError: a section is named ``"metadata"``.
    """
    path = os.path.abspath(os.fspath(path))
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.path.dirname(path)
    if "metadata" in sections:
        raise ValueError("sections must not contain 'metadata'; pass it as the metadata argument.")
    data: dict[str, Any] = {}
    for name, items in sections.items():
        data[name] = [
            {k: (_relative(v, base) if k in path_keys else v) for k, v in item.items()} for item in items
        ]
    data["metadata"] = dict(metadata or {})
    return save_json_atomic(data, path)
