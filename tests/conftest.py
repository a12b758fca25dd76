"""Shared test setup: small thread pools (tests run two at a time on 2 cores), quiet matplotlib."""

import os

# Two test workers share two cores: one thread each, inherited by the bundle runs the tests start as
# subprocesses (torch's thread pools spin-wait and collapse when oversubscribed).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT
