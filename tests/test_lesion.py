"""lesion_study / lesioned_model: blocks removed at test time on a private copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.evidence import Lesioned, Lesions, lesion_study, lesioned_model
from gradflow.models.blocks import BasicBlock


class Residual(nn.Module):
    """y = relu(x W^T + x): a post-activation residual block on vectors."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(seed))

    def branch(self, x):
        return self.linear(x)

    def shortcut(self, x):
        return x

    def forward(self, x):
        return F.relu(self.branch(x) + x)


def _blocks(model):
    return [(name, m, m.branch, m.shortcut) for name, m in model.named_children()
            if isinstance(m, Residual)]  # fmt: skip


def test_removing_a_residual_block_of_a_hand_made_net_gives_the_net_without_it():
    torch.manual_seed(0)
    model = nn.Sequential(Residual(5, 1), Residual(5, 2), Residual(5, 3), nn.Linear(5, 3))
    x = torch.randn(20, 5)
    with gf.testing.assert_unchanged(model):
        lesioned = lesioned_model(model, ["1"], x, blocks=_blocks(model))
    # relu(S(y1)) = y1 since y1 >= 0: the lesioned net is block 0 -> block 2 -> head
    with torch.no_grad():
        expected = model[3](model[2](model[0](x)))
        assert torch.allclose(lesioned(x), expected, atol=1e-6)
        assert not torch.allclose(model(x), expected, atol=1e-3)  # the block mattered
    assert isinstance(model[1], Residual)  # the user's model keeps its block
    assert not lesioned.training


def test_a_block_that_is_the_identity_changes_nothing_when_removed():
    torch.manual_seed(0)
    model = gf.create_model("resnet20", init="zero_gamma", in_channels=1).eval()
    x = torch.randn(16, 1, 8, 8)
    y = model(x).argmax(1)  # the intact net is exactly right on these labels
    with gf.testing.assert_unchanged(model):
        frame = lesion_study(model, x, y, ks=[9], draws=1)
    assert (frame.error == 0).all()  # zero-gamma blocks are the identity: nothing changes
    assert list(frame.k) == [0] + [1] * 9 + [9]
    single = frame[frame.k == 1]
    assert list(single.layer) == [name for name, _ in model.named_blocks()]
    assert set(single.kind) == {"residual"} and list(single.depth) == list(range(1, 10))
    with torch.no_grad():
        lesioned = lesioned_model(model, ["stage1.block2", "stage3.block3"], x)
        assert torch.allclose(lesioned(x), model(x), atol=1e-6)


def test_plain_blocks_that_change_shape_cannot_be_removed_and_the_others_become_identities():
    torch.manual_seed(0)
    model = gf.create_model("plain20", in_channels=1).train()
    x = torch.randn(8, 1, 8, 8)
    lesions = Lesions(model, x)
    removable = [spec.name for spec in lesions.removable]
    assert "stage2.block1" not in removable and "stage3.block1" not in removable
    assert len(removable) == 7
    with pytest.raises(UserInputError, match="cannot be removed"):
        lesioned_model(model, ["stage2.block1"], x)
    with lesions.removed(["stage1.block2"]) as lesioned, torch.no_grad():
        assert isinstance(lesioned.stage1.block2, Lesioned)
        z = torch.randn(4, 16, 8, 8)
        assert torch.equal(lesioned.stage1.block2(z), z)
    assert isinstance(lesions.model.stage1.block2, BasicBlock)  # swapped back on exit
    assert isinstance(model.stage1.block2, BasicBlock) and model.training


def test_k_beyond_the_removable_blocks_and_mismatched_targets_are_user_errors():
    model = gf.create_model("plain20", in_channels=1)
    x = torch.randn(8, 1, 8, 8)
    with pytest.raises(UserInputError, match="7 removable blocks"):
        lesion_study(model, x, torch.zeros(8, dtype=torch.long), ks=[8])
    with pytest.raises(UserInputError, match="8 inputs but 7 targets"):
        lesion_study(model, x, torch.zeros(7, dtype=torch.long))
