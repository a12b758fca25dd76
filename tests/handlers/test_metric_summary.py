"""MetricSummary on a real Ignite engine: the numbers in summary.json are the mean ± std of the per-image values fed.

The expected numbers are computed here with the standard library (``statistics``), not with the package's helpers.
"""

import json
import math
import statistics

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import MeanDice

from usfm_monai.handlers import MetricSummary


class _Details:
    """Stands in for MONAI metric handlers with ``save_details=True``: at each epoch's end it puts the per-image
    values of that epoch into ``engine.state.metric_details``."""

    def __init__(self, per_epoch):
        self.per_epoch = per_epoch

    def attach(self, engine):
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine):
        engine.state.metric_details = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.per_epoch[engine.state.epoch - 1].items()}


def _stats(values):
    kept = [v for v in values if not math.isnan(v)]
    return {"mean": statistics.fmean(kept), "std": statistics.pstdev(kept), "n": len(kept),
            "n_nan": len(values) - len(kept)}


def _assert_summary(got, values):
    expected = _stats(values)
    assert got["n"] == expected["n"] and got["n_nan"] == expected["n_nan"]
    assert got["mean"] == pytest.approx(expected["mean"], abs=1e-12)
    assert got["std"] == pytest.approx(expected["std"], abs=1e-12)


def _run(batches, handlers, max_epochs=1):
    engine = Engine(lambda e, batch: batch)
    for handler in handlers:  # metrics first, as MONAI engines attach them before the handlers
        handler.attach(engine)
    engine.run(batches, max_epochs=max_epochs)
    return engine


def test_summary_of_monai_dice_details_matches_hand_computed_dice(tmp_path):
    """Driven by MONAI's own MeanDice(save_details=True): two classes per image, averaged per image, then over
    images."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):  # 3 batches of 2 images, 2 one-hot channels of 8 x 8
        label = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
        pred = (torch.rand(2, 1, 8, 8, generator=g) > 0.4).float()
        batches.append({"pred": torch.cat([1 - pred, pred], 1), "label": torch.cat([1 - label, label], 1)})
    dice = MeanDice(include_background=True, output_transform=lambda o: (o["pred"], o["label"]), save_details=True)
    engine = Engine(lambda e, batch: batch)
    dice.attach(engine, "dice")
    MetricSummary(str(tmp_path), extra={"checkpoint": "model.pt"}).attach(engine)
    engine.run(batches, max_epochs=1)

    per_image = []
    for b in batches:
        for p, t in zip(b["pred"], b["label"]):
            channels = [float(2 * (p[c] * t[c]).sum() / (p[c].sum() + t[c].sum())) for c in range(2)]
            per_image.append(sum(channels) / 2)
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert summary["info"] == {"checkpoint": "model.pt"} and set(summary["metrics"]) == {"dice"}
    _assert_summary(summary["metrics"]["dice"], per_image)
    assert "groups" not in summary


def test_nan_channels_and_images_are_left_out_of_the_mean(tmp_path):
    # image 2 has one undefined class (its value is the other class), image 3 none defined (left out, counted)
    values = [[0.5, 0.7], [math.nan, 0.2], [math.nan, math.nan], [1.0, 0.0]]
    nan = [[math.nan], [math.nan]]
    _run([0], [_Details([{"dsc": values, "hd95": nan}]), MetricSummary(str(tmp_path), filename="s.json")])
    with open(tmp_path / "s.json") as f:
        summary = json.load(f)
    _assert_summary(summary["metrics"]["dsc"], [0.6, 0.2, math.nan, 0.5])
    hd95 = summary["metrics"]["hd95"]  # undefined for every image: NaN mean and std, n = 0
    assert hd95["n"] == 0 and hd95["n_nan"] == 2 and math.isnan(hd95["mean"]) and math.isnan(hd95["std"])


def test_groups_follow_the_batch_key_and_restart_every_epoch(tmp_path):
    batches = [{"organ": ["liver", "breast"]}, {"organ": ["liver"]}, {"organ": ["thyroid", "breast"]}]
    epoch1 = {"ssim": [[0.1], [0.2], [0.3], [0.4], [0.5]], "psnr": [[20.0], [22.0], [24.0], [26.0], [30.0]]}
    epoch2 = {"ssim": [[0.9], [0.8], [0.7], [0.6], [0.5]], "psnr": [[10.0], [12.0], [14.0], [16.0], [18.0]]}
    summary_handler = MetricSummary(str(tmp_path), group_key="organ", extra={"split": "test"})
    _run(batches, [_Details([epoch1, epoch2]), summary_handler], max_epochs=2)  # raises if groups were not reset

    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)  # the second epoch's
    organs = ["liver", "breast", "liver", "thyroid", "breast"]
    assert list(summary["groups"]) == ["breast", "liver", "thyroid"]  # sorted
    for name, rows in epoch2.items():
        values = [r[0] for r in rows]
        _assert_summary(summary["metrics"][name], values)
        for organ in set(organs):
            _assert_summary(summary["groups"][organ][name], [v for v, o in zip(values, organs) if o == organ])
    assert summary["info"] == {"split": "test"}


def test_list_batches_of_dicts_are_grouped_per_item(tmp_path):
    batches = [[{"organ": "kidney"}, {"organ": "liver"}], [{"organ": "kidney"}]]
    _run(batches, [_Details([{"nmi": [[1.2], [1.8], [1.4]]}]), MetricSummary(str(tmp_path), group_key="organ")])
    with open(tmp_path / "summary.json") as f:
        groups = json.load(f)["groups"]
    _assert_summary(groups["kidney"]["nmi"], [1.2, 1.4])
    _assert_summary(groups["liver"]["nmi"], [1.8])


def test_group_count_mismatch_and_missing_details_are_errors(tmp_path):
    batches = [{"organ": ["liver", "breast"]}]
    with pytest.raises(RuntimeError, match="2 'organ' values for 3 images"):
        _run(batches, [_Details([{"ssim": [[0.1], [0.2], [0.3]]}]), MetricSummary(str(tmp_path), group_key="organ")])
    with pytest.raises(RuntimeError, match="save_details=True"):
        _run(batches, [MetricSummary(str(tmp_path))])
    assert not (tmp_path / "summary.json").exists()


def test_only_the_main_rank_writes(tmp_path, monkeypatch):
    handler = MetricSummary(str(tmp_path))
    engine = _run([0], [_Details([{"dsc": [[0.5]]}])])
    with monkeypatch.context() as m:  # rank 1 of an initialized process group
        m.setattr(torch.distributed, "is_initialized", lambda: True)
        m.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 1)
        handler(engine)
    assert not (tmp_path / "summary.json").exists()
    handler(engine)
    assert (tmp_path / "summary.json").is_file()
