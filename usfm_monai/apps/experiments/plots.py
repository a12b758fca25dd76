"""Figures of the label-efficiency (paper Fig. 10) and ablation (paper Fig. 11) experiments.

Both figures are drawn from the rows of a grid's results table (:func:`usfm_monai.apps.experiments.grid.run_grid`),
one row per trained and evaluated cell ``{"task", "method", "ratio", "seed", "metrics": {name: value}}``.
Figures are built with ``matplotlib.figure.Figure`` + ``FigureCanvasAgg`` (no ``pyplot`` global state, safe in
worker processes and without a display).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ablation_figure", "aggregate_results", "label_efficiency_figure", "plot_ablation", "plot_label_efficiency"]


def aggregate_results(rows: Sequence[Mapping[str, Any]], ddof: int = 1) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every metric, per ``(task, method, ratio)``.

    Args:
        rows: result rows ``{"task", "method", "ratio", "seed", "metrics": {name: float}}``.
        ddof: delta degrees of freedom of the std: 1 (default) = sample std over seeds (NaN with one seed),
            0 = population std.

    Returns:
        rows ``{"task", "method", "ratio", "metric", "mean", "std", "n", "seeds"}`` sorted by task, method (first
        appearance), ratio and metric name; NaN values are left out of ``mean``/``std`` and ``n`` counts the rest.

    Raises:
        KeyError: a row lacks one of the keys above.
    """
    groups: dict[tuple[str, str, float], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str, float], list[int]] = defaultdict(list)
    method_order: dict[str, int] = {}
    for index, row in enumerate(rows):
        for key in ("task", "method", "ratio", "seed", "metrics"):
            if key not in row:
                raise KeyError(f"result row {index} lacks the key {key!r}; it has {sorted(row)}.")
        method_order.setdefault(row["method"], len(method_order))
        group = (str(row["task"]), str(row["method"]), float(row["ratio"]))
        seeds[group].append(int(row["seed"]))
        metrics = groups.setdefault(group, defaultdict(list))
        for name, value in row["metrics"].items():
            metrics[name].append(float(value))
    out = []
    for group in sorted(groups, key=lambda g: (g[0], method_order[g[1]], g[2])):
        for name in sorted(groups[group]):
            values = np.asarray(groups[group][name], dtype=np.float64)
            values = values[~np.isnan(values)]
            n = int(values.size)
            out.append({
                "task": group[0], "method": group[1], "ratio": group[2], "metric": name,
                "mean": float(values.mean()) if n else math.nan,
                "std": float(values.std(ddof=ddof)) if n > ddof else math.nan,
                "n": n, "seeds": sorted(seeds[group]),
            })
    return out


