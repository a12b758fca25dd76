"""Fig. 10 / Fig. 11 plots: the drawn lines, bands and bars are checked against means and stds worked out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from usfm_monai.apps.experiments.plots import (
    ablation_figure,
    aggregate_results,
    label_efficiency_figure,
    plot_ablation,
    plot_label_efficiency,
)

# f1 of method A at ratio 0.2: seeds 0/1/2 -> 0.5, 0.6, 0.7 (mean 0.6, sample std 0.1)
ROWS = [
    {"task": "cls", "method": m, "ratio": r, "seed": s, "metrics": {"f1": v, "acc": v + 0.1}}
    for m, r, values in [
        ("A", 0.2, [0.5, 0.6, 0.7]), ("A", 1.0, [0.8, 0.8, 0.8]),
        ("B", 0.2, [0.3, 0.5, 0.4]), ("B", 1.0, [0.6, 0.7, 0.8]),
    ]
    for s, v in enumerate(values)
] + [{"task": "seg", "method": "A", "ratio": 1.0, "seed": 0, "metrics": {"dsc": 0.75}}]


def test_aggregate_results_mean_and_std():
    stats = {(s["task"], s["method"], s["ratio"], s["metric"]): s for s in aggregate_results(ROWS)}
    a = stats[("cls", "A", 0.2, "f1")]
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(0.1) and a["n"] == 3
    assert a["seeds"] == [0, 1, 2]
    b = stats[("cls", "B", 1.0, "acc")]
    assert b["mean"] == pytest.approx(0.8) and b["std"] == pytest.approx(0.1)
    single = stats[("seg", "A", 1.0, "dsc")]
    assert single["mean"] == 0.75 and math.isnan(single["std"]) and single["n"] == 1  # one seed: no sample std
    assert aggregate_results(ROWS, ddof=0)[0]["std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))


def test_aggregate_ignores_nan_values():
    rows = [{"task": "t", "method": "m", "ratio": 1.0, "seed": s, "metrics": {"hd95": v}}
            for s, v in enumerate([1.0, float("nan"), 3.0])]
    (stat,) = aggregate_results(rows)
    assert stat["mean"] == 2.0 and stat["n"] == 2 and stat["std"] == pytest.approx(math.sqrt(2))


def test_label_efficiency_lines_and_bands():
    fig = label_efficiency_figure(ROWS, {"cls": "f1", "seg": "dsc"}, titles={"cls": "Classification"})
    ax_cls, ax_seg = fig.axes
    assert ax_cls.get_title() == "Classification" and ax_seg.get_title() == "seg"
    lines = {line.get_label(): line for line in ax_cls.get_lines()}
    np.testing.assert_allclose(lines["A"].get_xdata(), [20, 100])
    np.testing.assert_allclose(lines["A"].get_ydata(), [0.6, 0.8])
    np.testing.assert_allclose(lines["B"].get_ydata(), [0.4, 0.7])
    # the band of A spans mean ± sample std: 0.5..0.7 at 20 %, 0.8..0.8 at 100 %
    band = ax_cls.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.5) and band[:, 1].max() == pytest.approx(0.8)
    # a single seed draws a line but no band
    assert len(ax_seg.get_lines()) == 1 and len(ax_seg.collections) == 0


def test_ablation_bars():
    fig = ablation_figure(ROWS, {"cls": "f1"}, methods=["B", "A"])
    (ax,) = fig.axes
    bars = ax.patches
    # bar order follows methods; heights are the means at the largest ratio (1.0)
    assert [round(b.get_height(), 6) for b in bars] == [0.7, 0.8]
    centers = [b.get_x() + b.get_width() / 2 for b in bars]
    np.testing.assert_allclose(centers, [-0.2, 0.2])
    fig = ablation_figure(ROWS, {"cls": "f1"}, methods=["A", "B"], ratio=0.2)
    assert [round(b.get_height(), 6) for b in fig.axes[0].patches] == [0.6, 0.4]


def test_png_files(tmp_path):
    path = plot_label_efficiency(ROWS, str(tmp_path / "a" / "fig10.png"), [("cls", "f1")], dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (round(4.2 * 50), round(3.4 * 50))
    path = plot_ablation(ROWS, str(tmp_path / "fig11.png"), {"cls": "f1", "seg": "dsc"}, ["A", "B"], dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize(
    "call",
    [
        lambda: label_efficiency_figure(ROWS, {}),
        lambda: label_efficiency_figure(ROWS, {"cls": "dsc"}),
        lambda: ablation_figure(ROWS, {"cls": "f1"}, methods=[]),
        lambda: ablation_figure(ROWS, {"seg": "dsc"}, methods=["B"]),
    ],
    ids=["no-panel", "unknown-metric", "no-method", "no-result"],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_missing_row_key():
    with pytest.raises(KeyError, match="seed"):
        aggregate_results([{"task": "t", "method": "m", "ratio": 1.0, "metrics": {}}])
