"""Atomic saves and resume: an interrupted run resumed from its checkpoint ends where an uninterrupted run ends."""


import pytest
import torch
from ignite.engine import Events

from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from usfm_monai.handlers.checkpoint import BestModelSaver, GeneratorState, TrainingCheckpoint
from usfm_monai.handlers.nan_guard import NaNGuard


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
    return [{"image": x[i : i + 3], "label": y[i : i + 3]} for i in range(0, 12, 3)]  # 4 iterations per epoch


class _Scripted(Metric):
    """A key metric whose successive validations score ``scores[0]``, ``scores[1]``, ..."""

    def __init__(self, scores):
        self.scores = list(scores)
        super().__init__()

    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return self.scores.pop(0)


class _Crash:
    """Raises at a given iteration, like a killed process."""

    def __init__(self, at):
        self.at = at

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.at), self._crash)

    def _crash(self, engine):
        raise KeyboardInterrupt("killed")


def _make_trainer(ckpt_dir, epochs, extra_handlers=(), every=None, extra_save=None, scores=None, **ckpt_kwargs):
    """A small trainer with a full-state TrainingCheckpoint; ``scores``: also validate each epoch, the key metric
    taking these values in turn, with a BestModelSaver writing ``<ckpt_dir>/model.pt``."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_data(), network=net,
        optimizer=opt, loss_function=torch.nn.MSELoss(),
    )
    LrScheduleHandler(sched, epoch_level=False, print_lr=False).attach(trainer)
    if scores is not None:  # as in the bundles: validation runs before the checkpoint is written
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"), val_data_loader=_data()[:1], network=net,
            key_val_metric={"score": _Scripted(scores)}, val_handlers=[BestModelSaver(str(ckpt_dir), {"model": net})],
        )
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
        ckpt_kwargs["evaluator"] = evaluator
    TrainingCheckpoint(
        str(ckpt_dir), {"network": net, "optimizer": opt, "lr_scheduler": sched, **(extra_save or {})},
        every_n_iterations=every, **ckpt_kwargs,
    ).attach(trainer)
    for h in extra_handlers:
        h.attach(trainer)
    return trainer, net, opt


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path):
    reference, ref_net, _ = _make_trainer(tmp_path / "ref", epochs=4)
    reference.run()

    crashed, _, _ = _make_trainer(tmp_path / "run", epochs=4, extra_handlers=[_Crash(10)])
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    saved = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 8  # end of epoch 2: the crash in epoch 3 saved nothing

    resumed, net, opt = _make_trainer(tmp_path / "run", epochs=4)
    resumed.run()
    assert resumed.state.iteration == 16 and resumed.state.epoch == 4
    torch.testing.assert_close(net.weight, ref_net.weight)
    torch.testing.assert_close(net.bias, ref_net.bias)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (16 // 3))


def test_resume_mid_epoch_continues_from_saved_iteration(tmp_path):
    crashed, _, _ = _make_trainer(tmp_path, epochs=4, extra_handlers=[_Crash(7)], every=3)
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 6  # the periodic save inside epoch 2

    resumed, net, opt = _make_trainer(tmp_path, epochs=4, every=3)
    seen = {}

    def first_step(engine):  # the first step after resuming starts from the saved state
        seen["iteration"] = engine.state.iteration
        seen["weight"] = net.weight.detach().clone()
        seen["momentum"] = opt.state[net.weight]["momentum_buffer"].clone()

    resumed.add_event_handler(Events.ITERATION_STARTED(once=7), first_step)
    resumed.run()
    assert seen["iteration"] == 7 and resumed.state.iteration == 16
    torch.testing.assert_close(seen["weight"], saved["network"]["weight"])
    torch.testing.assert_close(seen["momentum"], saved["optimizer"]["state"][0]["momentum_buffer"])


def test_nan_guard_stops_without_overwriting_checkpoint(tmp_path):
    trainer, net, _ = _make_trainer(tmp_path, epochs=3, extra_handlers=[NaNGuard()])
    trainer.max_epochs = 1
    trainer.state.max_epochs = 1
    trainer.run()
    good = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    trainer2, net2, _ = _make_trainer(tmp_path, epochs=3, extra_handlers=[NaNGuard()])

    def poison(engine):  # resume loads good weights at STARTED; poison them after loading
        with torch.no_grad():
            net2.weight.fill_(float("nan"))

    trainer2.add_event_handler(Events.ITERATION_STARTED(once=5), poison)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer2.run()
    after = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert torch.isfinite(after["network"]["weight"]).all()
    assert after["trainer"]["iteration"] == good["trainer"]["iteration"]


def test_best_model_saver_saves_only_on_improvement(tmp_path):
    from types import SimpleNamespace

    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(str(tmp_path), {"model": net})
    calls = []
    saver.on_save = [lambda engine: calls.append(engine.state.epoch)]
    for epoch, best_epoch in [(1, 1), (2, 1), (3, 3)]:
        saver(SimpleNamespace(state=SimpleNamespace(epoch=epoch, best_metric_epoch=best_epoch, best_metric=0.5)))
    assert calls == [1, 3]
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.testing.assert_close(loaded["model"]["weight"], net.weight)


def test_resumed_run_keeps_best_model_when_validation_gets_worse(tmp_path):
    """Regression: the best key metric was not checkpointed, so the first validation after a resume counted as a
    new best (MONAI accepts any score while best_metric_epoch == -1) and overwrote model.pt with a worse model."""
    first, _, _ = _make_trainer(tmp_path, epochs=1, scores=[0.9])
    first.run()
    best = torch.load(tmp_path / "model.pt", weights_only=True)["model"]

    resumed, net, _ = _make_trainer(tmp_path, epochs=2, scores=[0.1])
    resumed.run()
    assert not torch.equal(net.weight, best["weight"])  # epoch 2 did train: a new save would differ
    kept = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    torch.testing.assert_close(kept["weight"], best["weight"])
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["evaluator_best_metric"] == {"best_metric": pytest.approx(0.9), "best_metric_epoch": 1}


def test_resume_restores_generators_and_global_rng(tmp_path):
    """Regression: generator states (mask, sampler) were not checkpointed, so a resumed run replayed the draws of
    the first run's first epoch; the global torch state (DataLoader shuffling) likewise."""

    def run(folder, epochs, draws):
        generator = torch.Generator().manual_seed(7)  # what a freshly started config builds

        class _Draw:
            def attach(self, engine):
                engine.add_event_handler(Events.EPOCH_STARTED, self)

            def __call__(self, engine):
                draws.append((torch.rand(2, generator=generator).tolist(), torch.rand(2).tolist()))

        trainer, _, _ = _make_trainer(folder, epochs, extra_handlers=[_Draw()], extra_save={"mask": generator})
        trainer.run()

    reference = []
    run(tmp_path / "ref", 2, reference)
    resumed = []
    run(tmp_path / "run", 1, resumed)
    run(tmp_path / "run", 2, resumed)
    assert resumed == reference


def test_generator_state_on_another_rank_is_reseeded_not_copied():
    saved = GeneratorState(torch.Generator().manual_seed(3)).state_dict()
    other_rank = dict(saved, rank=1)  # written by rank 1's view: this process is rank 0
    copies = []
    for _ in range(2):
        generator = torch.Generator()
        GeneratorState(generator).load_state_dict(other_rank)
        copies.append(torch.rand(4, generator=generator))
    same = torch.Generator()
    GeneratorState(same).load_state_dict(saved)
    torch.testing.assert_close(copies[0], copies[1])  # reproducible
    assert not torch.equal(copies[0], torch.rand(4, generator=same))  # but a stream of its own


def test_changed_learning_rate_on_resume_is_refused(tmp_path):
    """Regression: a new learning rate on a resumed run was silently replaced by the saved optimizer state."""
    trainer, _, _ = _make_trainer(tmp_path, epochs=1, fixed_settings={"learning_rate": 0.05})
    trainer.run()
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["settings"] == {"learning_rate": 0.05}
    changed, _, _ = _make_trainer(tmp_path, epochs=2, fixed_settings={"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"learning_rate=0\.05 in the checkpoint, 0\.1 now.*--resume False"):
        changed.run()
    same, _, _ = _make_trainer(tmp_path, epochs=2, fixed_settings={"learning_rate": 0.05})
    same.run()
    assert same.state.epoch == 2
    afresh, _, _ = _make_trainer(tmp_path, epochs=1, fixed_settings={"learning_rate": 0.1}, resume=False)
    afresh.run()
    assert afresh.state.iteration == 4


def test_fixed_settings_must_be_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"fixed_settings\['learning_rate'\]"):
        TrainingCheckpoint(str(tmp_path), {"net": torch.nn.Linear(1, 1)}, fixed_settings={"learning_rate": [0.1]})
