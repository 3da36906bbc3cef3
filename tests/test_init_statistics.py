"""Initialisation statistics of every conv and linear tensor, against the papers' formulas.

He et al. (2015) as the ResNet paper and torchvision use it: w ~ N(0, 2 / fan_out) with
fan_out = out_channels * kh * kw (mode "fan_out"). With the true mean 0, n * mean(w^2) / var
is chi-square with n degrees of freedom, so each tensor's mean square is checked against
chi-square quantiles at a two-sided tail of 1e-7 (about 5.3 standard errors; the standard
error of the std is std / sqrt(2 n)). fan_in and fan_out differ wherever the width changes:
by 5.3x in variance on the CIFAR stem (27 vs 144), 2x on a 3x3 transition and a 1x1
projection, 4x on each bottleneck 1x1 and 21x on the ImageNet 7x7 stem (147 vs 3136), all far
outside the band, so the wrong fan mode fails.

The classifier keeps PyTorch's default, U(-b, b) with b = 1 / sqrt(fan_in): std b / sqrt(3)
(standard error of the std std / sqrt(5 n) for a uniform), and no value beyond b.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import nn

import gradflow as gf
from gradflow.models.blocks import ScalarBias

TAIL = 1e-7
CONFIGS = {
    "resnet20": ("resnet20", {}),
    "resnet56_A": ("resnet56", {"shortcut": "A"}),
    "resnet56_B": ("resnet56", {"shortcut": "B"}),
    "resnet56_C": ("resnet56", {"shortcut": "C"}),
    "preresnet164": ("preresnet164", {}),
    "resnet18_B": ("resnet18", {"shortcut": "B"}),
    "resnet50": ("resnet50", {}),
}
# Hand-computed He std for a few shapes (sqrt(2 / (out * kh * kw))), pinning layer shapes too.
HAND_STD = {
    ("resnet20", "stem.conv.weight"): math.sqrt(2 / (16 * 9)),
    ("resnet20", "stage2.block1.conv1.weight"): math.sqrt(2 / (32 * 9)),  # 16 -> 32 transition
    ("resnet56_B", "stage3.block1.skip.conv.weight"): math.sqrt(2 / 64),  # 1x1 projection
    ("preresnet164", "stage1.block1.conv3.weight"): math.sqrt(2 / 64),  # 1x1 expand 16 -> 64
    ("resnet18_B", "stem.conv.weight"): math.sqrt(2 / (64 * 49)),  # 7x7 stem
    ("resnet50", "stage4.block1.conv1.weight"): math.sqrt(2 / 512),  # 1x1 reduce 1024 -> 512
}


def build(key: str, init: str) -> nn.Module:
    name, options = CONFIGS[key]
    torch.manual_seed(0)
    return gf.create_model(name, init=init, **options)


def he_std(weight: torch.Tensor) -> float:
    """The paper's sqrt(2 / fan_out) for a conv weight (out, in, kh, kw)."""
    out_channels, _, kh, kw = weight.shape
    return math.sqrt(2.0 / (out_channels * kh * kw))


def assert_normal_std(weight: torch.Tensor, std: float, where: str) -> None:
    """Mean square within the chi-square band of N(0, std^2); mean within 5.3 std/sqrt(n)."""
    w = weight.detach().double().flatten()
    n = w.numel()
    low, high = scipy.stats.chi2.ppf([TAIL / 2, 1 - TAIL / 2], df=n) / n
    ratio = w.square().mean().item() / std**2
    band = f"[{low:.4f}, {high:.4f}]"
    assert low <= ratio <= high, f"{where}: var/expected {ratio:.4f} outside {band}"
    assert abs(w.mean().item()) <= 5.3 * std / math.sqrt(n), f"{where}: mean {w.mean():.3g}"


