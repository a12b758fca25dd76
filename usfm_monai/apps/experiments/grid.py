"""Label-efficiency and ablation experiments: a grid of tasks × methods × label ratios × seeds run through the bundles.

The paper's label-efficiency experiment (§4.1.3, §5.3, Fig. 10) trains every method on 20-100 % of each training
set (the same images for every method) and tests on the whole test set; the ablation (§4.1.4, §5.4, Fig. 11)
compares downstream results of encoders pretrained with and without frequency masking (USFM-woF) and
organ-balanced sampling (USFM-woS). :func:`run_grid` runs both from one JSON preset (``experiments/*.json``):

1. ``pretraining`` steps (optional): ``python -m monai.bundle run`` of the pretraining bundle per variant
   (e.g. ``use_frequency_mask: false``), into ``<output_dir>/pretrain/<name>``; a method refers to a variant's
   exported encoder as ``${pretrain:<name>}``.
2. per task, nested stratified subsets of the training datalist (:func:`usfm_monai.data.subsets.make_nested_subsets`),
   written once into ``<output_dir>/subsets/<task>`` and read by every method.
3. per cell ``(task, method, ratio, seed)``, with ``bundle_root = <output_dir>/cells/<task>/<method>/ratio<r>/seed<s>``:
   the bundle's training configs + the method's override files (``python -m monai.bundle run --config_file
   [...] --args_file <cell>/run_args.json``; the args set ``bundle_root``, ``dataset_dir``, ``datalist_file`` =
   the subset, ``seed`` and the preset's overrides), then the same configs + the bundle's evaluation configs
   (test split). The evaluation's metrics file (``eval/classification_report.json`` of ``cls_busi``,
   ``eval/test/summary.json`` of ``seg_tn3k``) is read with :func:`usfm_monai.apps.bundle_runner.read_metrics`.
4. the results table (``results.csv`` / ``results.json``: task, method, ratio, seed, every metric), the mean ±
   std table (``summary.csv``) and the figures (``plots/label_efficiency.png``, ``plots/ablation.png``).

**Resuming.** A step is finished when its marker file exists, written atomically as its last act:
``<pretrain root>/pretrain_done.json``, ``<cell>/train_done.json`` (training succeeded) and ``<cell>/result.json``
(metrics read). Rerunning the same command skips finished steps and resumes an interrupted training from the
bundle's own checkpoint (the bundles resume by default). **Failures** are reported with their log path; the grid
goes on with the other cells, writes its tables with the finished cells, and raises :class:`GridError` at the end.

Preset layout (paths: config files relative to the step's ``bundle`` folder, every other relative path relative
to ``root``, which defaults to the folder above the preset file, i.e. the repository root; ``${name}`` in any
string is replaced by ``variables``, ``${root}``, ``${output_dir}`` or ``${pretrain:<name>}``)::

    {"name": "...", "seeds": [0, 1, 2], "ratios": [0.2, 0.4, 0.6, 0.8, 1.0], "subset_seed": 0,
     "variables": {"busi_dir": "/data/Dataset_BUSI_with_GT"},
     "pretraining": {"USFM": {"bundle": "bundles/pretrain_usfm",
                              "config_files": ["configs/train.json"], "logging_file": "configs/logging.conf",
                              "datalist": {"from": ["data_lists/busi_classification.json"], "organ": "breast"},
                              "overrides": {"dataset_dir": "${busi_dir}", "epochs": 100}}},
     "tasks": {"busi_cls": {"bundle": "bundles/cls_busi", "title": "Breast tumor classification",
                            "config_files": ["configs/train.json"], "eval_config_files": ["configs/evaluate.json"],
                            "metrics_file": "eval/classification_report.json", "plot_metric": "f1",
                            "datalist_file": "data_lists/busi_classification.json", "dataset_dir": "${busi_dir}",
                            "stratify": "label", "overrides": {"epochs": 200},
                            "methods": {"USFM": {"overrides": {"pretrained": "${pretrain:USFM}"}},
                                        "ResNet50": {"config_files": ["configs/baseline_resnet50.json"]},
                                        "ViT-scratch": {"config_files": ["configs/baseline_vit_scratch.json"],
                                                        "ratios": [1.0]}}}},
     "ablation": {"methods": ["USFM", "USFM-woF", "USFM-woS"], "ratio": 1.0}}

A method's optional ``ratios`` (a subset of the preset's) limits it to those label ratios, e.g. an ablation variant
that is only compared at the ablation ratio.

A task may replace ``datalist_file``/``dataset_dir`` by ``"synthetic": {"task": "classification", "num_images":
60, "image_size": 64}`` to run on a synthetic dataset generated into ``<output_dir>/data/<task>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from usfm_monai.apps.bundle_runner import bundle_command, child_env, read_metrics, run_logged
from usfm_monai.apps.experiments.plots import (
    aggregate_results,
    plot_ablation,
    plot_label_efficiency,
)
from usfm_monai.data.subsets import (
    make_nested_subsets,
    make_pretrain_datalist,
    subset_filename,
)
from usfm_monai.io import save_json_atomic, save_text_atomic

__all__ = ["CellRunner", "GridError", "load_preset", "plan_grid", "run_grid"]

#: ``runner(cmd, log_path, env) -> exit code``: runs one bundle command, its output going to ``log_path``.
CellRunner = Callable[[Sequence[str], str, Mapping[str, str]], int]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_VARIABLE = re.compile(r"\$\{([^{}]+)\}")
_RESERVED_ARGS = ("bundle_root", "dataset_dir", "datalist_file", "seed")
_TASK_KEYS = {
    "bundle", "title", "config_files", "eval_config_files", "logging_file", "metrics_file", "plot_metric",
    "datalist_file", "dataset_dir", "synthetic", "stratify", "overrides", "methods",
}
_PRETRAIN_KEYS = {"bundle", "config_files", "logging_file", "datalist", "overrides", "encoder_file", "seed"}
_TOP_KEYS = {
    "name", "description", "seeds", "ratios", "subset_seed", "variables", "pretraining", "tasks", "ablation",
    "python",
}


class GridError(RuntimeError):
    """Raised at the end of :func:`run_grid` when some steps failed; ``failures`` lists them with their logs."""

    def __init__(self, message: str, failures: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.failures = failures


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} name {name!r} must start with a letter or digit and hold only letters, digits and '_.+-' "
            "(it names a folder)."
        )
    return name


def _list_of_str(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{where} must be a path or a list of paths, got {value!r}.")


def _unknown_keys(given: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise KeyError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}.")


def _required_keys(given: Mapping[str, Any], required: Sequence[str], where: str) -> None:
    for key in required:
        if key not in given:
            raise KeyError(f"{where} lacks the required key {key!r}.")


def load_preset(preset_file: str) -> dict[str, Any]:
    """Read and validate a grid preset (layout in the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: invalid JSON, bad names, ratios, seeds, or a method/task without what it needs.
        KeyError: unknown keys (typos) or a required key missing.
        TypeError: a value of the wrong type.
    """
    preset_file = os.path.abspath(preset_file)
    if not os.path.isfile(preset_file):
        raise FileNotFoundError(f"preset file {preset_file} does not exist.")
    try:
        preset = _read_json(preset_file)
    except json.JSONDecodeError as e:
        raise ValueError(f"preset file {preset_file} is not valid JSON: {e}.") from e
    if not isinstance(preset, dict):
        raise ValueError(f"preset file {preset_file} must hold a JSON object, got {type(preset).__name__}.")
    _unknown_keys(preset, _TOP_KEYS, f"preset {preset_file}")
    _required_keys(preset, ("seeds", "ratios", "tasks"), f"preset {preset_file}")
    seeds = preset["seeds"]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise TypeError(f"'seeds' of preset {preset_file} must be a non-empty list of ints, got {seeds!r}.")
    ratios = preset["ratios"]
    if not isinstance(ratios, list) or not ratios or any(
        isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1 for r in ratios
    ):
        raise ValueError(f"'ratios' of preset {preset_file} must be a non-empty list of numbers in (0, 1], got {ratios!r}.")
    pretraining = preset.get("pretraining", {}) or {}
    for name, step in pretraining.items():
        _check_name(name, "pretraining")
        where = f"pretraining {name!r} of preset {preset_file}"
        if not isinstance(step, dict):
            raise TypeError(f"{where} must be an object, got {step!r}.")
        _unknown_keys(step, _PRETRAIN_KEYS, where)
        _required_keys(step, ("bundle", "config_files"), where)
        _list_of_str(step["config_files"], f"'config_files' of {where}")
    tasks = preset["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        raise TypeError(f"'tasks' of preset {preset_file} must be a non-empty object, got {tasks!r}.")
    for task_name, task in tasks.items():
        _check_name(task_name, "task")
        where = f"task {task_name!r} of preset {preset_file}"
        if not isinstance(task, dict):
            raise TypeError(f"{where} must be an object, got {task!r}.")
        _unknown_keys(task, _TASK_KEYS, where)
        _required_keys(task, ("bundle", "config_files", "eval_config_files", "metrics_file", "methods"), where)
        if ("synthetic" in task) == ("datalist_file" in task):
            raise KeyError(f"{where} needs exactly one of 'datalist_file' (a real dataset) or 'synthetic'.")
        for key in ("config_files", "eval_config_files"):
            _list_of_str(task[key], f"{key!r} of {where}")
        _check_not_reserved(task.get("overrides"), f"'overrides' of {where}")
        methods = task["methods"]
        if not isinstance(methods, dict) or not methods:
            raise TypeError(f"'methods' of {where} must be a non-empty object, got {methods!r}.")
        for method_name, method in methods.items():
            _check_name(method_name, "method")
            mwhere = f"method {method_name!r} of {where}"
            if not isinstance(method, dict):
                raise TypeError(f"{mwhere} must be an object, got {method!r}.")
            _unknown_keys(method, {"config_files", "overrides", "ratios"}, mwhere)
            _list_of_str(method.get("config_files", []), f"'config_files' of {mwhere}")
            if "ratios" in method:
                mratios = method["ratios"]
                if not isinstance(mratios, list) or not mratios or any(
                    isinstance(r, bool) or not isinstance(r, (int, float)) or float(r) not in map(float, ratios)
                    for r in mratios
                ):
                    raise ValueError(
                        f"'ratios' of {mwhere} must be a non-empty list of the preset's ratios {ratios}, got {mratios!r}."
                    )
            _check_not_reserved(method.get("overrides"), f"'overrides' of {mwhere}")
    preset["_file"] = preset_file
    return preset


def _check_not_reserved(overrides: Mapping[str, Any] | None, where: str) -> None:
    for key in _RESERVED_ARGS:
        if key in (overrides or {}):
            raise ValueError(f"{where} must not set {key!r}: the grid sets it for every cell.")


class _Substituter:
    """Replaces ``${name}`` in strings, recursively in lists and dicts, and records ``${pretrain:...}`` uses."""

    def __init__(self, variables: Mapping[str, str], pretrain_paths: Mapping[str, str], where: str) -> None:
        self.variables = dict(variables)
        self.pretrain_paths = dict(pretrain_paths)
        self.where = where
        self.used_pretraining: set[str] = set()

    def _one(self, match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("pretrain:"):
            step = name.split(":", 1)[1]
            if step not in self.pretrain_paths:
                raise KeyError(
                    f"{self.where} refers to ${{{name}}}, but the preset's 'pretraining' has {sorted(self.pretrain_paths)}."
                )
            self.used_pretraining.add(step)
            return self.pretrain_paths[step]
        if name not in self.variables:
            raise KeyError(
                f"{self.where} refers to the undefined variable ${{{name}}}; defined: {sorted(self.variables)} "
                "(set it in the preset's 'variables' or with run_grid(variables=...))."
            )
        return str(self.variables[name])

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return _VARIABLE.sub(self._one, value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value


def _resolve(path: str, base: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def _existing(paths: Sequence[str], where: str) -> list[str]:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"config file(s) {missing} of {where} do not exist.")
    return list(paths)


def _ratio_dir(ratio: float) -> str:
    return f"ratio{ratio:g}"


def _select(available: Sequence[Any], chosen: Sequence[Any] | None, what: str, cast: Callable[[Any], Any]) -> list[Any]:
    if chosen is None:
        return list(available)
    chosen = [chosen] if isinstance(chosen, (str, int, float)) else list(chosen)
    chosen = [cast(c) for c in chosen]
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"{what} {unknown} are not in the preset, which has {list(available)}.")
    return chosen


def plan_grid(
    preset: Mapping[str, Any],
    output_dir: str,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    ratios: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    variables: Mapping[str, str] | None = None,
    python: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Expand a preset (from :func:`load_preset`) into pretraining steps and cells, with their commands.

    Nothing is run or written. ``tasks``/``methods``/``ratios``/``seeds`` select a part of the grid (default:
    all); only the pretraining steps the selected methods refer to are planned.

    Returns:
        ``{"pretraining": [step, ...], "tasks": {name: task}, "cells": [cell, ...]}``, where each step/cell holds
        its root folder, ``args`` (the ``--args_file`` content), commands, log and marker paths.

    Raises:
        ValueError: a selected task/method/ratio/seed is not in the preset.
        KeyError: an undefined ``${variable}`` or ``${pretrain:<name>}``.
    """
    output_dir = os.path.abspath(output_dir)
    overrides = dict(overrides or {})
    _check_not_reserved(overrides, "overrides")
    preset_file = preset.get("_file", os.path.join(os.getcwd(), "preset.json"))
    root = os.path.dirname(os.path.dirname(preset_file))
    python = python or preset.get("python") or sys.executable
    var = {str(k): str(v) for k, v in (preset.get("variables") or {}).items()}
    var.update({str(k): str(v) for k, v in (variables or {}).items()})
    var.update(root=root, output_dir=output_dir)

    pretraining_spec = preset.get("pretraining") or {}
    encoder_paths = {
        name: os.path.join(output_dir, "pretrain", name, step.get("encoder_file", "models/usfm_encoder.pt"))
        for name, step in pretraining_spec.items()
    }
    task_names = _select(list(preset["tasks"]), tasks, "tasks", str)
    ratio_list = _select([float(r) for r in preset["ratios"]], ratios, "ratios", float)
    seed_list = _select([int(s) for s in preset["seeds"]], seeds, "seeds", int)
    all_methods = list(dict.fromkeys(m for t in task_names for m in preset["tasks"][t]["methods"]))
    method_filter = _select(all_methods, methods, "methods", str) if methods is not None else None

    plan_tasks: dict[str, Any] = {}
    cells: list[dict[str, Any]] = []
    needed_pretraining: set[str] = set()
    for task_name in task_names:
        spec = preset["tasks"][task_name]
        sub = _Substituter(var, encoder_paths, f"task {task_name!r}")
        bundle = _resolve(sub(spec["bundle"]), root)
        task = {
            "name": task_name,
            "title": spec.get("title", task_name),
            "bundle": bundle,
            "plot_metric": spec.get("plot_metric"),
            "metrics_file": spec["metrics_file"],
            "stratify": spec.get("stratify", "label"),
            "subset_dir": os.path.join(output_dir, "subsets", task_name),
        }
        if "synthetic" in spec:
            task["synthetic"] = dict(spec["synthetic"])
            task["dataset_dir"] = os.path.join(output_dir, "data", task_name)
            task["datalist_file"] = os.path.join(task["dataset_dir"], "datalist.json")
        else:
            task["datalist_file"] = _resolve(sub(spec["datalist_file"]), root)
            dataset_dir = sub(spec.get("dataset_dir", os.path.dirname(task["datalist_file"])))
            task["dataset_dir"] = _resolve(dataset_dir, root)
        task["subsets"] = {
            r: os.path.join(task["subset_dir"], subset_filename(task["datalist_file"], r, int(preset.get("subset_seed", 0))))
            for r in ratio_list
        }
        plan_tasks[task_name] = task
        configs = _existing([_resolve(sub(c), bundle) for c in _list_of_str(spec["config_files"], "config_files")],
                            f"task {task_name!r}")
        eval_configs = _existing(
            [_resolve(sub(c), bundle) for c in _list_of_str(spec["eval_config_files"], "eval_config_files")],
            f"task {task_name!r}",
        )
        logging_file = _resolve(sub(spec["logging_file"]), bundle) if spec.get("logging_file") else None
        task_overrides = sub(spec.get("overrides") or {})
        for method_name, method in spec["methods"].items():
            if method_filter is not None and method_name not in method_filter:
                continue
            msub = _Substituter(var, encoder_paths, f"method {method_name!r} of task {task_name!r}")
            method_configs = _existing(
                [_resolve(msub(c), bundle) for c in _list_of_str(method.get("config_files", []), "config_files")],
                f"method {method_name!r} of task {task_name!r}",
            )
            method_overrides = msub(method.get("overrides") or {})
            allowed_ratios = {float(r) for r in method.get("ratios", ratio_list)}
            method_ratios = [r for r in ratio_list if r in allowed_ratios]
            if method_ratios:
                needed_pretraining |= msub.used_pretraining | sub.used_pretraining
            for ratio in method_ratios:
                for seed in seed_list:
                    cell_root = os.path.join(output_dir, "cells", task_name, method_name, _ratio_dir(ratio), f"seed{seed}")
                    args = {
                        **task_overrides, **method_overrides, **overrides,
                        "bundle_root": cell_root, "dataset_dir": task["dataset_dir"],
                        "datalist_file": task["subsets"][ratio], "seed": seed,
                    }
                    args_file = os.path.join(cell_root, "run_args.json")
                    cells.append({
                        "task": task_name, "method": method_name, "ratio": ratio, "seed": seed, "root": cell_root,
                        "args": args, "args_file": args_file,
                        "pretraining": sorted(msub.used_pretraining | sub.used_pretraining),
                        "train_cmd": bundle_command(configs + method_configs, args_file, python, logging_file),
                        "eval_cmd": bundle_command(configs + method_configs + eval_configs, args_file, python, logging_file),
                        "train_log": os.path.join(cell_root, "train.log"),
                        "eval_log": os.path.join(cell_root, "evaluate.log"),
                        "train_done": os.path.join(cell_root, "train_done.json"),
                        "result": os.path.join(cell_root, "result.json"),
                        "metrics_file": _resolve(task["metrics_file"], cell_root),
                    })

    steps = []
    for name in [n for n in pretraining_spec if n in needed_pretraining]:
        spec = pretraining_spec[name]
        sub = _Substituter(var, encoder_paths, f"pretraining {name!r}")
        bundle = _resolve(sub(spec["bundle"]), root)
        step_root = os.path.join(output_dir, "pretrain", name)
        args = {**sub(spec.get("overrides") or {}), **dict(pretrain_overrides or {}), "bundle_root": step_root}
        if "seed" in spec:
            args["seed"] = int(spec["seed"])
        datalist = None
        if spec.get("datalist"):
            dl = spec["datalist"]
            datalist = {
                "from": [_resolve(sub(p), root) for p in _list_of_str(dl.get("from"), f"'datalist.from' of pretraining {name!r}")],
                "organ": str(dl.get("organ", "unknown")),
                "output": os.path.join(output_dir, "datalists", f"pretrain_{name}.json"),
            }
            args["datalist_file"] = datalist["output"]
        configs = _existing([_resolve(sub(c), bundle) for c in _list_of_str(spec["config_files"], "config_files")],
                            f"pretraining {name!r}")
        logging_file = _resolve(sub(spec["logging_file"]), bundle) if spec.get("logging_file") else None
        args_file = os.path.join(step_root, "run_args.json")
        steps.append({
            "name": name, "root": step_root, "args": args, "args_file": args_file, "datalist": datalist,
            "cmd": bundle_command(configs, args_file, python, logging_file),
            "log": os.path.join(step_root, "pretrain.log"),
            "done": os.path.join(step_root, "pretrain_done.json"),
            "encoder": encoder_paths[name],
        })
    return {"pretraining": steps, "tasks": plan_tasks, "cells": cells, "ratios": ratio_list, "seeds": seed_list}


def _log(message: str, start: float) -> None:
    elapsed = time.monotonic() - start
    print(f"[grid {int(elapsed // 3600):d}:{int(elapsed % 3600 // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)


def _prepare_task_data(task: Mapping[str, Any], subset_seed: int, ratios: Sequence[float]) -> None:
    if "synthetic" in task:
        from usfm_monai.data.synthetic import ensure_synthetic_dataset

        syn = dict(task["synthetic"])
        kind = syn.pop("task", None)
        if kind is None:
            raise KeyError(f"'synthetic' of task {task['name']!r} lacks 'task' (e.g. 'classification').")
        ensure_synthetic_dataset(task["dataset_dir"], kind, **syn)
    paths = make_nested_subsets(
        task["datalist_file"], task["subset_dir"], ratios=ratios, seed=subset_seed, stratify=task["stratify"],
        dataset_dir=task["dataset_dir"],
    )
    for ratio, path in paths.items():
        if os.path.abspath(path) != os.path.abspath(task["subsets"][ratio]):
            raise RuntimeError(f"subset of ratio {ratio} written to {path}, expected {task['subsets'][ratio]}.")


def _run_step(cmd: Sequence[str], log: str, runner: CellRunner, env: Mapping[str, str]) -> str | None:
    """Run one command; return None on success, else an error message naming the log."""
    try:
        code = runner(list(cmd), log, env)
    except OSError as e:
        return f"could not start {cmd[0]}: {e} (log: {log})"
    return None if code == 0 else f"exit code {code}; log: {log}"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()


def _write_tables(rows: list[dict[str, Any]], failures: list[dict[str, Any]], output_dir: str, meta: dict[str, Any]) -> dict[str, str]:
    metric_names = list(dict.fromkeys(name for r in rows for name in r["metrics"]))
    fixed = ["task", "method", "ratio", "seed", "num_train_items", "train_seconds", "eval_seconds"]
    table = [[r.get(k) for k in fixed] + [r["metrics"].get(n) for n in metric_names] for r in rows]
    paths = {
        "results_csv": os.path.join(output_dir, "results.csv"),
        "results_json": os.path.join(output_dir, "results.json"),
        "summary_csv": os.path.join(output_dir, "summary.csv"),
    }
    save_text_atomic(_csv_text(fixed + metric_names, table), paths["results_csv"])
    summary = aggregate_results(rows) if rows else []
    save_text_atomic(
        _csv_text(["task", "method", "ratio", "metric", "mean", "std", "n"],
                  [[s["task"], s["method"], s["ratio"], s["metric"], s["mean"], s["std"], s["n"]] for s in summary]),
        paths["summary_csv"],
    )
    save_json_atomic({**meta, "results": rows, "summary": summary, "failures": failures}, paths["results_json"])
    return paths


def run_grid(
    preset_file: str,
    output_dir: str,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    ratios: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    variables: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    python: str | None = None,
    runner: CellRunner | None = None,
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a label-efficiency / ablation grid through the bundles and write its table and figures.

    See the module docstring for the preset layout, the folder layout and how resuming works. Progress is
    printed as ``[grid h:mm:ss] cell i/N ...``.

    Examples::

        usfm-monai grid --preset_file experiments/busi_compact.json --output_dir runs/busi_compact \\
            --variables "{'busi_dir': '/data/Dataset_BUSI_with_GT'}"
        usfm-monai grid --preset_file experiments/busi_compact.json \\
            --output_dir runs/busi_compact --methods "['USFM-scratch']" --ratios "[0.2]" --dry_run

    Args:
        preset_file: the grid preset (``experiments/*.json``).
        output_dir: folder of the grid (pretraining runs, subsets, cells, tables, plots); reusing it resumes.
        tasks, methods, ratios, seeds: run only these (default: all of the preset).
        variables: values of ``${name}`` placeholders, overriding the preset's ``variables``.
        overrides: config ids set in every cell (e.g. ``{"epochs": 2}`` for a smoke run); a finished cell is not
            rerun when they change, so use a new ``output_dir`` for different overrides.
        pretrain_overrides: config ids set in every pretraining step (same caveat).
        dry_run: print the plan (steps, commands, which are finished) and return it; nothing is run or written.
        python: interpreter of the bundle runs; default: the preset's ``python`` or this interpreter.
        runner: runs one command (tests inject a fake); default :func:`~usfm_monai.apps.bundle_runner.run_logged`.
        raise_on_failure: raise :class:`GridError` at the end when a step failed (after writing the tables).

    Returns:
        ``{"results_csv", "results_json", "summary_csv", "plots": [...], "num_cells", "num_finished",
        "num_run", "failures": [...]}``; with ``dry_run``, the plan (:func:`plan_grid`).

    Raises:
        FileNotFoundError, KeyError, ValueError, TypeError: a bad preset (see :func:`load_preset`).
        GridError: some pretraining step or cell failed (each is listed with its log path).
    """
    start = time.monotonic()
    preset = load_preset(preset_file)
    output_dir = os.path.abspath(output_dir)
    plan = plan_grid(preset, output_dir, tasks, methods, ratios, seeds, variables, python, overrides,
                     pretrain_overrides)
    subset_seed = int(preset.get("subset_seed", 0))
    if dry_run:
        for step in plan["pretraining"]:
            state = "done" if os.path.isfile(step["done"]) else "to run"
            print(f"pretraining {step['name']} ({state}): {shlex.join(step['cmd'])}\n  args: {json.dumps(step['args'])}")
        for i, cell in enumerate(plan["cells"], 1):
            state = "done" if os.path.isfile(cell["result"]) else "to run"
            print(f"cell {i}/{len(plan['cells'])} {cell['task']}/{cell['method']} ratio={cell['ratio']:g} "
                  f"seed={cell['seed']} ({state})\n  train: {shlex.join(cell['train_cmd'])}\n"
                  f"  eval:  {shlex.join(cell['eval_cmd'])}\n  args: {json.dumps(cell['args'])}")
        return plan

    runner = runner or run_logged
    env = child_env()
    os.makedirs(output_dir, exist_ok=True)
    failures: list[dict[str, Any]] = []
    failed_pretraining: set[str] = set()

    for step in plan["pretraining"]:
        if os.path.isfile(step["done"]):
            _log(f"pretraining {step['name']}: finished earlier, skipped", start)
            continue
        _log(f"pretraining {step['name']}: running into {step['root']} (log {step['log']})", start)
        os.makedirs(step["root"], exist_ok=True)
        if step["datalist"] is not None:
            make_pretrain_datalist(step["datalist"]["from"], step["datalist"]["output"], step["datalist"]["organ"])
        save_json_atomic(step["args"], step["args_file"])
        t0 = time.monotonic()
        error = _run_step(step["cmd"], step["log"], runner, env)
        if error is None and not os.path.isfile(step["encoder"]):
            error = f"finished but wrote no encoder {step['encoder']}; log: {step['log']}"
        if error is not None:
            failed_pretraining.add(step["name"])
            failures.append({"step": "pretraining", "name": step["name"], "error": error, "log": step["log"]})
            _log(f"pretraining {step['name']} FAILED: {error}", start)
            continue
        save_json_atomic({"name": step["name"], "encoder": step["encoder"], "seconds": time.monotonic() - t0}, step["done"])
        _log(f"pretraining {step['name']}: done in {time.monotonic() - t0:.0f} s", start)

    for task in plan["tasks"].values():
        _prepare_task_data(task, subset_seed, plan["ratios"])
        _log(f"task {task['name']}: subsets in {task['subset_dir']}", start)

    rows: list[dict[str, Any]] = []
    num_run = 0
    total = len(plan["cells"])
    for i, cell in enumerate(plan["cells"], 1):
        label = f"cell {i}/{total} {cell['task']}/{cell['method']} ratio={cell['ratio']:g} seed={cell['seed']}"
        if os.path.isfile(cell["result"]):
            rows.append(_read_json(cell["result"]))
            _log(f"{label}: finished earlier, skipped", start)
            continue
        missing = [p for p in cell["pretraining"] if p in failed_pretraining]
        if missing:
            failures.append({**{k: cell[k] for k in ("task", "method", "ratio", "seed")}, "step": "cell",
                             "error": f"pretraining {missing} failed", "log": None})
            _log(f"{label}: SKIPPED, its pretraining {missing} failed", start)
            continue
        num_run += 1
        os.makedirs(cell["root"], exist_ok=True)
        save_json_atomic(cell["args"], cell["args_file"])
        error = None
        if os.path.isfile(cell["train_done"]):
            train_seconds = _read_json(cell["train_done"]).get("seconds")
            _log(f"{label}: training finished earlier", start)
        else:
            _log(f"{label}: training (log {cell['train_log']})", start)
            t0 = time.monotonic()
            error = _run_step(cell["train_cmd"], cell["train_log"], runner, env)
            train_seconds = time.monotonic() - t0
            if error is None:
                save_json_atomic({"seconds": train_seconds}, cell["train_done"])
        eval_seconds = None
        if error is None:
            _log(f"{label}: evaluating (log {cell['eval_log']})", start)
            t0 = time.monotonic()
            error = _run_step(cell["eval_cmd"], cell["eval_log"], runner, env)
            eval_seconds = time.monotonic() - t0
        metrics = None
        if error is None:
            try:
                metrics = read_metrics(cell["metrics_file"])
            except (FileNotFoundError, ValueError) as e:
                error = f"{e} (log: {cell['eval_log']})"
        if error is not None:
            log = cell["eval_log"] if os.path.isfile(cell["train_done"]) else cell["train_log"]
            failures.append({**{k: cell[k] for k in ("task", "method", "ratio", "seed")}, "step": "cell",
                             "error": error, "log": log})
            _log(f"{label}: FAILED: {error}", start)
            continue
        with open(cell["args"]["datalist_file"]) as f:
            num_items = len(json.load(f)["training"])
        row = {
            "task": cell["task"], "method": cell["method"], "ratio": cell["ratio"], "seed": cell["seed"],
            "num_train_items": num_items, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "metrics": metrics, "datalist_file": cell["args"]["datalist_file"], "bundle_root": cell["root"],
        }
        save_json_atomic(row, cell["result"])  # written last: its presence marks the cell finished
        rows.append(row)
        _log(f"{label}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), start)

    meta = {"preset": preset["_file"], "name": preset.get("name"), "output_dir": output_dir}
    paths = _write_tables(rows, failures, output_dir, meta)
    plots = _make_plots(preset, plan, rows, output_dir)
    for path in plots:
        _log(f"figure written to {path}", start)
    _log(f"results: {paths['results_csv']} ({len(rows)}/{total} cells finished, {num_run} run now, "
         f"{len(failures)} failures)", start)
    summary = {**paths, "plots": plots, "num_cells": total, "num_finished": len(rows), "num_run": num_run,
               "failures": failures}
    if failures and raise_on_failure:
        listed = "\n  ".join(
            f"{f.get('task', 'pretraining')}/{f.get('method', f.get('name'))} ratio={f.get('ratio', '-')} "
            f"seed={f.get('seed', '-')}: {f['error']}" for f in failures
        )
        raise GridError(f"{len(failures)} step(s) of the grid failed (tables written with the finished cells to "
                        f"{paths['results_csv']}):\n  {listed}", failures)
    return summary


def _make_plots(preset: Mapping[str, Any], plan: Mapping[str, Any], rows: list[dict[str, Any]], output_dir: str) -> list[str]:
    if not rows:
        return []
    plots = []
    panels = []
    for name, task in plan["tasks"].items():
        task_rows = [r for r in rows if r["task"] == name]
        if not task_rows:
            continue
        metric = task["plot_metric"] or next(iter(task_rows[0]["metrics"]))
        panels.append((name, metric))
    titles = {name: task["title"] for name, task in plan["tasks"].items()}
    # a method run at one ratio only (e.g. an ablation variant limited by its 'ratios') is a bar, not a line
    line_methods = [
        m for m in dict.fromkeys(r["method"] for r in rows) if len({r["ratio"] for r in rows if r["method"] == m}) > 1
    ]
    if panels and line_methods:
        plots.append(plot_label_efficiency(rows, os.path.join(output_dir, "plots", "label_efficiency.png"), panels,
                                           methods=line_methods, titles=titles))
    ablation = preset.get("ablation")
    if ablation and panels:
        compared = list(ablation.get("methods", []))
        at = ablation.get("ratio")
        # a task enters the bar plot only if some compared method has a result at the compared ratio
        bar_panels = [
            (task, metric) for task, metric in panels
            if any(r["task"] == task and r["method"] in compared and (at is None or math.isclose(r["ratio"], at))
                   for r in rows)
        ]
        present = [m for m in compared if any(r["method"] == m for r in rows)]
        if bar_panels and present:
            plots.append(plot_ablation(rows, os.path.join(output_dir, "plots", "ablation.png"), bar_panels, present,
                                       ratio=at, titles=titles))
    return plots

