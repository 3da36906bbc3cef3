"""FrozenNorm: block_spectra's private copy replaces eval-mode BatchNorm by the same affine map."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradflow.spectra.blocks import FrozenNorm, freeze_batch_norms


def _trained_norm(norm: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
        norm.train()(3.0 * torch.randn(*shape) + 1.0)  # non-trivial running statistics
    return norm.eval()


@pytest.mark.parametrize(
    ("norm", "shape"),
    [
        (nn.BatchNorm1d(5), (8, 5)),
        (nn.BatchNorm1d(5), (8, 5, 7)),
        (nn.BatchNorm2d(3), (4, 3, 6, 6)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_norm_is_the_eval_batch_norm_and_its_jacobian(norm, shape, dtype):
    norm = _trained_norm(norm, shape).to(dtype)
    frozen = FrozenNorm(norm)
    z = torch.randn(*shape, dtype=dtype)
    scale = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(frozen(z), norm(z), rtol=scale, atol=scale)
    tangent = torch.randn(*shape, dtype=dtype)
    expected = torch.func.jvp(norm, (z,), (tangent,))[1]
    torch.testing.assert_close(torch.func.jvp(frozen, (z,), (tangent,))[1], expected)


def test_freeze_batch_norms_replaces_only_eval_norms_with_running_statistics():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False), nn.BatchNorm2d(4)),
    ).eval()  # fmt: skip
    model[3][1].train()
    twin = copy.deepcopy(model)
    assert freeze_batch_norms(twin) == 1
    assert isinstance(twin[1], FrozenNorm)
    assert isinstance(twin[3][0], nn.BatchNorm2d) and isinstance(twin[3][1], nn.BatchNorm2d)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is untouched
