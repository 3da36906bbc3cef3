"""Signal probes across two gloo ranks: all_reduce gives the statistics of both batches."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from distributed_helpers import run_ranks
from torch import nn

from gradflow.record import Recorder

SIGNAL = ["channel_variance", "branch_variance", "shortcut_grad_share"]


class Residual(nn.Module):
    """x + W2 relu(BN(W1 x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = (
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.Linear(width, width),
        )

    def forward(self, x):
        return x + self.fc2(F.relu(self.bn(self.fc1(x))))


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 6), Residual(6), Residual(6), nn.Linear(6, 3))


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    return [(torch.randn(n, 5) * 2 + 1, torch.randint(0, 3, (n,))) for n in (4, 9)]


def measure(batches, reduce: bool) -> pd.Series:
    model = make_model()
    with Recorder(model, SIGNAL) as rec:
        for x, y in batches:
            F.cross_entropy(model(x), y, reduction="sum").backward()
        if reduce:
            rec.all_reduce()
        rec.step()
    return rec.frame().set_index(["quantity", "layer"]).value


def _worker(rank: int, out_dir: str) -> None:
    measure([make_batches()[rank]], reduce=True).to_pickle(os.path.join(out_dir, f"{rank}.pkl"))


@pytest.mark.timeout(300)
def test_two_ranks_merge_to_the_single_process_signal_statistics(tmp_path):
    run_ranks(_worker, tmp_path)
    expected = measure(make_batches(), reduce=False)  # both batches in one process, one step
    assert {"branch_variance", "shortcut_grad_share"} <= set(expected.index.get_level_values(0))
    for rank in range(2):
        got = pd.read_pickle(tmp_path / f"{rank}.pkl").loc[expected.index]
        pd.testing.assert_series_equal(got, expected, rtol=1e-5, atol=1e-7, check_names=False)
