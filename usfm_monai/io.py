"""Atomic file writes: nothing a user trained or measured is ever left half-written.

Every writer goes through :func:`atomic_write`: the data goes to a temporary file in the destination folder,
is flushed to disk, and is moved over the destination with ``os.replace`` (atomic on POSIX and Windows). The
previous version of the file stays intact until the new one is complete, and a failed write leaves no debris.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import torch

__all__ = ["atomic_write", "read_json", "save_torch_atomic", "save_json_atomic", "save_text_atomic"]


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
