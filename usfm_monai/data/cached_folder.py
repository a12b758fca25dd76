"""A folder built once and shared: a lock file, an atomic publish, and rank 0 first under ``torch.distributed``.

Generated data (e.g. the synthetic datasets of :mod:`usfm_monai.data.synthetic`) is written into a folder that
several processes may want at the same time: the DDP ranks of one run, or two runs started together. The helpers
here make that safe without knowing what the folder holds:

- :func:`file_lock`: an exclusive lock by atomic creation of a lock file holding ``host:pid``; a lock whose owner
  died on this host is broken, one held by a live process is waited for up to a timeout.
- :func:`publish_folder`: build the content into a temporary sibling folder and move it into place with
  ``os.replace``, so readers never see a half-written folder (a stale folder is moved aside first).
- :func:`ensure_folder`: both together: reuse the folder when it is current, otherwise lock, check again (another
  process may have built it meanwhile) and publish a new build.
- :func:`rank_zero_first`: under an initialized process group, rank 0 runs a function first and the other ranks
  run it after a barrier (then usually just finding rank 0's result).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["file_lock", "publish_folder", "ensure_folder", "rank_zero_first"]

T = TypeVar("T")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(
    lock_path: str, timeout: float, purpose: str = "building the folder", poll: float = 0.2
) -> Iterator[None]:
    """Exclusive lock by atomic creation of ``lock_path``; a lock whose owner died on this host is broken.

    Args:
        lock_path: the lock file (holds ``host:pid`` of the owner while held; removed on release).
        timeout: seconds to wait for a lock held by a live process.
        purpose: what the owner is doing, for the timeout message (e.g. ``"generating the synthetic dataset"``).
        poll: seconds between attempts.

    Raises:
        TimeoutError: the lock stayed held by a live process for ``timeout`` seconds (the message says how to
            break it by hand).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock_path) as f:
                    host, pid = f.read().strip().rsplit(":", 1)
                if host == socket.gethostname() and not _pid_alive(int(pid)):
                    os.remove(lock_path)  # the owner died; nobody else will release it
                    continue
            except (OSError, ValueError):
                pass  # being written or removed right now: poll again
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Waited {timeout:.0f} s for the lock {lock_path} held by another process {purpose}. If no such "
                    "process is running, delete the lock file and retry."
                ) from None
            time.sleep(poll)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()}:{os.getpid()}")
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)


def publish_folder(folder: str, build: Callable[[str], Any]) -> None:
    """Run ``build(tmp)`` on a new temporary sibling of ``folder``, then move it into place atomically.

    A folder already at ``folder`` (a stale build) is moved aside first, since ``os.replace`` cannot replace a
    non-empty directory, and deleted afterwards. If ``build`` raises, the temporary folder is removed and
    ``folder`` is left as it was. The published folder gets mode ``0o755`` (``mkdtemp`` makes it private).
    Call it under :func:`file_lock` when other processes may publish the same folder.
    """
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(folder)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if os.path.lexists(folder):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.replace(folder, os.path.join(old, base))
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_folder(
    folder: str,
    is_current: Callable[[], bool],
    build: Callable[[str], Any],
    timeout: float = 1800.0,
    purpose: str = "building the folder",
) -> bool:
    """Make sure ``folder`` is current: reuse it, or build and publish it under the lock ``<folder>.lock``.

    Args:
        folder: the folder.
        is_current: whether the folder at its place is complete and up to date (called before and after taking
            the lock, so a build published meanwhile by another process is reused).
        build: writes the content into the folder it is given (a temporary sibling, see :func:`publish_folder`).
        timeout: seconds to wait for another process's lock (``TimeoutError`` after).
        purpose: for the lock's timeout message.

    Returns:
        whether this call built the folder.
    """
    if is_current():
        return False
    folder = os.path.abspath(folder)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with file_lock(folder.rstrip(os.sep) + ".lock", timeout, purpose):
        if is_current():  # published by the process that held the lock before us
            return False
        publish_folder(folder, build)
    return True


def rank_zero_first(fn: Callable[[], T]) -> T:
    """``fn()``, run by rank 0 first and by the other ranks after a barrier, under ``torch.distributed``.

    Without an initialized process group of more than one rank this is just ``fn()``. With one, rank 0 calls
    ``fn`` while the others wait at a barrier; then they call ``fn`` themselves, which for an idempotent ``fn``
    such as :func:`ensure_folder` finds rank 0's result (or builds its own copy on a node-local disk). In a
    DataLoader worker (a forked copy of a rank, which must not join the rank's barriers) it is just ``fn()``.
    """
    import torch.distributed as dist  # local import: keep this module light
    from torch.utils.data import get_worker_info

    in_worker = get_worker_info() is not None
    if not in_worker and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        result = fn() if dist.get_rank() == 0 else None
        dist.barrier()
        return fn() if dist.get_rank() != 0 else result  # type: ignore[return-value]
    return fn()
