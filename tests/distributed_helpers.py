"""Two gloo ranks on CPU for the Recorder's all_reduce tests.

The ranks meet through a file store in the test's own tmp_path, not a TCP port picked in
advance, so tests that run at the same time (pytest -n) cannot take each other's port.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, store: str, work: Callable[[int, str], None], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        work(rank, out)
    finally:
        dist.destroy_process_group()


def run_ranks(work: Callable[[int, str], None], out_dir: Path, world: int = 2) -> None:
    """``work(rank, str(out_dir))`` in ``world`` spawned processes joined by one gloo group;
    ``work`` must be a module-level function (it is pickled by name)."""
    store = out_dir / "gloo-store"
    mp.spawn(_rank, args=(world, str(store), work, str(out_dir)), nprocs=world, join=True)
