"""Datalists: load and validate decathlon-style JSON files, and the ``"synthetic"`` default dataset.

A datalist is MONAI's decathlon format (``monai.data.load_decathlon_datalist``)::

    {"training": [{"image": "benign/benign (1).png", "label": 0, "class_name": "benign"}, ...],
     "validation": [...], "test": [...], "metadata": {"tool": ..., "seed": 0, ...}}

with every path relative to the dataset folder (``dataset_dir``). Item keys: ``image``; ``organ``
(pretraining); ``label`` (a mask path for segmentation, an int class index for classification);
``target`` (the high-quality image for enhancement).

Unlike ``load_decathlon_datalist``, which only checks that the file and section exist, :func:`load_datalist`
validates the whole list up front (required keys, referenced files, and with ``verify_files`` that every file is a
readable 8-bit image: :mod:`usfm_monai.data.checks`), and :func:`resolve_datalist` checks classification labels
against the classes, so a bad dataset fails before a loader is built, naming the item (MONAI's ``Workflow.run``
only warns on an empty loader; a bad file would fail in a DataLoader worker without its path).

The ``"synthetic"`` default is generated into the bundle by :mod:`usfm_monai.data.synthetic`. The bundles ask for it
with ``resolve_datalist(..., defer=True)``, which returns a :class:`DeferredDatalist`: its length and items are
known (and checked) from the generation parameters, and the images are only written when something first reads an
item, or when the bundle's ``run`` step calls :func:`materialize`. So parsing a config, or building a ``Dataset``
(or a :class:`~usfm_monai.data.dataset.DeferredCacheDataset`), its organ-balanced sampler and its ``DataLoader``
(``ConfigWorkflow.check_properties()``) writes nothing; code that only needs the items' labels or organs reads
:func:`planned_items`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from monai.config import PathLike

from usfm_monai.data.checks import find_unreadable_files
from usfm_monai.data.synthetic import ensure_synthetic_dataset, synthetic_datalist
from usfm_monai.io import read_json, save_json_atomic
from usfm_monai.utils import ensure_bool

__all__ = [
    "TASK_REQUIRED_KEYS",
    "PATH_KEYS",
    "TASK_PATH_KEYS",
    "DeferredDatalist",
    "check_class_labels",
    "load_datalist",
    "materialize",
    "resolve_datalist",
    "write_datalist",
]

#: The keys each task's items must carry.
TASK_REQUIRED_KEYS = {
    "pretrain": ("image",),
    "segmentation": ("image", "label"),
    "classification": ("image", "label"),
    "enhancement": ("image", "target"),
}

#: Keys whose string values are file paths (relative to ``dataset_dir``).
PATH_KEYS = ("image", "label", "target")

#: The path keys of each task: a classification ``label`` is a class index, never a path.
TASK_PATH_KEYS = {
    "pretrain": PATH_KEYS,
    "segmentation": PATH_KEYS,
    "classification": ("image", "target"),
    "enhancement": PATH_KEYS,
}

_MAX_LISTED = 5


def _listed(problems: Sequence[str]) -> str:
    """The first few problems, one a line, and how many more there are."""
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return "\n  " + "\n  ".join(problems[:_MAX_LISTED]) + more


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
    verify_files: bool = False,
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
        verify_files: also check that every referenced file is a readable 8-bit image (a header check with
            :func:`usfm_monai.data.checks.verify_image_file`: empty, truncated, non-image and 16-bit files fail).

    Returns:
        list of dicts (new objects), with absolute normalized paths under ``path_keys``. Items given as bare
        strings (allowed by the decathlon format for ``test``) become ``{"image": path}``.

    Raises:
        FileNotFoundError: the datalist file does not exist, or referenced files are missing (the first few
            are listed, with the count).
        ValueError: the file is not valid JSON, is not a JSON object, or the section is not a list; with
            ``verify_files``, referenced files are not readable images (the first few are listed with their item
            index, key and reason, and the count).
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
    out, missing = _resolve_items(items, section, datalist_file, base, required_keys, path_keys, check_files)
    if missing:
        listed = "\n  ".join(missing[:_MAX_LISTED])
        raise FileNotFoundError(
            f"{len(missing)} file(s) referenced by section {section!r} of {datalist_file} do not exist "
            f"(paths resolved against {base}); the first {min(len(missing), _MAX_LISTED)}:\n  {listed}"
        )
    if verify_files:
        problems = find_unreadable_files(out, path_keys, where=f"section {section!r} of {datalist_file}")
        if problems:
            raise ValueError(
                f"{len(problems)} file(s) referenced by section {section!r} of {datalist_file} are not readable "
                f"8-bit images:{_listed(problems)}\nFix or remove these items (check_files=False skips this check)."
            )
    return out


def _resolve_items(
    items: Sequence[Any],
    section: str,
    datalist_file: str,
    base: str,
    required_keys: Sequence[str],
    path_keys: Sequence[str],
    check_files: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The items of one section with checked keys and absolute paths, and the referenced paths that are missing."""
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
    return out, missing


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


