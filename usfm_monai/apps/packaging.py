"""Pack a bundle into the zip that ``python -m monai.bundle download`` / ``load`` understand, for sharing.

The zip holds one base folder named after the bundle (``<name>/configs/...``, ``<name>/models/model.pt``,
``<name>/docs/...``, ``<name>/LICENSE``): MONAI extracts downloads with ``extractall(..., has_base=True)`` and
``monai.bundle load`` then reads ``<bundle_dir>/<name>/models/model.pt``. Weights larger than the model zoo's limit
(25 MB by default) are left out and listed in ``<name>/large_files.yml`` instead, in the zoo's format::

    large_files:
      - path: "models/model.pt"
        url: "https://.../seg_tn3k_v0.1.0/model.pt"
        hash_val: "<sha256 of the file>"
        hash_type: "sha256"

so that ``python -m monai.bundle download_large_files --bundle_path <name>`` fetches and checks them once they are
uploaded to ``url`` (``url_template``; without one the url is a placeholder that says what to upload).

Run outputs are never packed: ``data/`` (generated synthetic data), ``eval/``, ``runs/``, training-state
checkpoints (``models/checkpoint*.pt``), caches and temporary files. The zip is byte-for-byte reproducible (sorted
entries, fixed timestamps) and is written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ["PackedBundle", "pack_bundle", "pack_bundle_command", "file_sha256", "LARGE_FILES_NAME"]

logger = logging.getLogger(__name__)

LARGE_FILES_NAME = "large_files.yml"
#: folders of the bundle that are shipped (others, e.g. data/, eval/, runs/, are run outputs)
_SHIPPED_DIRS = ("configs", "docs", "models")
#: top-level files that are shipped when present
_SHIPPED_FILES = ("LICENSE", "README.md")
#: a fixed timestamp (the earliest a zip can hold) makes the archive reproducible
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_PLACEHOLDER_URL = "UPLOAD-{path}-AND-PUT-ITS-DOWNLOAD-URL-HERE"


@dataclass
class PackedBundle:
    """What :func:`pack_bundle` wrote.

    Attributes:
        zip_path: the archive.
        name: base folder inside the archive (the bundle's name).
        version: ``version`` of ``configs/metadata.json``.
        files: archive members, relative to the base folder, sorted.
        large_files: entries of ``large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``); empty when
            every file was small enough to carry.
    """

    zip_path: str
    name: str
    version: str
    files: List[str] = field(default_factory=list)
    large_files: List[Dict[str, str]] = field(default_factory=list)


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights files can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_shipped(rel_path: str) -> bool:
    parts = rel_path.split("/")
    name = parts[-1]
    if any(p == "__pycache__" or p.startswith(".") for p in parts[:-1]) or name.endswith((".pyc", ".pyo")):
        return False
    if name.startswith((".", "~")):
        return False  # .gitkeep, .DS_Store, .tmp_* files of atomic writes, editor backups
    if parts[0] == "models" and name.startswith("checkpoint"):
        return False  # full training state (optimizer, scheduler, engine): for resuming, not for sharing
    return True


def _bundle_files(bundle_dir: str) -> List[str]:
    files = [f for f in _SHIPPED_FILES if os.path.isfile(os.path.join(bundle_dir, f))]
    for top in _SHIPPED_DIRS:
        for root, dirs, names in os.walk(os.path.join(bundle_dir, top)):
            dirs.sort()
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), bundle_dir).replace(os.sep, "/")
                if _is_shipped(rel):
                    files.append(rel)
    return sorted(files)


def _large_files_yaml(entries: Sequence[Dict[str, str]]) -> str:
    # written by hand (every value quoted JSON-style, which YAML reads as is) so that no YAML package is needed
    lines = ["large_files:"]
    for entry in entries:
        lines.append(f"  - path: {json.dumps(entry['path'])}")
        for key in ("url", "hash_val", "hash_type"):
            lines.append(f"    {key}: {json.dumps(entry[key])}")
    return "\n".join(lines) + "\n"


def _zip_info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def pack_bundle(
    bundle_dir: str,
    output_zip: Optional[str] = None,
    large_file_threshold_mb: float = 25.0,
    url_template: Optional[str] = None,
    name: Optional[str] = None,
    require_weights: bool = True,
) -> PackedBundle:
    """Pack ``bundle_dir`` into a model-zoo style zip, moving weights above the threshold to ``large_files.yml``.

    Args:
        bundle_dir: the bundle folder (holding ``configs/metadata.json``).
        output_zip: the archive to write; default ``<bundle_dir>/../<name>_v<version>.zip``. Its folder must exist.
        large_file_threshold_mb: files under ``models/`` strictly larger than this (MB = 10**6 bytes) are left out
            of the archive and listed in ``large_files.yml`` (the model zoo's limit is 25 MB); ``float("inf")``
            carries every file. Configs, docs and LICENSE are always carried.
        url_template: download URL of a left-out file, formatted with ``name``, ``version``, ``path`` (relative to
            the bundle, e.g. ``models/model.pt``) and ``filename`` (e.g. ``model.pt``); e.g.
            ``"https://github.com/ORG/REPO/releases/download/{name}_v{version}/{filename}"``. ``None`` writes a
            placeholder naming the file to upload.
        name: base folder name inside the archive; default the bundle folder's name.
        require_weights: raise when ``models/model.pt`` is absent (a bundle without weights cannot run inference).

    Returns:
        A :class:`PackedBundle`.

    Raises:
        FileNotFoundError: ``bundle_dir`` has no ``configs/metadata.json``, ``models/model.pt`` is missing while
            ``require_weights``, or the folder of ``output_zip`` does not exist.
        ValueError: ``large_file_threshold_mb`` is negative, metadata has no ``version``, or ``url_template`` has an
            unknown field.
    """
    bundle_dir = os.path.abspath(os.fspath(bundle_dir))
    meta_path = os.path.join(bundle_dir, "configs", "metadata.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{bundle_dir} is not a bundle: {meta_path} does not exist.")
    if large_file_threshold_mb < 0:
        raise ValueError(f"large_file_threshold_mb must be >= 0, got {large_file_threshold_mb}.")
    with open(meta_path) as f:
        metadata = json.load(f)
    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{meta_path}: expected a 'version' string, found {version!r}.")
    name = name or os.path.basename(bundle_dir)
    weights = os.path.join(bundle_dir, "models", "model.pt")
    if require_weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights} does not exist: train the bundle (or copy its weights there) before packing, or pass "
            "require_weights=False to share the configs only."
        )
    if output_zip is None:
        output_zip = os.path.join(os.path.dirname(bundle_dir), f"{name}_v{version}.zip")
    output_zip = os.path.abspath(os.fspath(output_zip))
    out_folder = os.path.dirname(output_zip)
    if not os.path.isdir(out_folder):
        raise FileNotFoundError(f"folder of output_zip does not exist: {out_folder!r}.")

    threshold = large_file_threshold_mb * 1e6
    carried: List[str] = []
    large: List[Dict[str, str]] = []
    for rel in _bundle_files(bundle_dir):
        path = os.path.join(bundle_dir, rel)
        if rel == LARGE_FILES_NAME:
            continue  # regenerated below
        # only weights may stay out: configs, docs and LICENSE are what makes the archive a bundle
        if rel.startswith("models/") and os.path.getsize(path) > threshold:
            fields = {"name": name, "version": version, "path": rel, "filename": os.path.basename(rel)}
            try:
                url = (url_template or _PLACEHOLDER_URL).format(**fields)
            except KeyError as err:
                raise ValueError(
                    f"url_template {url_template!r} uses the unknown field {err}; available: {sorted(fields)}."
                ) from None
            large.append({"path": rel, "url": url, "hash_val": file_sha256(path), "hash_type": "sha256"})
            logger.info(f"{rel} ({os.path.getsize(path) / 1e6:.1f} MB) is listed in {LARGE_FILES_NAME}: {url}")
        else:
            carried.append(rel)

    members = sorted(carried + ([LARGE_FILES_NAME] if large else []))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".zip", dir=out_folder)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            zf.writestr(_zip_info(f"{name}/"), b"")
            for rel in members:
                if rel == LARGE_FILES_NAME:
                    zf.writestr(_zip_info(f"{name}/{rel}"), _large_files_yaml(large))
                else:
                    src_path = os.path.join(bundle_dir, rel)
                    with open(src_path, "rb") as src, zf.open(_zip_info(f"{name}/{rel}"), "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, output_zip)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info(f"packed {bundle_dir} into {output_zip} ({len(members)} files, {len(large)} large files listed)")
    return PackedBundle(zip_path=output_zip, name=name, version=version, files=members, large_files=large)


def pack_bundle_command(
    bundle_dir: str,
    output_zip: Optional[str] = None,
    large_file_threshold_mb: float = 25.0,
    url_template: Optional[str] = None,
    name: Optional[str] = None,
    require_weights: bool = True,
) -> None:
    """Pack a bundle into a model-zoo zip (see ``pack_bundle``); prints the archive and any large_files.yml entry."""
    packed = pack_bundle(bundle_dir, output_zip, large_file_threshold_mb, url_template, name, require_weights)
    print(f"{packed.zip_path}: {packed.name} v{packed.version}, {len(packed.files)} files")
    for entry in packed.large_files:
        print(f"  left out, listed in {LARGE_FILES_NAME}: {entry['path']} sha256 {entry['hash_val']} -> {entry['url']}")

