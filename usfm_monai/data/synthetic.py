"""The synthetic datasets: the embedded default data of every bundle and of the tests.

Real ultrasound corpora cannot ship with the code, so each bundle's ``dataset_dir`` defaults to ``"synthetic"``
(see :func:`usfm_monai.data.datalist.resolve_datalist`), and a small dataset is generated into the bundle on first
use. This module writes those datasets; the images come from the simulator in :mod:`usfm_monai.data.simulator`
(re-exported here: ``synthesize_image``, ``synthesize_pair``, ``image_seed``, ...), and the generated folder is
shared safely between processes by :mod:`usfm_monai.data.cached_folder`.

- :func:`synthetic_datalist`: the items of each section of a dataset, computed from its parameters without
  generating anything (how :class:`usfm_monai.data.datalist.DeferredDatalist` knows a section's length and checks
  its items before the images exist).
- :func:`make_synthetic_dataset`: write the PNGs (images, masks or low/high pairs) and the decathlon-style
  ``datalist.json`` of one task.
- :func:`ensure_synthetic_dataset`: idempotent, atomic and concurrency-safe :func:`make_synthetic_dataset` into a
  cached folder (what the bundles call).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from usfm_monai.data.cached_folder import ensure_folder, rank_zero_first
from usfm_monai.data.simulator import (  # noqa: F401  (re-exported: the simulator's names, private ones included)
    _ORGAN_PHYSICS,
    _QUALITY,
    GENERATOR_VERSION,
    GEOMETRIES,
    LESIONS,
    ORGANS,
    _as_size,
    _geometry,
    _render,
    image_seed,
    synthesize_image,
    synthesize_pair,
)
from usfm_monai.io import save_json_atomic

__all__ = [
    "ORGANS",
    "LESIONS",
    "GEOMETRIES",
    "TASKS",
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "image_seed",
    "synthesize_image",
    "synthesize_pair",
    "synthetic_datalist",
    "make_synthetic_dataset",
    "ensure_synthetic_dataset",
]

TASKS = ("pretrain", "segmentation", "classification", "enhancement")
#: Classification classes, sorted as BUSI's class folders are (``benign``, ``malignant``, ``normal``).
CLASS_NAMES = ("benign", "malignant", "normal")

#: The probe each organ is usually scanned with (used by the dataset generator).
DEFAULT_GEOMETRY = {
    "breast": "linear",
    "thyroid": "linear",
    "liver": "sector",
    "kidney": "sector",
    "fetal_head": "sector",
    "heart": "sector",
}

_DEFAULT_ORGANS = {
    "pretrain": ORGANS,
    "segmentation": ("breast",),
    "classification": ("breast",),
    "enhancement": ("liver", "kidney", "thyroid", "breast"),
}

#: ``metadata.tool`` of the datalists written here: how a folder made by this module is recognized.
TOOL = "usfm_monai.data.synthetic.make_synthetic_dataset"

_FOLDERS = {"pretrain": ("images",), "segmentation": ("images", "labels"), "classification": ("images",),
            "enhancement": ("low", "high")}


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    return n - n_val - n_test, n_val, n_test


def _dataset_params(
    task: str,
    num_images: int,
    image_size: int | Sequence[int],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    organs: Sequence[str] | None,
) -> dict[str, Any]:
    """Validated, JSON-normalized generation parameters (what :func:`ensure_synthetic_dataset` compares)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}.")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(frac) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac!r}.")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training images, got {val_fraction} + {test_fraction}."
        )
    organs = tuple(_DEFAULT_ORGANS[task] if organs is None else ([organs] if isinstance(organs, str) else organs))
    for organ in organs:
        if organ not in ORGANS:
            raise ValueError(f"organs must be a subset of {ORGANS}, got {organ!r}.")
    if not organs:
        raise ValueError("organs must not be empty.")
    return dict(
        task=task,
        num_images=int(num_images),
        image_size=list(_as_size(image_size)),
        seed=int(seed),
        val_fraction=float(val_fraction),
        test_fraction=float(test_fraction),
        organs=list(organs),
        generator_version=GENERATOR_VERSION,
    )


