"""block_spectra against dense Jacobians taken independently, at each block's real input.

For every zoo block kind (post-activation basic and bottleneck, pre-activation basic and
bottleneck, their plain twins, identity and projection shortcuts) the frame's J_H, I+J_F,
J_F and prod values must equal the singular values of the dense Jacobian of the same map,
evaluated at the input the block really receives in the calibrated copy. He init makes
I + J_F differ from I; depths past the first make a wrong (shifted) input visible.

The bottleneck kinds run on narrow few-block twins of resnet50 and preresnet164 (the same
block classes, stem, head and default shortcut B, built by ``build_resnet`` as the zoo
builds them): the full nets cost minutes of dense Jacobians for the same block maps.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

import gradflow as gf
from gradflow.models.blocks import Bottleneck, PreActBottleneck
from gradflow.models.network import build_resnet


def tiny_bottleneck_net(style: str) -> torch.nn.Module:
    """resnet50's (imagenet) or preresnet164's (cifar) blocks, 2 + 1 + ... blocks, narrow."""
    block, widths = (
        (Bottleneck, (4, 8, 8, 8)) if style == "imagenet" else (PreActBottleneck, (4, 8, 8))
    )
    return build_resnet(
        block, (2,) + (1,) * (len(widths) - 1), widths, style=style, residual=True,
        shortcut=None, default_shortcut="B", init="he", norm=None, num_classes=10,
        in_channels=3, block_args={"stride_in": "1x1"} if block is Bottleneck else None,
    )  # fmt: skip


TINY = {"tiny_resnet50": "imagenet", "tiny_preresnet164": "cifar"}

CASES = [  # model, options, depth (1-based block number), expected block operators
    ("resnet20", {}, 2, ("I+J_F", "J_F")),  # identity shortcut, basic post-activation
    ("resnet20", {}, 4, ("I+J_F", "J_F")),  # stage transition: option-A zero-pad shortcut
    ("resnet20", {"shortcut": "B"}, 4, ("I+J_F", "J_F")),  # projection shortcut
    ("plain20", {}, 3, ("J_H",)),
    ("preresnet20", {}, 2, ("I+J_F", "J_F")),  # pre-activation basic
    ("tiny_preresnet164", {}, 2, ("I+J_F", "J_F")),  # pre-activation bottleneck
    ("tiny_preresnet164", {}, 3, ("I+J_F", "J_F")),  # its transition: projection shortcut
    ("tiny_resnet50", {}, 2, ("I+J_F", "J_F")),  # bottleneck, post-activation
    ("tiny_resnet50", {}, 3, ("I+J_F", "J_F")),  # its transition: stride in the 1x1 conv
]


def dense_singular_values(fn, point: torch.Tensor) -> torch.Tensor:
    """All singular values of d fn / d point at ``point`` (float64), largest first."""
    matrix = jacrev(fn)(point).reshape(fn(point).numel(), point.numel())
    return torch.linalg.svdvals(matrix)


def block_inputs(twin, point: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """z_0 (stem output) ... z_{depth-1}: the input of each block up to ``depth``."""
    with torch.no_grad():
        inputs = [twin.forward_stem(point)]
        for _, block in twin.named_blocks()[: depth - 1]:
            inputs.append(block(inputs[-1]))
    return inputs


@pytest.mark.parametrize(("name", "options", "depth", "operators"), CASES)
def test_block_and_prod_spectra_equal_dense_jacobians(name, options, depth, operators):
    torch.manual_seed(0)
    model = tiny_bottleneck_net(TINY[name]) if name in TINY else gf.create_model(name, **options)
    model = model.double()
    # 4x4 CIFAR-style maps (2x2 after the transition): every 3x3 conv still mixes
    # neighbours, and each dense Jacobian is 256 x 256 rather than 1024 x 1024
    size = 16 if name == "tiny_resnet50" else 4
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    frame = gf.block_spectra(
        model, x, k=4, depths=[depth], samples=1, which="largest", tol=1e-8,
        max_matvecs=1000, hutchinson=0,
    )  # fmt: skip
    twin = gf.calibrated_copy(model, x)
    point = x[0:1]
    z = block_inputs(twin, point, depth)[-1]
    block = twin.named_blocks()[depth - 1][1]
    maps = {"I+J_F": block, "J_H": block, "J_F": block.branch}
    prefix = [b for _, b in twin.named_blocks()[:depth]]

    def prod(v: torch.Tensor) -> torch.Tensor:
        out = twin.forward_stem(v)
        for b in prefix:
            out = b(out)
        return out

    expected = {op: dense_singular_values(maps[op], z)[:4] for op in operators}
    expected["prod"] = dense_singular_values(prod, point)[:4]
    assert set(frame["operator"]) == {*operators, "prod"}
    for operator, want in expected.items():
        rows = frame[frame["operator"] == operator].sort_values("index")
        got = torch.from_numpy(rows["sigma"].to_numpy().copy())
        bound = torch.from_numpy(rows["error"].to_numpy().copy())
        assert len(got) == 4, operator
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9, msg=operator)
        # the certified bound holds: the true value lies within the reported error
        assert ((got - want).abs() <= bound + 1e-12 * want).all(), operator
    # He init: the residual block is far from the identity, so the test is not trivial
    if "J_F" in operators:
        assert expected["J_F"][0] > 0.1