def _canvas(num_panels: int, panel_size: tuple[float, float]) -> tuple[Any, Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(num_panels, 3)
    rows = math.ceil(num_panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(num_panels)]
    return fig, canvas, axes


def _save(fig: Any, path: str, dpi: int) -> str:
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _check_panels(panels: Any) -> list[tuple[str, str]]:
    if isinstance(panels, Mapping):
        panels = list(panels.items())
    panels = [tuple(p) for p in panels]
    if not panels or any(len(p) != 2 for p in panels):
        raise ValueError(f"panels must be a non-empty list of (task, metric) pairs or a {{task: metric}} map, got {panels!r}.")
    return [(str(t), str(m)) for t, m in panels]


def label_efficiency_figure(
    rows: Sequence[Mapping[str, Any]],
    panels: Mapping[str, str] | Sequence[tuple[str, str]],
    methods: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
    ddof: int = 1,
) -> Any:
    """Fig. 10: a metric against the label ratio, one line per method, a mean ± std band over seeds.

    Each panel's x axis is the label ratio in percent; each method is one line through the means (in ratio
    order) and, where the std is finite, a ``fill_between`` band from mean - std to mean + std.

    Args:
        rows: result rows (see :func:`aggregate_results`).
        panels: ``{task: metric}`` or ``[(task, metric), ...]``, one panel each, e.g. ``{"busi_seg": "dsc",
            "busi_cls": "f1"}`` (the paper plots DSC and F1).
        methods: methods to draw, in legend order; default: all, in order of first appearance.
        titles: panel titles by task; default: the task name.
        ddof: std over seeds (1 = sample std; a single seed draws no band).

    Returns:
        a ``matplotlib.figure.Figure`` with an Agg canvas, one axes per panel.

    Raises:
        ValueError: ``panels`` is empty or malformed, or a panel has no data.
    """
    panel_list = _check_panels(panels)
    stats = aggregate_results(rows, ddof=ddof)
    all_methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    methods = list(methods) if methods is not None else all_methods
    fig, _, axes = _canvas(len(panel_list), (4.2, 3.4))
    for ax, (task, metric) in zip(axes, panel_list):
        drawn = 0
        for method in methods:
            points = sorted(
                (s["ratio"], s["mean"], s["std"]) for s in stats
                if s["task"] == task and s["method"] == method and s["metric"] == metric
            )
            if not points:
                continue
            ratio, mean, std = (np.asarray(v, dtype=np.float64) for v in zip(*points))
            (line,) = ax.plot(100 * ratio, mean, marker="o", label=method)
            band = np.isfinite(std)
            if band.any():
                ax.fill_between(100 * ratio[band], (mean - std)[band], (mean + std)[band], alpha=0.2,
                                color=line.get_color(), linewidth=0)
            drawn += 1
        if not drawn:
            raise ValueError(f"no result for task {task!r} and metric {metric!r} (methods {methods}).")
        ax.set_title((titles or {}).get(task, task))
        ax.set_xlabel("label ratio (%)")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def plot_label_efficiency(
    rows: Sequence[Mapping[str, Any]],
    path: str,
    panels: Mapping[str, str] | Sequence[tuple[str, str]],
    methods: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
    ddof: int = 1,
    dpi: int = 120,
) -> str:
    """Draw :func:`label_efficiency_figure` and save it as a PNG at ``path`` (folders created); return its path."""
    return _save(label_efficiency_figure(rows, panels, methods, titles, ddof), path, dpi)


def ablation_figure(
    rows: Sequence[Mapping[str, Any]],
    panels: Mapping[str, str] | Sequence[tuple[str, str]],
    methods: Sequence[str],
    ratio: float | None = None,
    titles: Mapping[str, str] | None = None,
    ddof: int = 1,
) -> Any:
    """Fig. 11: grouped bars, one group per (task, metric) panel, one bar per method, error bar = std over seeds.

    Bar ``m`` of group ``g`` is centred at ``g + (m - (M - 1) / 2) * 0.8 / M`` (``M`` methods) with the height of
    the method's mean at the compared ratio; a method without a result there has no bar in that group.

    Args:
        rows: result rows (see :func:`aggregate_results`).
        panels: ``{task: metric}`` or ``[(task, metric), ...]``; each becomes a group of bars.
        methods: the compared methods, in bar order (e.g. ``["USFM", "USFM-woF", "USFM-woS"]``).
        ratio: the label ratio compared; default: the largest ratio of each panel.
        titles: group labels by task; default: the task name.
        ddof: std over seeds.

    Returns:
        a ``matplotlib.figure.Figure`` with an Agg canvas and one axes.

    Raises:
        ValueError: ``panels`` or ``methods`` is empty, or a panel has no result of these methods.
    """
    panel_list = _check_panels(panels)
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty: name the methods to compare.")
    stats = aggregate_results(rows, ddof=ddof)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.2 + 0.6 * len(methods) * len(panel_list)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    labels = []
    labeled: set[str] = set()
    for g, (task, metric) in enumerate(panel_list):
        ratios = [s["ratio"] for s in stats if s["task"] == task and s["metric"] == metric and s["method"] in methods]
        if not ratios:
            raise ValueError(f"no result for task {task!r}, metric {metric!r} and methods {methods}.")
        at = max(ratios) if ratio is None else float(ratio)
        for m, method in enumerate(methods):
            found = [s for s in stats if s["task"] == task and s["metric"] == metric and s["method"] == method
                     and math.isclose(s["ratio"], at)]
            if not found:
                continue
            mean, std = found[0]["mean"], found[0]["std"]
            ax.bar(g + (m - (len(methods) - 1) / 2) * width, mean, width,
                   yerr=std if math.isfinite(std) else None, capsize=3, color=f"C{m}",
                   label=None if method in labeled else method)
            labeled.add(method)
            ax.annotate(f"{mean:.3f}", (g + (m - (len(methods) - 1) / 2) * width, mean), ha="center",
                        va="bottom", fontsize="x-small")
        labels.append(f"{(titles or {}).get(task, task)}\n{metric} @ {100 * at:g}% labels")
    ax.set_xticks(range(len(panel_list)), labels, fontsize="small")
    ax.set_ylabel("metric (mean ± std over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_ablation(
    rows: Sequence[Mapping[str, Any]],
    path: str,
    panels: Mapping[str, str] | Sequence[tuple[str, str]],
    methods: Sequence[str],
    ratio: float | None = None,
    titles: Mapping[str, str] | None = None,
    ddof: int = 1,
    dpi: int = 120,
) -> str:
    """Draw :func:`ablation_figure` and save it as a PNG at ``path`` (folders created); return its path."""
    return _save(ablation_figure(rows, panels, methods, ratio, titles, ddof), path, dpi)
