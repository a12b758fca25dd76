"""ProgressBar on a real Ignite engine: what the bar writes to stderr, and that other ranks write nothing."""

import re

import pytest
import torch
from ignite.engine import Engine, Events

from usfm_monai.handlers import ProgressBar
from usfm_monai.handlers.progress import every_n_iterations


def _trainer():
    """Three iterations per epoch; iteration i returns a loss of 0.25 * i and a learning rate of 0.125."""
    return Engine(lambda engine, batch: {"loss": 0.25 * batch, "lr": 0.125})


def test_running_loss_from_a_scalar_output_transform(capsys):
    engine = _trainer()
    ProgressBar(output_transform=lambda output: output["loss"], desc="pretrain").attach(engine)
    engine.run([1, 2, 3], max_epochs=2)
    err = capsys.readouterr().err
    for loss in ("0.25", "0.5", "0.75"):  # the scalar is shown under the name "loss"
        assert f"loss={loss}" in err
    assert "pretrain [1/2]" in err and "pretrain [2/2]" in err
    assert "lr=" not in err


def test_dict_output_transform_is_shown_as_given(capsys):
    engine = _trainer()
    bar = ProgressBar(output_transform=lambda output: {"g_loss": output["loss"], "lr": output["lr"]}, desc="gan")
    bar.attach(engine)
    engine.run([2], max_epochs=1)
    err = capsys.readouterr().err
    assert "g_loss=0.5" in err and "lr=0.125" in err
    assert not re.search(r"(?<!g_)loss=", err)  # not re-wrapped under "loss"


@pytest.mark.parametrize("transform", [lambda output: output["loss"], lambda output: {"loss": output["loss"]}],
                         ids=["scalar", "dict"])
def test_values_are_named_without_desc(capsys, transform):
    # ignite 0.5 takes the first part of a value name for the tag shown by desc: without a desc of ours the bar
    # read "=0.5" (all four bundles attach the bar without desc)
    engine = _trainer()
    ProgressBar(output_transform=transform).attach(engine)  # as the bundles' train.json attach it
    engine.run([2], max_epochs=1)
    assert "loss=0.5" in capsys.readouterr().err


def test_without_output_transform_the_bar_shows_no_values(capsys):
    engine = _trainer()
    ProgressBar().attach(engine)
    engine.run([1, 2], max_epochs=1)
    err = capsys.readouterr().err
    assert "[1/2]" in err and "=" not in err


@pytest.mark.parametrize("persist", [False, True])
def test_persist_keeps_one_finished_line_per_epoch(capsys, persist):
    engine = _trainer()
    ProgressBar(output_transform=lambda output: output["loss"], persist=persist).attach(engine)
    engine.run([1, 2, 3], max_epochs=2)
    err = capsys.readouterr().err
    if persist:  # each epoch's bar stays, finished
        assert err.count("\n") == 2 and err.count("100%") == 2
    else:  # each epoch's bar is erased at its end
        assert "\n" not in err and "100%" not in err and err.endswith("\r")


def test_other_ranks_attach_nothing(capsys, monkeypatch):
    engine = _trainer()
    with monkeypatch.context() as m:  # rank 1 of an initialized process group
        m.setattr(torch.distributed, "is_initialized", lambda: True)
        m.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 1)
        ProgressBar(output_transform=lambda output: output["loss"], desc="train").attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    assert capsys.readouterr().err == ""


def test_every_n_iterations_filter():
    engine = _trainer()
    fired = []
    engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=every_n_iterations(3)),
                             lambda e: fired.append(e.state.iteration))
    engine.run([1, 2, 3, 4], max_epochs=2)  # iterations 1..8
    assert fired == [1, 3, 6]
    with pytest.raises(ValueError):
        every_n_iterations(0)
