"""Shared test settings: deterministic, small, and one torch thread per core.

``pytest -n 2`` (pytest-xdist) runs two workers: each gets 2 cores // 2 workers = 1 torch
thread, and so do the CLI and experiment subprocesses they start (OMP_NUM_THREADS), so two
workers never oversubscribe the cores. Without -n, one process keeps up to 2 threads.
"""

import os

import pytest
import torch

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # inherited by subprocesses
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
