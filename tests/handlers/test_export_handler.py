"""EncoderExport on a real Ignite engine: the file holds exactly the encoder's weights and plain metadata."""

import os

import pytest
import torch
from ignite.engine import Engine, Events

from usfm_monai.handlers import EncoderExport
from usfm_monai.networks.encoder import create_usfm_encoder


class _Holder(torch.nn.Module):
    """A downstream-style model: an encoder attribute and a head, as USFMMaskedImageModel has."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = create_usfm_encoder("tiny", img_size=32, use_fc_norm=False, drop_path_rate=0.0)
        self.head = torch.nn.Linear(192, 3)


def _nudging_engine(encoder):
    """An engine whose every iteration adds 1 to the patch embedding bias, so each epoch's export differs."""

    def step(engine, batch):
        with torch.no_grad():
            encoder.patch_embed.proj.bias.add_(1.0)
        return batch

    return Engine(step)


def _assert_same_tensors(saved, expected):
    assert list(saved) == list(expected)
    for key, value in expected.items():
        assert saved[key].device.type == "cpu" and torch.equal(saved[key], value.detach().cpu()), key


def test_export_at_completion_holds_the_final_encoder_weights(tmp_path):
    model = _Holder()
    path = tmp_path / "models" / "nested" / "usfm_encoder.pt"  # the folders do not exist yet
    engine = _nudging_engine(model.encoder)
    EncoderExport(model, str(path)).attach(engine)
    exports = []
    engine.add_event_handler(Events.COMPLETED, lambda e: exports.append(os.path.isfile(path)))
    epoch_files = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_files.append(os.path.isfile(path)))
    engine.run([0, 1, 2], max_epochs=2)

    assert epoch_files == [False, False] and exports == [True]  # written once, at COMPLETED
    saved = torch.load(path, weights_only=True)  # tensors and plain containers only
    assert set(saved) == {"state_dict", "config"}
    _assert_same_tensors(saved["state_dict"], model.encoder.state_dict())  # no "encoder." prefix, no head
    bias = saved["state_dict"]["patch_embed.proj.bias"]
    torch.manual_seed(0)
    initial = create_usfm_encoder("tiny", img_size=32, use_fc_norm=False, drop_path_rate=0.0)
    torch.testing.assert_close(bias, initial.patch_embed.proj.bias.detach() + 6.0)  # after all 6 iterations
    assert saved["config"]["epoch"] == 2 and "best_metric" not in saved["config"]
    assert saved["config"]["embed_dim"] == 192 and saved["config"]["img_size"] in (32, [32, 32], (32, 32))
    assert os.listdir(path.parent) == ["usfm_encoder.pt"]  # no temporary file left behind


def test_each_call_overwrites_with_the_current_weights_and_best_metric(tmp_path):
    """As a ``BestModelSaver(on_save=...)`` callback: every call replaces the file with the weights of that moment."""
    model = _Holder()
    path = tmp_path / "usfm_encoder.pt"
    export = EncoderExport(torch.nn.DataParallel(model), str(path))  # wrapper stripped on export
    engine = _nudging_engine(model.encoder)
    seen = []

    def on_epoch(e):
        e.state.best_metric = -1 if e.state.epoch == 1 else 0.25 * e.state.epoch
        export(e)
        seen.append(torch.load(path, weights_only=True))
        seen[-1]["expected"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}

    engine.add_event_handler(Events.EPOCH_COMPLETED, on_epoch)
    engine.run([0, 1], max_epochs=3)

    assert [s["config"]["epoch"] for s in seen] == [1, 2, 3]
    # -1 is MONAI's "no best yet": not stored
    assert [s["config"].get("best_metric") for s in seen] == [None, 0.5, 0.75]
    for s in seen:
        _assert_same_tensors(s["state_dict"], s["expected"])
    assert not torch.equal(seen[0]["state_dict"]["patch_embed.proj.bias"], seen[2]["state_dict"]["patch_embed.proj.bias"])


def test_only_the_main_rank_writes(tmp_path, monkeypatch):
    model = _Holder()
    path = tmp_path / "usfm_encoder.pt"
    engine = Engine(lambda e, b: b)
    engine.run([0], max_epochs=1)
    export = EncoderExport(model, str(path))
    with monkeypatch.context() as m:  # rank 1 of an initialized process group
        m.setattr(torch.distributed, "is_initialized", lambda: True)
        m.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 1)
        export(engine)
    assert not path.exists()
    export(engine)  # rank 0 / no process group
    assert path.is_file()


def test_a_model_without_encoder_is_refused(tmp_path):
    engine = Engine(lambda e, b: b)
    engine.run([0], max_epochs=1)
    with pytest.raises(TypeError):
        EncoderExport(torch.nn.Linear(2, 2), str(tmp_path / "usfm_encoder.pt"))(engine)
    assert not (tmp_path / "usfm_encoder.pt").exists()