def _save_png(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _plan(params: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The datalist sections of a dataset and the images to render, from validated ``params``, writing nothing.

    Returns ``(sections, jobs)``: ``sections`` maps ``training``/``validation``/``test`` to items with paths
    relative to the dataset folder; ``jobs`` lists, per image, its ``name``, ``organ``, ``geometry``, ``seed``
    and ``lesion``.
    """
    task, organs = params["task"], params["organs"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    jobs = []
    for i in range(params["num_images"]):
        organ = organs[i % len(organs)]
        name = f"{i:05d}.png"
        lesion = None
        key = (organ, "")
        if task == "enhancement":
            item: dict[str, Any] = {"image": f"low/{name}", "target": f"high/{name}", "organ": organ}
        else:
            item = {"image": f"images/{name}", "organ": organ}
            if task == "classification":
                class_name = CLASS_NAMES[(i // len(organs)) % len(CLASS_NAMES)]
                lesion = None if class_name == "normal" else class_name
                item.update(label=CLASS_NAMES.index(class_name), class_name=class_name)
                key = (organ, class_name)
            elif task == "segmentation":
                lesion = ("benign", "malignant")[(i // len(organs)) % 2]
                item["label"] = f"labels/{name}"
        jobs.append(dict(name=name, organ=organ, geometry=DEFAULT_GEOMETRY[organ],
                         seed=image_seed(params["seed"], i), lesion=lesion))
        groups.setdefault(key, []).append(item)
    sections: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for key in sorted(groups):
        items = groups[key]
        n_train, n_val, _ = _split_counts(len(items), params["val_fraction"], params["test_fraction"])
        sections["training"] += items[:n_train]
        sections["validation"] += items[n_train : n_train + n_val]
        sections["test"] += items[n_train + n_val :]
    for section in sections.values():
        section.sort(key=lambda item: item["image"])
    return sections, jobs


def synthetic_datalist(
    task: str,
    num_images: int = 128,
    image_size: int | Sequence[int] = 256,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    organs: Sequence[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The sections :func:`make_synthetic_dataset` writes to ``datalist.json``, computed without writing anything.

    Arguments as :func:`make_synthetic_dataset`. Returns ``{"training": [...], "validation": [...], "test":
    [...]}`` with paths relative to the dataset folder, equal to the lists of the written ``datalist.json``. Each
    item's organ, class and split follow from its index, so this is cheap (no image is rendered).

    Raises:
        ValueError: bad parameters, as :func:`make_synthetic_dataset`.
    """
    params = _dataset_params(task, num_images, image_size, seed, val_fraction, test_fraction, organs)
    return _plan(params)[0]


def make_synthetic_dataset(
    output_dir: str,
    task: str,
    num_images: int = 128,
    image_size: int | Sequence[int] = 256,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    organs: Sequence[str] | None = None,
) -> str:
    """Write a synthetic dataset (8-bit grayscale PNGs) and its decathlon-style ``datalist.json``.

    Image ``i`` uses seed :func:`image_seed` ``(seed, i)``; its organ cycles through ``organs`` and, for
    classification, its class cycles through :data:`CLASS_NAMES`, so every class and organ is balanced. Within
    each (organ, class) group the first images go to training, the next to validation, the last to test.

    Item keys by task (paths relative to ``output_dir``):

    - ``pretrain``: ``{"image": "images/00000.png", "organ"}``.
    - ``segmentation``: ``{"image", "label": "labels/00000.png", "organ"}``; labels are 0/255 lesion masks;
      lesions alternate ``benign`` / ``malignant``.
    - ``classification``: ``{"image", "label": int, "class_name", "organ"}`` with ``label`` indexing
      :data:`CLASS_NAMES`.
    - ``enhancement``: ``{"image": "low/00000.png", "target": "high/00000.png", "organ"}``.

    Args:
        output_dir: folder to write into (created; existing files with the same names are overwritten).
        task: one of :data:`TASKS`.
        num_images: number of images (pairs for enhancement).
        image_size: ``H`` or ``(H, W)``.
        seed: base seed.
        val_fraction: fraction of each group for ``validation``.
        test_fraction: fraction of each group for ``test``.
        organs: organ families to cycle through; default per task (all six for pretraining, ``breast`` for
            segmentation and classification, liver/kidney/thyroid/breast for enhancement).

    Returns:
        the path of ``<output_dir>/datalist.json``.

    Raises:
        ValueError: bad ``task``, ``num_images``, fractions, ``organs`` or ``image_size``.
    """
    params = _dataset_params(task, num_images, image_size, seed, val_fraction, test_fraction, organs)
    size = tuple(params["image_size"])
    for folder in _FOLDERS[task]:
        os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
    sections, jobs = _plan(params)
    for job in jobs:
        name = job["name"]
        if task == "enhancement":
            low, high = synthesize_pair(job["organ"], size, job["geometry"], None, job["seed"])
            _save_png(os.path.join(output_dir, "low", name), low)
            _save_png(os.path.join(output_dir, "high", name), high)
            continue
        out = synthesize_image(job["organ"], size, job["geometry"], job["lesion"], job["seed"])
        _save_png(os.path.join(output_dir, "images", name), out["image"])
        if task == "segmentation":
            _save_png(os.path.join(output_dir, "labels", name), out["mask"] * np.uint8(255))
    metadata = dict(
        name=f"usfm-monai synthetic ultrasound ({task})",
        tool=TOOL,
        params=params,
        task=task,
        seed=params["seed"],
        image_size=params["image_size"],
        sizes={k: len(v) for k, v in sections.items()},
        generator_version=GENERATOR_VERSION,
        token=uuid.uuid4().hex,  # tells apart two generations with the same parameters
    )
    if task == "classification":
        metadata["class_names"] = list(CLASS_NAMES)
    if task == "segmentation":
        metadata["labels"] = {"0": "background", "255": "lesion"}
    # the items' paths are already relative to output_dir: written as they are (as write_datalist would)
    path = os.path.join(os.path.abspath(output_dir), "datalist.json")
    return save_json_atomic({**sections, "metadata": metadata}, path)


def _matches(datalist_path: str, params: dict[str, Any]) -> bool:
    """Whether a complete dataset made with ``params`` is at ``datalist_path``."""
    try:
        with open(datalist_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("metadata", {}).get("params") != params:
        return False
    root = os.path.dirname(datalist_path)
    for section in ("training", "validation", "test"):
        for item in data.get(section, []):
            for key in ("image", "label", "target"):
                if isinstance(item.get(key), str) and not os.path.isfile(os.path.join(root, item[key])):
                    return False
    return True


def _is_synthetic(folder: str) -> bool:
    """Whether ``folder`` is empty or holds a dataset made by this module (safe to replace)."""
    if not os.listdir(folder):
        return True
    try:
        with open(os.path.join(folder, "datalist.json")) as f:
            return json.load(f)["metadata"]["tool"] == TOOL
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _ensure(output_dir: str, params: dict[str, Any], timeout: float) -> str:
    datalist_path = os.path.join(output_dir, "datalist.json")
    if _matches(datalist_path, params):
        return datalist_path
    if os.path.isdir(output_dir) and not _is_synthetic(output_dir):
        raise ValueError(
            f"{output_dir} exists and is not a synthetic dataset made by usfm_monai (no datalist.json with "
            f"metadata.tool '{TOOL}'); refusing to replace it. Pass another synthetic_dir."
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{output_dir} exists and is not a folder; pass another synthetic_dir.")
    ensure_folder(
        output_dir,
        is_current=lambda: _matches(datalist_path, params),
        build=lambda tmp: make_synthetic_dataset(
            tmp,
            params["task"],
            num_images=params["num_images"],
            image_size=params["image_size"],
            seed=params["seed"],
            val_fraction=params["val_fraction"],
            test_fraction=params["test_fraction"],
            organs=params["organs"],
        ),
        timeout=timeout,
        purpose="generating the synthetic dataset",
    )
    return datalist_path


def ensure_synthetic_dataset(
    output_dir: str,
    task: str,
    num_images: int = 128,
    image_size: int | Sequence[int] = 256,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    organs: Sequence[str] | None = None,
    timeout: float = 1800.0,
) -> str:
    """Make sure ``output_dir`` holds the synthetic dataset with these parameters; return its datalist path.

    - Idempotent: a complete dataset whose ``metadata.params`` equal the requested parameters is reused as is;
      different parameters (or a missing file) regenerate it.
    - Atomic: the dataset is generated into a temporary sibling folder and moved into place with
      ``os.replace``, so readers never see a half-written dataset.
    - Safe under concurrency: a lock file ``<output_dir>.lock`` lets one process generate while the others
      wait, then reuse its result. Under an initialized ``torch.distributed`` process group, rank 0 generates
      first and the other ranks join after a barrier (and generate themselves only if they do not see rank 0's
      files, e.g. on node-local disks). See :mod:`usfm_monai.data.cached_folder`.

    Args:
        output_dir: the dataset folder, e.g. ``<bundle>/data/synthetic_<task>``.
        task, num_images, image_size, seed, val_fraction, test_fraction, organs: see
            :func:`make_synthetic_dataset`.
        timeout: seconds to wait for another process's lock before raising ``TimeoutError``.

    Returns:
        the path of ``<output_dir>/datalist.json``.

    Raises:
        ValueError: bad parameters (see :func:`make_synthetic_dataset`), or ``output_dir`` exists and is not
            a synthetic dataset (it is never replaced then).
        TimeoutError: the lock stayed held by a live process for ``timeout`` seconds.
    """
    params = _dataset_params(task, num_images, image_size, seed, val_fraction, test_fraction, organs)
    output_dir = os.path.abspath(os.fspath(output_dir))
    return rank_zero_first(lambda: _ensure(output_dir, params, timeout))
