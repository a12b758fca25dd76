"""Run a bundle over several seeds and report mean ± std of its metrics (the paper's Tables 2-4 report mean ± std).

Each seed is one fresh ``python -m monai.bundle run`` process (then, optionally, a second one for the evaluation
configs), with ``bundle_root`` set to ``<output_dir>/seed_<seed>`` so checkpoints, logs and reports of different
seeds never mix, and every override passed through an ``--args_file`` (no shell quoting). After each run the
metrics JSON is read: either a flat ``{"metrics": {name: value}}`` (``ClassificationReport``) or
``{"metrics": {name: {"mean": value, ...}}}`` (``MetricSummary``).

Example (the classification bundle, three seeds, CPU-sized)::

    from usfm_monai.apps.seeds import run_seeds
    run_seeds(["bundles/cls_busi/configs/train.json", "bundles/cls_busi/configs/quick.json"], seeds=[0, 1, 2],
              output_dir="runs/cls_busi_seeds",
              eval_config_files=["bundles/cls_busi/configs/train.json", "bundles/cls_busi/configs/quick.json",
                                 "bundles/cls_busi/configs/evaluate.json"])

or ``usfm-monai run_seeds --config_files "['...train.json','...quick.json']" --seeds "[0,1,2]"
--output_dir runs/x --eval_config_files "[...]"``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from usfm_monai.apps.bundle_runner import bundle_command, child_env, read_metrics, run_logged
from usfm_monai.io import save_json_atomic, save_text_atomic

__all__ = ["run_seeds", "summarize_seeds"]

logger = logging.getLogger(__name__)

_LOG_TAIL = 3000


def _as_list(value: Any, name: str) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Sequence) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    raise TypeError(f"{name} must be a config file path or a non-empty list of paths, got {value!r}.")


def summarize_seeds(per_seed: Mapping[Any, Mapping[str, float]], ddof: int = 1) -> dict[str, dict[str, float]]:
    """Mean ± std of every metric over seeds.

    Args:
        per_seed: ``{seed: {metric: value}}``.
        ddof: delta degrees of freedom of the std; 1 (default) = sample std over runs, 0 = population std.

    Returns:
        ``{metric: {"mean", "std", "n"}}`` over the seeds whose value is not NaN (std NaN for ``n <= ddof``).

    Raises:
        ValueError: ``per_seed`` is empty or the runs report different metric names.
    """
    if not per_seed:
        raise ValueError("per_seed is empty: no run to summarize.")
    names = [sorted(m) for m in per_seed.values()]
    if any(n != names[0] for n in names):
        raise ValueError(f"runs report different metrics: {dict(zip(per_seed, names))}.")
    out: dict[str, dict[str, float]] = {}
    for name in names[0]:
        values = np.array([per_seed[s][name] for s in per_seed], dtype=np.float64)
        values = values[~np.isnan(values)]
        n = int(values.size)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=ddof)) if n > ddof else math.nan
        out[name] = {"mean": mean, "std": std, "n": n}
    return out


def _run(cmd: list[str], log_path: str, env: Mapping[str, str], what: str) -> None:
    code = run_logged(cmd, log_path, env)
    if code != 0:
        with open(log_path) as log:
            tail = log.read()[-_LOG_TAIL:]
        raise RuntimeError(
            f"{what} failed with exit code {code}; full log: {log_path}\n"
            f"command: {' '.join(cmd)}\n--- log tail ---\n{tail}"
        )


def run_seeds(
    config_files: str | Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    output_dir: str = "seed_runs",
    overrides: Mapping[str, Any] | None = None,
    metrics_file: str = "eval/classification_report.json",
    eval_config_files: str | Sequence[str] | None = None,
    seed_key: str = "seed",
    ddof: int = 1,
    logging_file: str | None = None,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run a MONAI bundle once per seed and report mean ± std of the metrics each run writes.

    For each seed ``s``: ``python -m monai.bundle run --config_file <config_files>`` with ``bundle_root =
    <output_dir>/seed_<s>``, ``<seed_key> = s`` and ``overrides``; then, when ``eval_config_files`` is given, the
    same for those configs (e.g. ``train.json`` + ``evaluate.json`` to score the best checkpoint on the test
    split). The run's ``<bundle_root>/<metrics_file>`` is read with
    :func:`~usfm_monai.apps.bundle_runner.read_metrics`. Logs go to
    ``<bundle_root>/train.log`` and ``evaluate.log``.

    Writes ``<output_dir>/seeds_summary.json`` (``{"seeds", "runs": {seed: {metric: value}}, "metrics":
    {metric: {"mean", "std", "n"}}, "config_files", "eval_config_files", "overrides"}``) and
    ``<output_dir>/seeds_summary.csv`` (one row per seed, then a ``mean`` and a ``std`` row), and prints
    ``metric: mean ± std (n=...)``.

    Args:
        config_files: the config(s) of the (training) run, merged in order.
        seeds: the seeds; each must be a distinct int.
        output_dir: parent folder of the per-seed bundle roots.
        overrides: other config ids to set, e.g. ``{"epochs": 5, "dataset_dir": "/data/busi"}``; ``bundle_root``
            and ``seed_key`` are set by the runner.
        metrics_file: path of the metrics JSON relative to each run's bundle root (or absolute, with a
            ``{seed}`` placeholder).
        eval_config_files: config(s) of a second run per seed that writes ``metrics_file``; ``None`` = the first
            run writes it.
        seed_key: the config id of the seed.
        ddof: std over seeds: 1 = sample std (default), 0 = population std.
        logging_file: ``--logging_file`` for the runs (e.g. the bundle's ``configs/logging.conf``).
        python: interpreter of the runs.
        env: extra environment variables of the runs (e.g. ``{"CUDA_VISIBLE_DEVICES": "0"}``).

    Returns:
        the summary dict written to ``seeds_summary.json``.

    Raises:
        TypeError, ValueError: bad ``config_files`` / ``seeds`` / ``overrides``.
        FileNotFoundError: a config file is missing, or a run wrote no metrics file.
        RuntimeError: a run failed (its exit code, command and log tail are shown).
    """
    configs = [os.path.abspath(p) for p in _as_list(config_files, "config_files")]
    eval_configs = None if eval_config_files is None else [
        os.path.abspath(p) for p in _as_list(eval_config_files, "eval_config_files")
    ]
    for path in configs + (eval_configs or []):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path} does not exist.")
    seeds = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else [seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise TypeError(f"seeds must be a non-empty list of ints, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}.")
    overrides = dict(overrides or {})
    for reserved in ("bundle_root", seed_key, "config_file"):
        if reserved in overrides:
            raise ValueError(f"overrides must not set {reserved!r}: run_seeds sets it for every seed.")
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    run_env = child_env(env)

    runs: dict[int, dict[str, float]] = {}
    for seed in seeds:
        seed = int(seed)
        root = os.path.join(output_dir, f"seed_{seed}")
        os.makedirs(root, exist_ok=True)
        args = {**overrides, "bundle_root": root, seed_key: seed}
        args_file = save_json_atomic(args, os.path.join(root, "run_args.json"))
        logger.info(f"seed {seed}: running {configs} into {root}")
        _run(bundle_command(configs, args_file, python, logging_file), os.path.join(root, "train.log"), run_env,
             f"seed {seed} run of {configs}")
        if eval_configs is not None:
            _run(bundle_command(eval_configs, args_file, python, logging_file), os.path.join(root, "evaluate.log"),
                 run_env, f"seed {seed} evaluation with {eval_configs}")
        metrics_path = metrics_file.format(seed=seed)
        runs[seed] = read_metrics(metrics_path if os.path.isabs(metrics_path) else os.path.join(root, metrics_path))
        logger.info(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in runs[seed].items()))

    summary_metrics = summarize_seeds(runs, ddof=ddof)
    summary = {
        "seeds": [int(s) for s in seeds],
        "runs": {str(s): m for s, m in runs.items()},
        "metrics": summary_metrics,
        "ddof": ddof,
        "config_files": configs,
        "eval_config_files": eval_configs,
        "overrides": overrides,
    }
    save_json_atomic(summary, os.path.join(output_dir, "seeds_summary.json"))
    names = list(summary_metrics)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["seed", *names])
    for s, m in runs.items():
        writer.writerow([s, *(repr(m[n]) for n in names)])
    writer.writerow(["mean", *(repr(summary_metrics[n]["mean"]) for n in names)])
    writer.writerow(["std", *(repr(summary_metrics[n]["std"]) for n in names)])
    save_text_atomic(buffer.getvalue(), os.path.join(output_dir, "seeds_summary.csv"))
    for name, stats in summary_metrics.items():
        print(f"{name}: {stats['mean']:.4f} ± {stats['std']:.4f} (n={stats['n']})")
    print(f"summary written to {os.path.join(output_dir, 'seeds_summary.json')}")
    return summary