def check_class_labels(
    items: Sequence[Mapping[str, Any]],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    where: str = "datalist",
) -> None:
    """Check classification items: ``label`` an int class index in range, ``class_name`` on all items or none.

    Args:
        items: datalist items with a ``label`` key.
        num_classes: labels must lie in ``[0, num_classes)``; default ``len(class_names)``.
        class_names: when given, an item's ``class_name`` must equal ``class_names[label]``.
        where: how to name the list in the messages, e.g. ``"section 'training' of /data/busi.json"``.

    Raises:
        ValueError: ``num_classes`` and ``class_names`` disagree, or items are invalid: a label that is not an
            int (a string such as ``"benign"``, a float, a bool), out of range, a ``class_name`` present on some
            items only (MONAI's collation would fail with a bare ``KeyError``), or one that contradicts
            ``class_names``. The first few items are listed with their index, and the count.
    """
    if class_names is not None:
        class_names = list(class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but class_names has {len(class_names)}: {class_names}.")
        num_classes = len(class_names)
    problems = []
    for index, item in enumerate(items):
        label = item.get("label")
        if isinstance(label, bool) or not isinstance(label, int):
            hint = ""
            if isinstance(label, str) and class_names is not None and label in class_names:
                hint = f" (write {class_names.index(label)} for {label!r}, its index in class_names)"
            problems.append(f"item {index}: label must be an int class index, got {label!r}{hint}")
        elif num_classes is not None and not 0 <= label < num_classes:
            problems.append(
                f"item {index}: label {label} is out of range for num_classes={num_classes} (0..{num_classes - 1})"
            )
        elif class_names is not None and "class_name" in item and item["class_name"] != class_names[label]:
            problems.append(
                f"item {index}: class_name {item['class_name']!r} does not match label {label}, which is "
                f"{class_names[label]!r} in class_names {class_names}"
            )
    with_name = [i for i, item in enumerate(items) if "class_name" in item]
    if with_name and len(with_name) < len(items):
        without = [i for i, item in enumerate(items) if "class_name" not in item]
        problems.append(
            f"{len(with_name)} item(s) have a 'class_name' and {len(without)} do not (e.g. item {without[0]}); "
            "give it to every item or to none"
        )
    if problems:
        raise ValueError(
            f"{len(problems)} problem(s) with the classification labels of {where}:{_listed(problems)}"
        )


def resolve_datalist(
    dataset_dir: PathLike,
    datalist_file: PathLike | None = None,
    section: str = "training",
    task: str = "pretrain",
    synthetic_dir: PathLike | None = None,
    required_keys: Sequence[str] | None = None,
    synthetic_kwargs: Mapping[str, Any] | None = None,
    check_files: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    defer: bool = False,
) -> list[dict[str, Any]] | DeferredDatalist:
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
        check_files: check at start-up that every listed file is a readable 8-bit image
            (``load_datalist(verify_files=True)``, a header check); ``False`` skips it for very large sets (files
            must still exist).
        num_classes, class_names: classification only: the labels are checked against them
            (:func:`check_class_labels`); ``label`` is a class index there, never a path.
        defer: for the synthetic default, return a :class:`DeferredDatalist` that generates the dataset when an
            item is first read (or on :func:`materialize`) instead of now; its items, the parameters and the labels
            are still checked now. A real dataset is always loaded and checked now. The bundles pass ``True``, so
            that reading a config (``check_properties``) writes nothing.

    Returns:
        list of dicts with absolute paths, validated by :func:`load_datalist` (or, with ``defer``, a
        :class:`DeferredDatalist` of the same items).

    Raises:
        ValueError: unknown ``task``, ``synthetic_dir`` missing for the synthetic dataset, an unreadable file
            (``check_files``), or bad classification labels.
        FileNotFoundError: ``dataset_dir`` or the datalist does not exist, or referenced files are missing.
        KeyError, TypeError: see :func:`load_datalist`.
    """
    if task not in TASK_REQUIRED_KEYS:
        raise ValueError(f"task must be one of {tuple(TASK_REQUIRED_KEYS)}, got {task!r}.")
    keys = TASK_REQUIRED_KEYS[task] if required_keys is None else tuple(required_keys)
    verify = ensure_bool("check_files", check_files)
    options = dict(required_keys=keys, path_keys=TASK_PATH_KEYS[task], verify_files=verify)
    if os.fspath(dataset_dir) == "synthetic":
        if synthetic_dir is None:
            raise ValueError(
                'dataset_dir="synthetic" needs synthetic_dir, the folder to generate the synthetic dataset into '
                "(e.g. <bundle>/data/synthetic_<task>)."
            )
        if ensure_bool("defer", defer):
            return DeferredDatalist(
                synthetic_dir, section, task, keys, synthetic_kwargs, verify, num_classes, class_names
            )
        path = ensure_synthetic_dataset(os.fspath(synthetic_dir), task, **dict(synthetic_kwargs or {}))
        items = load_datalist(path, section, base_dir=os.path.dirname(path), **options)
    else:
        dataset_dir = os.path.abspath(os.fspath(dataset_dir))
        if not os.path.isdir(dataset_dir):
            raise FileNotFoundError(
                f"dataset_dir {dataset_dir} is not a folder; pass a dataset folder or 'synthetic' for the built-in "
                "data."
            )
        path = _find_datalist(datalist_file if datalist_file is not None else "datalist.json", dataset_dir)
        items = load_datalist(path, section, base_dir=dataset_dir, **options)
    if task == "classification" and "label" in keys:
        check_class_labels(items, num_classes, class_names, where=f"section {section!r} of {path}")
    return items


class DeferredDatalist(Sequence):
    """One section of the synthetic default dataset, generated on first use rather than when a config is read.

    Made by ``resolve_datalist("synthetic", ..., defer=True)``. On creation it computes the section's items from the
    generation parameters (:func:`usfm_monai.data.synthetic.synthetic_datalist`: absolute paths, ``organ``,
    ``label``, ``class_name``; nothing is rendered or written) and checks them as :func:`resolve_datalist` would
    (required keys, classification labels), so a bad setting fails when the config is read.

    - ``len()`` is known without touching the disk, so a MONAI ``Dataset`` and its ``DataLoader`` (shuffling or
      distributed samplers included) can be built, as ``ConfigWorkflow.check_properties()`` does, before any
      image exists.
    - Reading items (indexing, how a dataset reads one; iteration; equality) and :meth:`materialize` make sure
      the files exist first: the dataset is generated into ``synthetic_dir`` (or reused) by
      :func:`usfm_monai.data.synthetic.ensure_synthetic_dataset` (idempotent, atomic, safe across processes and
      DDP ranks) and its ``datalist.json`` is loaded and checked by :func:`resolve_datalist` (``check_files``),
      with the same errors as before; then the checked items are served. A plain ``CacheDataset``, which reads
      every item when built, therefore generates it; :class:`~usfm_monai.data.dataset.DeferredCacheDataset`
      waits, and :func:`planned_items` gives the items (organs, labels) without generating.

    The bundles' ``run`` step calls :func:`materialize`, so the files are written by the main process before the
    loaders start their workers.

    Args:
        synthetic_dir, section, task, required_keys, synthetic_kwargs, check_files, num_classes, class_names: see
            :func:`resolve_datalist`.

    Raises:
        ValueError: bad generation parameters or classification labels.
        KeyError: an unknown section, or an item without a required key.
    """

    def __init__(
        self,
        synthetic_dir: PathLike,
        section: str = "training",
        task: str = "pretrain",
        required_keys: Sequence[str] | None = None,
        synthetic_kwargs: Mapping[str, Any] | None = None,
        check_files: bool = True,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if task not in TASK_REQUIRED_KEYS:
            raise ValueError(f"task must be one of {tuple(TASK_REQUIRED_KEYS)}, got {task!r}.")
        self.synthetic_dir = os.path.abspath(os.fspath(synthetic_dir))
        self.section = section
        self.task = task
        self.required_keys = TASK_REQUIRED_KEYS[task] if required_keys is None else tuple(required_keys)
        self.synthetic_kwargs = dict(synthetic_kwargs or {})
        self.check_files = ensure_bool("check_files", check_files)
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        plan_kwargs = {k: v for k, v in self.synthetic_kwargs.items() if k != "timeout"}
        sections = synthetic_datalist(task, **plan_kwargs)
        path = os.path.join(self.synthetic_dir, "datalist.json")
        if section not in sections:
            raise KeyError(
                f"Section {section!r} not found in datalist {path}; available sections: {sorted(sections)}."
            )
        self._planned, _ = _resolve_items(
            sections[section], section, path, self.synthetic_dir, self.required_keys, TASK_PATH_KEYS[task], False
        )
        if task == "classification" and "label" in self.required_keys:
            check_class_labels(self._planned, num_classes, self.class_names, where=f"section {section!r} of {path}")
        self._items: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()  # a CacheDataset reads items from a thread pool: generate once

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers started by spawn receive a pickled copy
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def planned(self) -> list[dict[str, Any]]:
        """The section's items as planned from the generation parameters (the items it serves once generated);
        reading them generates nothing, so their files may not exist yet."""
        return self._planned

    @property
    def materialized(self) -> bool:
        """Whether this process has generated (or found) and checked the files."""
        return self._items is not None

    def materialize(self) -> DeferredDatalist:
        """Generate the dataset (or reuse it) and load and check its section; idempotent. Returns ``self``."""
        with self._lock:
            if self._items is None:
                self._items = self._generate()
        return self

    def _generate(self) -> list[dict[str, Any]]:
        items = resolve_datalist(
            "synthetic", None, self.section, self.task, self.synthetic_dir, self.required_keys,
            self.synthetic_kwargs, self.check_files, self.num_classes, self.class_names,
        )
        if items != self._planned:
            raise RuntimeError(
                f"the synthetic dataset in {self.synthetic_dir} does not hold the planned items of section "
                f"{self.section!r} ({len(items)} items, {len(self._planned)} planned); this is a bug in "
                "usfm_monai.data.synthetic."
            )
        return items

    def __len__(self) -> int:
        return len(self._planned)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.materialize()._items)  # type: ignore[arg-type]

    def __getitem__(self, index):  # type: ignore[override]
        return self.materialize()._items[index]  # type: ignore[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DeferredDatalist, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "generated" if self.materialized else "not generated yet"
        return (
            f"DeferredDatalist(task={self.task!r}, section={self.section!r}, synthetic_dir={self.synthetic_dir!r}, "
            f"{len(self)} items, {state})"
        )


def materialize(*objects: Any) -> None:
    """Generate the deferred synthetic data behind ``objects`` now (the bundles call it in their ``run`` step).

    Each object is a :class:`DeferredDatalist`, a :class:`~usfm_monai.data.dataset.DeferredCacheDataset` (whose
    cache is then filled), or a dataset whose ``data`` is deferred (anything with a ``materialize()`` method, such
    as :class:`~usfm_monai.data.inference_inputs.SyntheticImageItems`); anything else (a real datalist, a dataset
    over one, ``None``) is left alone. Calling it in the main process before the loaders start writes the files
    once, instead of in the first DataLoader worker that reads an item.
    """
    for obj in objects:
        for target in (obj, getattr(obj, "data", None)):
            if callable(getattr(target, "materialize", None)):
                target.materialize()
                break


def planned_items(data: Any) -> Any:
    """The items of a datalist, read without generating deferred data: a :class:`DeferredDatalist`'s planned items
    (:attr:`DeferredDatalist.planned`, the items it serves once generated) or ``data`` itself. For code that needs
    only the items' fields (labels, organs), not their files."""
    return data.planned if isinstance(data, DeferredDatalist) else data


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
