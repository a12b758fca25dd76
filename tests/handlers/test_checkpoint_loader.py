"""CheckpointLoader: loads like MONAI's, and a model.pt that is not a torch file is named with the cause."""

import pytest
import torch
from ignite.engine import Engine

from usfm_monai.handlers.checkpoint_loader import CheckpointLoader


def _engine():
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 1
    return engine


def test_loads_wrapped_and_bare_state_dicts(tmp_path):
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"model": src.state_dict()}, tmp_path / "model.pt")
    CheckpointLoader(str(tmp_path / "model.pt"), {"model": dst})(_engine())
    assert torch.equal(dst.weight, src.weight)
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "bare.pt")
    CheckpointLoader(str(tmp_path / "bare.pt"), {"model": dst})(_engine())
    assert torch.equal(dst.weight, torch.load(tmp_path / "bare.pt", weights_only=True)["weight"])


@pytest.mark.parametrize("content", [b"", b"oops\n", bytes(range(50))], ids=["empty", "text", "garbage"])
def test_bad_model_file_is_named(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"model checkpoint file \S*model\.pt"):
        CheckpointLoader(str(tmp_path / "model.pt"), {"model": torch.nn.Linear(3, 2)})(_engine())
