"""Command-line helpers that bundle configs call: where the bundle lives, which config files were named.

MONAI bundles conventionally set ``"bundle_root": "."`` and expect to be run from inside the bundle folder.
Our users also run them from the repository root
(``python -m monai.bundle run --config_file bundles/pretrain_usfm/configs/train.json``); with ``"."`` the
checkpoints, logs and figures would then be scattered over the working directory. ``find_bundle_root``
locates the bundle from the config files named on the command line instead, so outputs always land in the
bundle (or wherever ``--bundle_root`` / ``--output_dir`` point).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence

from usfm_monai.utils import ensure_bool, is_main_process  # re-exported: configs written before usfm_monai.utils

__all__ = ["find_bundle_root", "is_main_process", "config_files_from_argv", "ensure_bool"]


def config_files_from_argv(argv: Sequence[str] | None = None) -> list[str]:
    """Return the config files named by ``--config_file`` on a ``monai.bundle`` command line.

    Accepts ``--config_file a.json``, ``--config_file=a.json`` and the list form
    ``--config_file "['a.json','b.json']"``.
    """
    argv = list(sys.argv if argv is None else argv)
    values: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--config_file="):
            values.append(arg.split("=", 1)[1])
    files: list[str] = []
    for value in values:
        value = value.strip()
        if value.startswith("["):
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = [v.strip(" '\"") for v in value.strip("[]").split(",")]
            files.extend(str(v) for v in parsed)
        else:
            files.append(value)
    return files


def find_bundle_root(argv: Sequence[str] | None = None) -> str:
    """Return the absolute path of the bundle whose configs are being run.

    The first config file named on the command line that sits in a ``configs`` folder decides: its
    grandparent is the bundle root. Without one (the configs were loaded programmatically, e.g. by MONAI Label,
    which passes ``bundle_root`` explicitly anyway), a working directory holding ``configs/metadata.json`` is
    the bundle root; otherwise the working directory is returned. ``--bundle_root`` on the command line always
    overrides this value.

    Args:
        argv: command line to inspect; defaults to ``sys.argv``.
    """
    for config_file in config_files_from_argv(argv):
        parent = os.path.dirname(os.path.abspath(config_file))
        if os.path.basename(parent) == "configs":
            return os.path.dirname(parent)
    return os.getcwd()
