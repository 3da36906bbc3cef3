"""signal_propagation: channel statistics at block boundaries and the shortcut/branch split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.evidence import signal_propagation


def _values(frame, quantity):
    return frame[frame.quantity == quantity].set_index("depth").value


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 16, 16, generator=generator)
    return x, torch.randint(0, 10, (16,), generator=generator)


def test_zero_gamma_resnet_blocks_pass_the_signal_unchanged_and_the_branch_carries_nothing(batch):
    torch.manual_seed(0)
    model = gf.create_model("resnet20", init="zero_gamma", in_channels=1).train()
    x, y = batch
    with gf.testing.assert_unchanged(model):
        frame = signal_propagation(model, x, y, label="zg")
    variance, mean_sq = _values(frame, "channel_variance"), _values(frame, "channel_mean_sq")
    # the stem output is >= 0 (ReLU), so relu(x + 0) = x: stage 1 output = its input
    for depth in (1, 2, 3):
        assert variance[depth] == pytest.approx(variance[0], rel=1e-6)
        assert mean_sq[depth] == pytest.approx(mean_sq[0], rel=1e-6)
    assert variance[0] > 0.1
    assert (_values(frame, "branch_variance") == 0).all()
    assert (_values(frame, "branch_grad_norm") == 0).all()  # gamma = 0: J_F = 0 exactly
    assert (_values(frame, "shortcut_grad_share") == 1).all()
    assert (_values(frame, "shortcut_grad_norm") > 0).all()
    assert list(frame.columns) == list(gf.FRAME_COLUMNS)
    assert set(frame.kind) == {"other", "residual"} and set(frame.model) == {"zg"}


def test_bn_resnet_variance_grows_within_a_stage_and_a_plain_bn_net_does_not(batch):
    x, y = batch
    growth = {}
    for name in ("resnet20", "plain20"):
        torch.manual_seed(0)
        frame = signal_propagation(gf.create_model(name, in_channels=1).train(), x, y)
        variance = _values(frame, "channel_variance")
        growth[name] = variance[3] / variance[0]  # end of stage 1 / its input
    assert growth["resnet20"] > 3  # each BN branch adds about unit variance
    assert 0.8 < growth["plain20"] < 1.25  # BN renormalises every block
    assert "shortcut_grad_norm" not in set(frame.quantity)  # plain: no shortcut


class LinearResidual(nn.Module):
    """y = post(x A^T + x): branch x -> x A^T, shortcut the identity."""

    def __init__(self, matrix: torch.Tensor, relu: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(len(matrix), len(matrix), bias=False)
        self.linear.weight.data.copy_(matrix)
        self.relu = relu

    def branch(self, x):
        return self.linear(x)

    def shortcut(self, x):
        return x

    def forward(self, x):
        total = self.branch(x) + x
        return F.relu(total) if self.relu else total


def test_two_linear_blocks_give_the_gradient_split_of_their_known_jacobians():
    generator = torch.Generator().manual_seed(3)
    a1, a2 = (0.5 * torch.randn(4, 4, generator=generator, dtype=torch.float64) for _ in "12")
    first, second = LinearResidual(a1, relu=False), LinearResidual(a2, relu=True)
    model = nn.Sequential(first, second).double()
    a1, a2 = first.linear.weight.detach(), second.linear.weight.detach()  # as stored
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    target = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    blocks = list(model.named_children())  # branch and shortcut: found from the graph
    frame = signal_propagation(model, x, target, loss_fn=lambda out, t: (out * t).sum(),
                               blocks=blocks)  # fmt: skip
    # by hand: dL/dy2 = T; block 2 sums u2 = y1 (I + A2)^T and applies relu
    y1 = x @ (torch.eye(4, dtype=torch.float64) + a1).T
    u2 = y1 @ (torch.eye(4, dtype=torch.float64) + a2).T
    g2 = target * (u2 > 0)
    g1 = g2 @ (torch.eye(4, dtype=torch.float64) + a2)  # dL/dy1 = dL/du1 (no relu in block 1)
    expected = {
        ("shortcut_grad_norm", 2): g2.norm(), ("branch_grad_norm", 2): (g2 @ a2).norm(),
        ("shortcut_grad_norm", 1): g1.norm(), ("branch_grad_norm", 1): (g1 @ a1).norm(),
        ("channel_variance", 0): x.var(0, correction=0).mean(),
        ("channel_mean_sq", 1): (y1.mean(0) ** 2).mean(),
        ("branch_variance", 2): (y1 @ a2.T).var(0, correction=0).mean(),
    }  # fmt: skip
    measured = frame.set_index(["quantity", "depth"]).value
    for key, value in expected.items():
        assert measured[key] == pytest.approx(float(value), rel=1e-10), key
    share = measured[("shortcut_grad_share", 1)]
    assert share == pytest.approx(float(g1.norm() / (g1.norm() + (g1 @ a1).norm())), rel=1e-10)
    assert (u2 < 0).any()  # the relu mask is not trivial at this input


def test_blocks_must_be_paths_or_pairs_and_any_model_is_measured_through_its_structure():
    block = LinearResidual(torch.eye(3), relu=False)
    model = nn.Sequential(block, LinearResidual(torch.eye(3), relu=False))
    wrong = [("0", block, block.branch, lambda x: 2 * x)]
    with pytest.raises(UserInputError, match="module paths"):
        signal_propagation(model, torch.randn(4, 3), blocks=wrong)
    x = torch.randn(4, 3)
    frame = signal_propagation(model, x)  # gradflow.structure finds the blocks: 2x, then 4x
    measured = frame.set_index(["quantity", "depth"]).value
    variance = float(x.var(0, correction=0).mean())
    for depth, (output, branch) in {1: (4, 1), 2: (16, 4)}.items():
        assert measured[("channel_variance", depth)] == pytest.approx(output * variance, rel=1e-5)
        assert measured[("branch_variance", depth)] == pytest.approx(branch * variance, rel=1e-5)
