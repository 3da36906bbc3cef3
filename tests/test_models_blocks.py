"""Blocks in torchvision's style: the caller builds the shortcut and names the norm layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.models import BasicBlock, Block, Bottleneck, PreActBlock, PreActBottleneck
from gradflow.models.blocks import Projection, ScalarBias, make_shortcut, scalar_bias


def test_block_takes_the_shortcut_and_norm_layer_it_is_given():
    shortcut = make_shortcut("B", 4, 8, 2, nn.BatchNorm2d)
    block = BasicBlock(4, 8, 2, shortcut, nn.BatchNorm2d, stage=2, index=1).eval()
    assert block.skip is shortcut and isinstance(shortcut, Projection) and block.projects
    assert [name for name, _ in block.named_children()][-1] == "skip"  # after the branch
    x = torch.randn(2, 4, 6, 6)
    expected = torch.relu(block.branch(x) + shortcut(x))
    torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 8, 3, 3)


def test_default_shortcut_is_the_identity_and_plain_blocks_have_none():
    residual = PreActBlock(4, 4)
    assert isinstance(residual.skip, nn.Identity) and residual.kind == "residual"
    plain = PreActBlock(4, 4, residual=False)
    assert plain.skip is None and plain.kind == "plain" and not plain.residual
    with pytest.raises(ValueError, match="plain PreActBlock takes no shortcut"):
        PreActBlock(4, 8, 2, make_shortcut("A", 4, 8, 2, nn.BatchNorm2d), residual=False)


@pytest.mark.parametrize("block_type", [BasicBlock, Bottleneck, PreActBlock, PreActBottleneck])
def test_norm_layer_callable_fills_every_norm_slot(block_type):
    block = block_type(8, 2, norm_layer=scalar_bias)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    biases = [m for m in block.modules() if isinstance(m, ScalarBias)]
    assert len(biases) == len(block.branch_convs)  # one norm slot per conv of F
    assert block.last_norm is biases[-1]


def test_block_declares_branch():
    class Bare(Block):
        pass

    with pytest.raises(NotImplementedError):
        Bare(stage=1, index=1).branch(torch.zeros(1))


def test_stride_in_only_where_a_bottleneck_uses_it():
    with pytest.raises(TypeError):
        BasicBlock(4, 4, stride_in="1x1")
    with pytest.raises(TypeError):
        PreActBottleneck(4, 4, stride_in="1x1")
    with pytest.raises(ValueError, match="depth 18 has basic blocks"):
        gf.create_model("resnet18", stride_in="3x3")
    with pytest.raises(ValueError, match="allowed: 1x1, 3x3"):
        gf.create_model("resnet50", stride_in="2x2")
    block = Bottleneck(16, 4, 2, stride_in="3x3")
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_register_warns_when_a_name_is_replaced():
    def first() -> nn.Module:
        return nn.Identity()

    def second() -> nn.Module:
        return nn.ReLU()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gf.register("test_replaced_model")(first)  # a new name: silent
    with pytest.warns(UserWarning, match="replacing model 'test_replaced_model'.*second"):
        gf.register("test_replaced_model")(second)
    assert isinstance(gf.create_model("test_replaced_model"), nn.ReLU)
