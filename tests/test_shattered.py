"""shattered_gradients: correlation of input gradients along a line, and its decay summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.evidence import shattered_gradients, shattering_summary


class Quadratic(nn.Module):
    """One output 0.5 ||B x||^2: its gradient B^T B x is affine along any line."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return 0.5 * (x.flatten(1) @ self.b.T).pow(2).sum(1, keepdim=True)


def test_a_linear_model_has_gradient_correlation_one_at_every_lag():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(3, 3, 2, 2)
    frame = shattered_gradients(model, x, lines=3, points=16, measures=("cosine",))
    assert set(frame.lag) == set(range(9)) and set(frame.line) == {0, 1, 2}
    np.testing.assert_allclose(frame.value, 1.0, rtol=0, atol=1e-12)
    summary = shattering_summary(frame)
    assert summary.lag1_correlation.item() == pytest.approx(1.0)
    assert np.isnan(summary.decorrelation_lag.item())  # never drops below 1/e


def test_an_affine_directional_derivative_has_autocorrelation_one():
    # h(t) = d^T M (x0 + t d) is affine in t, so (h_i, h_{i+L}) are perfectly correlated
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    frame = shattered_gradients(Quadratic(6), x, lines=2, points=12, output=0,
                                measures=("directional",))  # fmt: skip
    np.testing.assert_allclose(frame.value, 1.0, rtol=0, atol=1e-9)


def test_the_decorrelation_lag_is_the_first_lag_below_one_over_e():
    lags = np.arange(11)
    frame = pd.DataFrame({"model": "m", "step": 0, "line": 0, "measure": "cosine", "lag": lags,
                          "distance": 0.5 * lags, "quantity": "gradient_correlation",
                          "value": np.exp(-lags / 4.5)})  # fmt: skip
    summary = shattering_summary(frame).iloc[0]
    assert summary.decorrelation_lag == 5  # exp(-4/4.5) = 0.41 > 1/e > exp(-5/4.5) = 0.33
    assert summary.decorrelation_distance == 2.5
    assert summary.lag1_correlation == pytest.approx(np.exp(-1 / 4.5))


def test_a_deep_plain_net_shatters_and_its_residual_twin_does_not():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    lag1 = {}
    for name in ("plain56", "resnet56"):
        torch.manual_seed(0)
        model = gf.create_model(name, in_channels=1).train()
        with gf.testing.assert_unchanged(model):
            frame = shattered_gradients(model, x, lines=1, points=16, radius=0.25, label=name,
                                        measures=("cosine",))  # fmt: skip
        lag1[name] = shattering_summary(frame).lag1_correlation.item()
    assert abs(lag1["plain56"]) < 0.2  # white noise
    assert lag1["resnet56"] > 0.5


def test_bad_options_are_user_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(2, 4)
    with pytest.raises(UserInputError, match="measure"):
        shattered_gradients(model, x, lines=1, measures=("fourier",))
    with pytest.raises(UserInputError, match=r"logit index in 0\.\.2"):
        shattered_gradients(model, x, lines=1, points=4, output=3)
    with pytest.raises(UserInputError, match="at least lines=3"):
        shattered_gradients(model, x, lines=3)