def assert_linear_default(linear: nn.Linear, where: str) -> None:
    """PyTorch's default: weight and bias U(-b, b), b = 1 / sqrt(fan_in)."""
    bound = 1 / math.sqrt(linear.in_features)
    w = linear.weight.detach().double()
    n = w.numel()
    std = bound / math.sqrt(3)
    assert abs(w.std().item() - std) <= 5.3 * std / math.sqrt(5 * n), where
    assert w.abs().max().item() <= bound and linear.bias.abs().max().item() <= bound


def conv_weights(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("key", CONFIGS)
def test_he_init_every_conv_is_normal_with_fan_out_std(key):
    model = build(key, "he")
    convs = conv_weights(model)
    for name, conv in convs.items():
        assert_normal_std(conv.weight, he_std(conv.weight), f"{key} {name}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert_linear_default(linears[0], f"{key} fc")
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    params = dict(model.named_parameters())
    for (pinned_key, layer), std in HAND_STD.items():
        if pinned_key == key:
            assert he_std(params[layer]) == pytest.approx(std, rel=1e-12)
            assert_normal_std(params[layer], std, f"{key} {layer}")


def test_the_band_tells_fan_in_from_fan_out():
    # what a mode="fan_in" mutation would give on the shapes named in the docstring
    torch.manual_seed(0)
    for shape in [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 1, 1), (256, 64, 1, 1), (64, 3, 7, 7)]:
        weight = torch.empty(shape)
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
        with pytest.raises(AssertionError, match="outside"):
            assert_normal_std(weight, he_std(weight), str(shape))
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        assert_normal_std(weight, he_std(weight), str(shape))


@pytest.mark.parametrize("key", CONFIGS)
def test_zero_gamma_zeroes_exactly_the_last_norm_of_every_branch(key):
    model = build(key, "zero_gamma")
    last = {id(block.last_norm) for block in model.blocks()}
    assert len(last) == len(model.blocks())
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            gamma = 0.0 if id(module) in last else 1.0
            assert torch.all(module.weight == gamma), name
            assert torch.all(module.bias == 0), name
    for name, conv in conv_weights(model).items():  # the convs stay He
        assert_normal_std(conv.weight, he_std(conv.weight), f"{key} {name}")


@pytest.mark.parametrize("key", ["resnet20", "resnet56_C", "preresnet164", "resnet18_B"])
def test_skipinit_branch_scale_is_exactly_zero(key):
    model = build(key, "skipinit")
    blocks = model.blocks()
    scales = [n for n, _ in model.named_parameters() if n.endswith("branch_scale")]
    assert len(scales) == len(blocks)
    for block in blocks:
        assert block.branch_scale.shape == () and block.branch_scale.item() == 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1), name
    for name, conv in conv_weights(model).items():
        assert_normal_std(conv.weight, he_std(conv.weight), f"{key} {name}")


# Fixup's branch scale L^(-1/(2m-2)), by hand: L residual branches of m convs each.
FIXUP_SCALE = {
    "resnet20": 9 ** (-1 / 2),
    "resnet56_A": 27 ** (-1 / 2),
    "resnet56_C": 27 ** (-1 / 2),
    "preresnet164": 54 ** (-1 / 4),
    "resnet18_B": 8 ** (-1 / 2),
}


@pytest.mark.parametrize("key", FIXUP_SCALE)
def test_fixup_scales_branches_zeroes_last_layers_and_biases(key):
    model = build(key, "fixup")
    scale = FIXUP_SCALE[key]
    branch = {}
    for block in model.blocks():
        *scaled, last = block.branch_convs
        branch.update({id(conv): scale for conv in scaled} | {id(last): 0.0})
        assert block.branch_scale.item() == 1.0
    for name, conv in conv_weights(model).items():
        factor = branch.get(id(conv), 1.0)  # stem and projections: plain He
        if factor == 0.0:
            assert torch.all(conv.weight == 0), name
        else:
            assert_normal_std(conv.weight, factor * he_std(conv.weight), f"{key} {name}")
    assert torch.all(model.fc.weight == 0) and torch.all(model.fc.bias == 0)
    biases = [m for m in model.modules() if isinstance(m, ScalarBias)]
    assert biases and all(b.bias.item() == 0.0 for b in biases)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
