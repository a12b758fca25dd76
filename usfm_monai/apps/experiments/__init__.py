"""Label-efficiency and ablation experiments (paper §4.1.3-4.1.4, Fig. 10-11): a grid runner over the bundles."""

from usfm_monai.apps.experiments.grid import (
    GridError,
    load_preset,
    plan_grid,
    run_grid,
)
from usfm_monai.apps.experiments.plots import (
    ablation_figure,
    aggregate_results,
    label_efficiency_figure,
    plot_ablation,
    plot_label_efficiency,
)

__all__ = [
    "GridError",
    "ablation_figure",
    "aggregate_results",
    "label_efficiency_figure",
    "load_preset",
    "plan_grid",
    "plot_ablation",
    "plot_label_efficiency",
    "run_grid",
]
