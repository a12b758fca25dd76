"""Atomic file writes: nothing a user trained or measured is ever left half-written.

Every writer goes through :func:`atomic_write`: the data goes to a temporary file in the destination folder,
is flushed to disk, and is moved over the destination with ``os.replace`` (atomic on POSIX and Windows). The
previous version of the file stays intact until the new one is complete, and a failed write leaves no debris.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import torch

__all__ = [
    "atomic_write",
    "read_json",
    "load_torch_file",
    "save_torch_atomic",
    "save_json_atomic",
    "save_text_atomic",
    "is_atomic_temp_file",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

# ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")`` names: the random part is 8 characters of
# ``tempfile._RandomNameSequence`` (lower-case letters, digits, "_").
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success move it to ``path``.

    The destination folder is created if needed, and the file gets ``0o644`` permissions (``mkstemp`` makes
    private files; checkpoints, datalists and reports are meant to be shared).

    Args:
        path: destination file.
        mode: ``"wb"`` or ``"w"`` (text).
        open_kwargs: passed to ``open`` (e.g. ``encoding``).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write writes files: mode must contain 'w', got {mode!r}.")
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj)`` to ``path`` atomically; returns the absolute path."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return os.path.abspath(os.fspath(path))


def save_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 2) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; returns the absolute path."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return os.path.abspath(os.fspath(path))


def save_text_atomic(text: str, path: str | os.PathLike) -> str:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns the absolute path."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return os.path.abspath(os.fspath(path))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load a JSON file; a missing file or bad JSON raises an error naming ``what`` and the path.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not valid JSON.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}.") from e


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with errors that name ``what``, the file and the cause.

    Every checkpoint, encoder export and weight file of the package is read through here. A file that is not a
    torch file at all (text, garbage, zero bytes, a truncated download) makes ``torch.load`` fail with whatever the
    unpickler tripped over (``EOFError``, ``KeyError: 101``, ``IndexError: pop from empty list``,
    ``UnpicklingError: invalid load key``); a real torch file holding objects other than tensors and plain
    containers is refused by ``weights_only=True``. Both become a ``ValueError`` that says which file and why.

    Args:
        path: the file.
        what: what the file is, for the messages (``"encoder weights"``, ``"inference model"``...).
        map_location: passed to ``torch.load``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty, is not a file written by ``torch.save``, or is refused by
            ``weights_only=True``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes): an interrupted copy or write?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises many types for a non-torch file; each is re-raised with context
        message = str(err)
        # torch's weights-only message is long; its last "WeightsUnpickler error: ..." line is the cause
        detail = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        cause = f"{type(err).__name__}: {' '.join(detail.split())}".rstrip(":. ")
        if "Unsupported global" in message:
            raise ValueError(
                f"{what} file {path} was refused by torch.load(weights_only=True): it holds objects other than "
                "tensors and plain containers. Re-save only its state dict, e.g. torch.save(ckpt['model'], path), in "
                f"a session you trust. ({cause})"
            ) from err
        raise ValueError(
            f"{what} file {path} ({size} bytes) is not a file written by torch.save (text, garbage or truncated?); "
            f"torch.load failed with {cause}."
        ) from err


def is_atomic_temp_file(name: str) -> bool:
    """Whether ``name`` has the form of :func:`atomic_write`'s temporary file names (``.<name>.XXXXXXXX.tmp``)."""
    return bool(_TEMP_NAME.match(os.path.basename(name)))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls left in ``folder`` (not recursive).

    A killed process cannot run ``atomic_write``'s clean-up, so its ``.<name>.XXXXXXXX.tmp`` file (a partial
    checkpoint can be gigabytes) stays forever. Call this only while no other process writes into ``folder``, e.g.
    holding its run lock (:func:`usfm_monai.run_lock.claim_output_dir`): a live writer's temporary file would go too.

    Returns:
        the removed paths (absolute), sorted.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and is_atomic_temp_file(entry.name):
            os.remove(entry.path)
            removed.append(entry.path)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) left by interrupted writes in {folder}: "
                    f"{[os.path.basename(p) for p in removed]}")
    return removed
