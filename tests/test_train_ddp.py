"""``torchrun --nproc-per-node 2 -m gradflow train``: DDP on CPU (gloo), one set of outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch.distributed as dist


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_process_ddp_run_stays_in_sync_and_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port on this host
        "--nproc-per-node",
        "2",
        "-m",
        "gradflow",
        "train",
        "--model",
        "resnet8",
        "--synthetic-size",
        "128",
        "--synthetic-image-size",
        "8",
        "--batch-size",
        "16",
        "--iterations",
        "6",
        "--eval-every",
        "3",
        "--record-every",
        "3",
        "--checkpoint-every",
        "3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resnet8 after 6 iterations") == 1  # only rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == [
        ".gradflow-output",  # the marker, written by rank 0 only
        "checkpoint.pt",
        "final.pt",
        "history.csv",
        "history.parquet",
        "meta.json",
        "records.csv",
        "records.parquet",
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2
    # DDP averages gradients and broadcasts BN buffers: replicas must agree to the bit
    assert meta["max_weight_difference_across_ranks"] == 0.0
    history = pd.read_parquet(out / "history.parquet")
    assert sorted(history.step.unique()) == [3, 6] and len(history) == 2 * 5  # one rank's rows
    records = pd.read_parquet(out / "records.parquet")
    assert sorted(records.step.unique()) == [0, 3]
    assert len(records) == 2 * len(records[records.step == 0])  # not duplicated per rank
