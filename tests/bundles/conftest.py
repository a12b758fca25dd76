"""Shared setup of the bundle tests: where a bundle lives, its CPU-sized overrides, and how to run it.

Test modules name their bundle at the top (``BUNDLE = "seg_tn3k"``) and take the ``bundle`` fixture, a
:class:`Bundle`; modules about several bundles take ``bundle_of`` and call it with a name. Nothing here is
imported: pytest hands these objects to the tests as fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")

# CPU-sized overrides per bundle: a few seconds per epoch on 2 cores
TINY: dict[str, dict[str, Any]] = {
    "pretrain_usfm": {
        "encoder_size": "tiny",
        "load_size": 48,
        "image_size": 32,
        "mask_block_size": 8,
        "keep_size": 4,
        "synthetic_num_images": 24,
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "warmup_epochs": 1,
        "learning_rate": 0.001,
        "log_every": 1,
        "num_figure_images": 2,
    },
    # on top of quick.json: a 64 px tiny UPerNet, 40 synthetic images of 96 px
    "seg_tn3k": {"image_size": 64, "synthetic_num_images": 40, "synthetic_image_size": 96, "num_workers": 0},
    "cls_busi": {"synthetic_num_images": 30, "synthetic_image_size": 64},
    "enhance_usenhance": {
        "synthetic_num_images": 40,  # 10 per organ: 7 training, 2 validation, 1 test
        "synthetic_image_size": 48,
        "image_size": 32,
        "ngf": 8,
        "n_blocks": 1,
        "ndf": 8,
        "usfm_size": "tiny",
        "usfm_img_size": 32,
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "pool_size": 4,
        "log_every": 1,
    },
}


def cli_value(value: Any) -> str:
    """A command-line value as ``monai.bundle run`` (python-fire) reads it back: Python literals, so ``True`` and
    not JSON's ``true`` (which would stay a string); strings and paths verbatim."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, str) else repr(value)


def log_tail(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-3000:] + proc.stderr[-4000:]


class Bundle:
    """One bundle of ``bundles/``: its paths, CPU-sized overrides, config parsing and command-line runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = os.path.join(REPO, "bundles", name)
        self.configs = os.path.join(self.dir, "configs")
        self.metadata = os.path.join(self.configs, "metadata.json")

    def config(self, *names: str) -> list[str]:
        """Absolute paths of config files; a name holding a ``/`` (``configs/train.json``) is kept as given."""
        return [n if "/" in n else os.path.join(self.configs, n) for n in names]

    def load(self, name: str, skip_missing: bool = False) -> dict:
        """A config file as JSON; ``skip_missing`` skips the test when the bundle has no such file."""
        path = os.path.join(self.configs, name)
        if skip_missing and not os.path.isfile(path):
            pytest.skip(f"{self.name} has no {name}")
        with open(path) as f:
            return json.load(f)

    def tiny(self, **extra: Any) -> dict[str, Any]:
        """A fresh copy of the CPU-sized overrides, updated with ``extra``."""
        return {**TINY[self.name], **extra}

    def parser(self, names: Sequence[str], **overrides: Any):
        """A ``ConfigParser`` of config files ``names`` with ``overrides`` applied."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(self.config(*names))
        parser.update(overrides)
        return parser

    def workflow(self, names: Sequence[str], workflow_type: str, bundle_root: Any, **overrides: Any):
        """An initialized ``ConfigWorkflow`` of config files ``names`` (metadata and logging of the bundle)."""
        from monai.bundle import ConfigWorkflow

        workflow = ConfigWorkflow(
            config_file=self.config(*names), meta_file=self.metadata,
            logging_file=os.path.join(self.configs, "logging.conf"), workflow_type=workflow_type,
            bundle_root=str(bundle_root), **overrides,
        )
        workflow.initialize()
        return workflow

    def verify_metadata(self) -> dict:
        """Check ``metadata.json`` against MONAI's schema (skip when no copy of it is available) and return it."""
        if not os.path.isfile(SCHEMA):
            pytest.skip(f"MONAI metadata schema not available offline (looked for {SCHEMA})")
        pytest.importorskip("jsonschema")
        from monai.bundle import verify_metadata

        verify_metadata(meta_file=self.metadata, filepath=SCHEMA)  # raises when invalid
        with open(self.metadata) as f:
            return json.load(f)

    def run(
        self,
        names: Sequence[str],
        bundle_root: Any = None,
        *,
        cwd: str = REPO,
        launcher: Sequence[str] = (),
        check: bool = True,
        timeout: float = 600,
        **overrides: Any,
    ) -> subprocess.CompletedProcess:
        """``python -m monai.bundle run`` in a subprocess (one thread, this repository importable).

        Args:
            names: config files (see :meth:`config`).
            bundle_root: ``--bundle_root``, typically under ``tmp_path``.
            cwd: working directory of the run.
            launcher: a module that starts ``monai.bundle`` and its arguments, e.g.
                ``("torch.distributed.run", "--standalone", "--nproc_per_node", "2")``.
            check: fail the test, showing the end of the log, unless the run exits with status 0.
            overrides: ``--key value`` pairs (see :func:`cli_value`).
        """
        cmd = [sys.executable, "-m", *((*launcher, "-m") if launcher else ()), "monai.bundle", "run",
               "--config_file", json.dumps(self.config(*names))]
        if bundle_root is not None:
            cmd += ["--bundle_root", cli_value(bundle_root)]
        for key, value in overrides.items():
            cmd += [f"--{key}", cli_value(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, log_tail(proc)
        return proc


@pytest.fixture(scope="module")
def bundle(request) -> Bundle:
    """The bundle named by the test module's ``BUNDLE``."""
    return Bundle(request.module.BUNDLE)


@pytest.fixture(scope="session")
def bundle_of():
    """``bundle_of(name)``: a :class:`Bundle` by name, for tests about several bundles."""
    return Bundle
