"""FrozenNorm: block_spectra's private copy replaces eval-mode BatchNorm by the same affine map."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradflow.spectra.frozen import FrozenNorm, freeze_batch_norms


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
    assert freeze_batch_norms(twin) == {"folded": 0, "frozen": 1}
    assert isinstance(twin[1], FrozenNorm)
    assert isinstance(twin[3][0], nn.BatchNorm2d) and isinstance(twin[3][1], nn.BatchNorm2d)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is untouched


class _Net(nn.Module):
    """conv -> bn (foldable), a conv read by its bn and by a skip (not foldable), bn -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.bn3, self.conv3 = nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(z)
        z = torch.relu(self.bn2(y) + y)
        return self.conv3(self.bn3(z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_freeze_batch_norms_folds_a_norm_into_the_conv_that_alone_feeds_it(dtype):
    model = _Net()
    for norm, shape in (
        (model.bn1, (8, 4, 5, 5)),
        (model.bn2, (8, 4, 5, 5)),
        (model.bn3, (8, 4, 5, 5)),
    ):
        _trained_norm(norm, shape)
    model = model.to(dtype).eval().requires_grad_(False)
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    twin = copy.deepcopy(model)
    scale = 1e-5 if dtype == torch.float32 else 1e-12
    assert freeze_batch_norms(twin, x[:1]) == {"folded": 1, "frozen": 2}
    assert isinstance(twin.bn1, nn.Identity) and isinstance(twin.bn2, FrozenNorm)
    only = copy.deepcopy(model)
    assert freeze_batch_norms(only, x[:1], replace_rest=False) == {"folded": 1, "frozen": 0}
    assert isinstance(only.bn2, nn.BatchNorm2d)
    torch.testing.assert_close(only(x), model(x), rtol=scale, atol=scale)
    torch.testing.assert_close(twin(x), model(x), rtol=scale, atol=scale)
    expected = torch.func.jacrev(model)(x[:1])
    torch.testing.assert_close(torch.func.jacrev(twin)(x[:1]), expected, rtol=scale, atol=scale)
