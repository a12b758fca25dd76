"""Atomic writes keep the previous file intact when a write fails and leave no temporary files."""

import json
import os
import stat

import pytest
import torch

from usfm_monai.io import atomic_write, load_torch_file, save_json_atomic, save_torch_atomic


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


class Opaque:
    """A class ``weights_only=True`` refuses to unpickle."""


def _bad_torch_files(folder):
    good = folder / "good.pt"
    torch.save({"w": torch.arange(3.0)}, good)
    data = good.read_bytes()
    (folder / "text.pt").write_text("hello, not a checkpoint\n")
    (folder / "garbage.pt").write_bytes(bytes(range(7, 107)))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"w": Opaque()}, folder / "objects.pt")
    return good


@pytest.mark.parametrize(
    "name, reason",
    [
        ("text.pt", "is not a file written by torch.save"),
        ("garbage.pt", "is not a file written by torch.save"),
        ("truncated.pt", "is not a file written by torch.save"),
        ("empty.pt", r"is empty \(0 bytes\)"),
        ("objects.pt", r"refused by torch.load\(weights_only=True\).*Unsupported global"),
    ],
)
def test_load_torch_file_names_the_file_and_why(tmp_path, name, reason):
    good = _bad_torch_files(tmp_path)
    assert torch.equal(load_torch_file(good)["w"], torch.arange(3.0))
    with pytest.raises(ValueError, match=f"encoder weights file .*{name}.* {reason}"):
        load_torch_file(tmp_path / name, "encoder weights")
    with pytest.raises(FileNotFoundError, match="gone.pt does not exist"):
        load_torch_file(tmp_path / "gone.pt")
