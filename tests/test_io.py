"""Atomic writes keep the previous file intact when a write fails and leave no temporary files."""

import json
import os
import stat

import pytest
import torch

from usfm_monai.io import atomic_write, save_json_atomic, save_torch_atomic


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom")


def test_save_atomic_keeps_previous_file_on_failure(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_torch_atomic({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        save_torch_atomic({"w": _Unpicklable()}, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], torch.ones(3))


def test_json_atomic_and_permissions(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    save_json_atomic({"dsc": 0.5}, path)
    assert json.loads(path.read_text()) == {"dsc": 0.5}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(ValueError, match="mode must contain 'w'"):
        with atomic_write(path, "rb"):
            pass
    with pytest.raises(ZeroDivisionError):
        with atomic_write(path, "w") as f:
            f.write("partial")
            1 / 0
    assert json.loads(path.read_text()) == {"dsc": 0.5} and os.listdir(path.parent) == ["summary.json"]
