"""One ``python -m monai.bundle run`` per training or evaluation, as the seed runner and the experiment grid start them.

A run is a fresh process (so every run starts from the same state, as a user's would), its overrides in an
``--args_file`` (no shell quoting), its output in a log file, and it imports the same ``usfm_monai`` as the caller,
installed or from a source tree. :func:`read_metrics` reads what the run wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from usfm_monai.io import read_json

__all__ = ["bundle_command", "child_env", "read_metrics", "run_logged"]


def bundle_command(
    config_files: Sequence[str],
    args_file: str | None = None,
    python: str = sys.executable,
    logging_file: str | None = None,
) -> list[str]:
    """The ``monai.bundle run`` command line for ``config_files``, every other argument in ``args_file`` (a JSON
    object, e.g. written by :func:`usfm_monai.io.save_json_atomic`; ``None``: no overrides)."""
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(config_files))]
    if args_file is not None:
        cmd += ["--args_file", args_file]
    if logging_file is not None:
        cmd += ["--logging_file", logging_file]
    return cmd


def child_env(extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a bundle run: ``PYTHONPATH`` first names the folder holding this
    ``usfm_monai``, then ``extra_env`` is applied (it may override anything, ``PYTHONPATH`` included)."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env.update(dict(extra_env or {}))
    return env


def run_logged(cmd: Sequence[str], log_path: str, env: Mapping[str, str], cwd: str | None = None) -> int:
    """Run ``cmd`` with stdout and stderr in ``log_path``; return its exit code."""
    with open(log_path, "w") as log:
        return subprocess.run(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, check=False
        ).returncode


def read_metrics(path: str) -> dict[str, float]:
    """Read a metrics JSON: ``{"metrics": {name: float}}`` or ``{"metrics": {name: {"mean": float, ...}}}``.

    Raises:
        FileNotFoundError: ``path`` does not exist (the run wrote no metrics there).
        ValueError: invalid JSON, or no non-empty ``metrics`` mapping.
        TypeError: a metric is neither a number nor ``{"mean": number, ...}``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file {path} does not exist: check metrics_file and the run's log.")
    data = read_json(path, "metrics file")
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"metrics file {path} must hold a non-empty 'metrics' mapping, got {type(metrics).__name__}.")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            value = value.get("mean")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"metric {name!r} in {path} must be a number or {{'mean': number, ...}}, got {metrics[name]!r}."
            )
        out[str(name)] = float(value)
    return out
