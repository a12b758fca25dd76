"""EncoderWeightsLoader: loads an encoder file when the engine starts, before the handlers attached after it."""

import pytest
import torch
from ignite.engine import Engine, Events

from usfm_monai.handlers import EncoderWeightsLoader
from usfm_monai.networks import USFMClassifier, create_usfm_encoder, export_encoder


def _classifier():
    return USFMClassifier(num_classes=2, size="tiny", img_size=32, drop_path_rate=0.0)


def test_loads_at_start_before_the_handlers_attached_after_it(tmp_path):
    torch.manual_seed(0)
    path = export_encoder(create_usfm_encoder("tiny", img_size=32), str(tmp_path / "encoder.pt"))
    exported = torch.load(path, weights_only=True)["state_dict"]["patch_embed.proj.weight"]
    network = _classifier()
    loader = EncoderWeightsLoader(path, network)
    assert loader.report is None and not torch.equal(network.encoder.patch_embed.proj.weight, exported)

    engine = Engine(lambda engine, batch: None)
    seen = []
    loader.attach(engine)  # attached first: a resuming checkpoint handler attached later overrides its weights
    engine.add_event_handler(
        Events.STARTED, lambda e: seen.append(torch.equal(network.encoder.patch_embed.proj.weight, exported))
    )
    engine.run([0], max_epochs=1)
    assert seen == [True] and loader.report.layout == "usfm_monai_export" and loader.report.missing == []


def test_a_missing_file_fails_when_the_handler_is_built(tmp_path):
    missing = tmp_path / "models" / "usfm_encoder.pt"
    with pytest.raises(FileNotFoundError, match="usfm_encoder.pt"):
        EncoderWeightsLoader(missing, _classifier())

