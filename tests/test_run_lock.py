"""One run per output folder: the lock, stale-lock take-over, the writability check and stale temp-file clean-up."""

import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from usfm_monai import run_lock
from usfm_monai.io import is_atomic_temp_file
from usfm_monai.run_lock import LOCK_FILENAME, OutputFolderInUseError, claim_output_dir, release_output_dirs



def _hold(folder, ready):
    """Another run: claim the folder, say so, and keep running until killed."""
    claim_output_dir(folder)
    ready.send(os.getpid())
    time.sleep(120)


@pytest.fixture(autouse=True)
def _release():
    yield
    release_output_dirs()


def test_second_run_on_a_locked_folder_stops_and_names_the_holder(tmp_path):
    """Regression: two runs on one bundle_root both wrote models/ and both exited 0."""
    folder = tmp_path / "models"
    context = multiprocessing.get_context("fork")  # a separate process without re-importing torch
    ready, child_end = context.Pipe()
    holder = context.Process(target=_hold, args=(folder, child_end), daemon=True)
    holder.start()
    try:
        assert ready.poll(30) and ready.recv() == holder.pid
        with pytest.raises(OutputFolderInUseError, match=rf"{folder}.*PID {holder.pid} on host {socket.gethostname()}"):
            claim_output_dir(folder)
    finally:
        holder.kill()
        holder.join()
    lock = claim_output_dir(folder)  # the holder died: its lock is taken over
    assert lock.held and claim_output_dir(folder) is lock  # a second claim from the same process reuses it


def test_pid_fallback_takes_over_a_dead_holder_and_refuses_a_live_one(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "fcntl", None)  # a file system without flock: the recorded PID decides
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "models"
    folder.mkdir()
    host = socket.gethostname()
    (folder / LOCK_FILENAME).write_text(f'{{"pid": {int(dead.stdout)}, "host": "{host}"}}\n')
    assert claim_output_dir(folder).held
    release_output_dirs()
    (folder / LOCK_FILENAME).write_text(f'{{"pid": {os.getppid()}, "host": "{host}"}}\n')  # alive
    with pytest.raises(OutputFolderInUseError, match=f"PID {os.getppid()}"):
        claim_output_dir(folder)


def test_unwritable_output_folder_is_reported_before_training(tmp_path):
    """Regression: a models/ folder that cannot be written was found only at the first save, after an epoch."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=f"output folder {blocker}/models is not writable"):
        claim_output_dir(blocker / "models")
    with pytest.raises(PermissionError, match=f"output folder {blocker}/eval is not writable"):
        claim_output_dir(tmp_path / "models", writable=[blocker / "eval"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_reported(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=f"output folder {folder} is not writable"):
            claim_output_dir(folder)
    finally:
        folder.chmod(0o755)


def test_stale_temp_files_of_interrupted_writes_are_removed(tmp_path):
    """Regression: the .<name>.XXXXXXXX.tmp files of killed atomic writes were never removed."""
    folder = tmp_path / "models"
    folder.mkdir()
    fd, stale = tempfile.mkstemp(prefix=".checkpoint_last.pt.", suffix=".tmp", dir=folder)  # as atomic_write names it
    os.close(fd)
    keep = [folder / "notes.tmp", folder / ".hidden.tmp", folder / "model.pt"]
    for path in keep:
        path.write_text("")
    assert is_atomic_temp_file(stale) and not any(is_atomic_temp_file(str(p)) for p in keep)
    claim_output_dir(folder)
    assert not os.path.exists(stale)
    assert all(p.exists() for p in keep)


def test_other_ranks_neither_lock_nor_write(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert claim_output_dir(tmp_path / "models") is None
    assert not (tmp_path / "models").exists()
