"""Recorder.all_reduce: two gloo ranks with different batches give the statistics of both."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from distributed_helpers import run_ranks
from torch import nn

from gradflow.record import Recorder

QUANTITIES = ["response_std", "response_mean", "response_absmax", "activation_grad_norm"]


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    return [(torch.randn(n, 5) * 2 + 1, torch.randint(0, 3, (n,))) for n in (4, 9)]


def run_batches(model: nn.Module, rec: Recorder, batches) -> None:
    for x, y in batches:
        F.cross_entropy(model(x), y, reduction="sum").backward()


def _worker(rank: int, out_dir: str) -> None:
    model = make_model()
    with Recorder(model, QUANTITIES) as rec:
        run_batches(model, rec, [make_batches()[rank]])
        rec.all_reduce()
        rec.step()
    rec.frame().to_pickle(os.path.join(out_dir, f"rank{rank}.pkl"))


@pytest.mark.timeout(120)
def test_two_ranks_merge_to_the_single_process_statistics(tmp_path):
    run_ranks(_worker, tmp_path)
    model = make_model()
    with Recorder(model, QUANTITIES) as rec:
        run_batches(model, rec, make_batches())  # both batches in one process, one step
        rec.step()
    expected = rec.frame().set_index(["quantity", "layer"]).value
    for rank in range(2):
        frame = pd.read_pickle(tmp_path / f"rank{rank}.pkl").set_index(["quantity", "layer"])
        got = frame.value.loc[expected.index]
        # float32 statistics merged in a different order (Chan vs parallel formula); the BN
        # output mean is ~1e-8 (zero up to rounding), hence the absolute tolerance
        pd.testing.assert_series_equal(got, expected, rtol=1e-5, atol=1e-6, check_names=False)


def test_all_reduce_is_a_no_op_without_a_process_group():
    assert not dist.is_initialized()
    model = make_model()
    with Recorder(model, QUANTITIES) as rec:
        run_batches(model, rec, make_batches()[:1])
        before = {k: float(v.m2) for k, v in rec._response.items()}
        rec.all_reduce()
        assert {k: float(v.m2) for k, v in rec._response.items()} == before
