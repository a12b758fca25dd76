"""One run per output folder: an exclusive lock, a writability check and stale temporary files removed at start-up.

Two runs given the same ``bundle_root`` would otherwise both write ``models/checkpoint_last.pt`` and
``models/model.pt``, each overwriting the other's, and both exit 0. A bundle's ``initialize`` section calls
:func:`claim_output_dir` before anything is loaded or cached, so a second run stops at once with a message naming
the folder and the process holding it; a read-only folder is reported before the first epoch rather than at its
end; and the ``.*.tmp`` files that killed runs left behind are removed.

The lock is a ``fcntl.flock`` on ``<folder>/.usfm_monai.lock``: the kernel drops it when the holding process
dies, however it dies, so a stale lock (dead process) is simply taken over. The file also records the holder's
PID, host and command line for the message. Where ``flock`` is unavailable (no ``fcntl``, or a file system that
refuses it) the recorded PID decides: a lock whose process is no longer alive on the same host is taken over.
Under ``torchrun`` only rank 0 writes, so only rank 0 locks.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from usfm_monai.io import remove_stale_temp_files
from usfm_monai.utils import is_main_process

try:  # POSIX only; elsewhere the PID check below decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILENAME", "RunLock", "OutputFolderInUseError", "claim_output_dir", "release_output_dirs"]

logger = logging.getLogger(__name__)

LOCK_FILENAME = ".usfm_monai.lock"

# Locks this process holds, by real path: a second claim from the same process (a resumed run in the same
# Python session, an evaluation after training) reuses the lock instead of refusing itself.
_HELD: dict[str, RunLock] = {}


class OutputFolderInUseError(RuntimeError):
    """Another live process holds the run lock of an output folder."""


def _main_rank() -> bool:
    # torchrun sets RANK before the process group exists; either source says whether this is rank 0
    return is_main_process() and os.environ.get("RANK", "0") == "0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _check_writable(folder: str) -> None:
    """Create ``folder`` if needed and write a probe file into it (``os.access`` answers yes to root everywhere)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"output folder {folder} is not writable ({e.strerror or e}): this run would fail at its first save. "
            "Fix its permissions or point --bundle_root (or the folder's config key) somewhere writable."
        ) from e


class RunLock:
    """An exclusive, process-lifetime lock on an output folder (see the module docstring).

    Args:
        folder: the folder to lock; the lock file is ``<folder>/.usfm_monai.lock``.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.path.realpath(os.fspath(folder))
        self.path = os.path.join(self.folder, LOCK_FILENAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any]) -> OutputFolderInUseError:
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        if holder.get("command"):
            who += f", command: {holder['command']}"
        return OutputFolderInUseError(
            f"output folder {self.folder} is in use by another run ({who}); two runs would overwrite each other's "
            f"checkpoints. Wait for it to finish, stop it, or give this run another --bundle_root. (Lock file: "
            f"{self.path}; it is released automatically when that process exits.)"
        )

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`OutputFolderInUseError` naming the holder.

        Raises:
            OutputFolderInUseError: a live process holds the lock.
            PermissionError: the folder cannot be created or written.
        """
        if self.held:
            return self
        _check_writable(self.folder)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise self._refuse(self._holder()) from None
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
            if not locked:  # no flock here: fall back to the recorded PID
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and pid != os.getpid() and (host != socket.gethostname() or _pid_alive(pid)):
                    raise self._refuse(holder)
                if pid is not None:
                    logger.warning(f"taking over the stale lock {self.path} of PID {pid} on {host} (not running).")
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the lock file stays: deleting it would let two processes lock different files)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # closing the descriptor releases the lock anyway
        finally:
            os.close(fd)
        _HELD.pop(self.folder, None)


def claim_output_dir(
    folder: str | os.PathLike, writable: Iterable[str | os.PathLike] = (), clean_temp_files: bool = True
) -> RunLock | None:
    """Start-up checks of a run that writes into ``folder``: lock it, check it is writable, remove stale temp files.

    Held until :func:`release_output_dirs` or the end of the process. Bundle configs call it from
    ``initialize``, before datasets are cached or networks built, so a refused run costs nothing.

    Args:
        folder: the folder to lock (the bundle's ``models/`` for training, its ``eval/`` for evaluation).
        writable: other folders the run writes into; each is created if needed and checked to be writable.
        clean_temp_files: remove the ``.<name>.XXXXXXXX.tmp`` files interrupted atomic writes left in ``folder``
            (safe: while the lock is held no other run writes there).

    Returns:
        the lock on the main rank; ``None`` on the other ranks of a distributed run, which write nothing.

    Raises:
        OutputFolderInUseError: another live process holds the folder.
        PermissionError: ``folder`` or one of ``writable`` cannot be created or written.
    """
    if not _main_rank():
        return None
    for other in writable:
        _check_writable(os.path.realpath(os.fspath(other)))
    key = os.path.realpath(os.fspath(folder))
    lock = _HELD.get(key)
    if lock is None or not lock.held:
        lock = RunLock(key).acquire()
        _HELD[key] = lock
        logger.info(f"locked output folder {key} for this run (PID {os.getpid()}).")
    if clean_temp_files:
        remove_stale_temp_files(key)
    return lock


def release_output_dirs() -> None:
    """Release every output-folder lock this process holds (bundle configs call it in ``finalize``)."""
    for lock in list(_HELD.values()):
        lock.release()
    _HELD.clear()
