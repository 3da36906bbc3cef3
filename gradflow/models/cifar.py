"""CIFAR-style nets of He et al. (2016a, section 4.2) and pre-activation nets (2016b).

``plainD`` / ``resnetD``: 6n+2 layers (D = 6n + 2): a 3x3 conv with 16 filters, three stages
of n basic blocks (two 3x3 convs each) on 32x32, 16x16 and 8x8 maps with 16/32/64 filters,
stride 2 at stage changes, global average pooling and a linear classifier. Default shortcut
option A (zero-padded identity), as in the paper, so plain and residual twins have exactly
the same parameters.

``preresnetD``: pre-activation ResNets (He et al. 2016b): basic blocks with 6n+2 layers
below 164 layers (preresnet20/56/110), bottleneck blocks with 9n+2 layers from 164 on
(preresnet164/1001, output widths 64/128/256); default shortcut A for basic blocks and B
for bottlenecks (the projection where the width grows).

Depths that the names ``resnet50`` / ``resnet152`` would take belong to the ImageNet
family; ``cifar_resnet50`` (and ``cifar_plain...``) names the CIFAR net of that depth.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ..errors import UserInputError
from .blocks import BasicBlock, PreActBlock, PreActBottleneck
from .network import ResNet, build_resnet
from .registry import ModelInfo, add_listed, register_family

CIFAR_INPUT = (3, 32, 32)
CIFAR_WIDTHS = (16, 32, 64)
LISTED = {
    "plain": (20, 32, 44, 56, 110),
    "resnet": (20, 32, 44, 56, 110, 1202),
    "preresnet": (20, 56, 110, 164, 1001),
}


def cifar_resnet(
    depth: int,
    *,
    residual: bool = True,
    preactivation: bool = False,
    shortcut: str | None = None,
    init: str = "he",
    norm: str | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
) -> ResNet:
    """A CIFAR plain/residual net of the given depth (6n+2; 9n+2 for pre-act bottlenecks)."""
    bottleneck = preactivation and depth >= 164
    n = blocks_per_stage(depth, bottleneck)
    block = (PreActBottleneck if bottleneck else PreActBlock) if preactivation else BasicBlock
    return build_resnet(
        block,
        (n, n, n),
        CIFAR_WIDTHS,
        style="cifar",
        residual=residual,
        shortcut=shortcut,
        default_shortcut="B" if bottleneck else "A",
        init=init,
        norm=norm,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def blocks_per_stage(depth: int, bottleneck: bool = False) -> int:
    """n for depth = 6n + 2 (basic) or 9n + 2 (bottleneck); ValueError otherwise."""
    layers_per_block = 9 if bottleneck else 6
    n, rest = divmod(depth - 2, layers_per_block)
    if rest or n < 1:
        rule = "9n+2" if bottleneck else "6n+2"
        raise UserInputError(f"depth {depth} is not {rule} for n >= 1")
    return n


def _factory(depth: int, residual: bool, preactivation: bool):
    def factory(
        *,
        shortcut: str | None = None,
        init: str = "he",
        norm: str | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> nn.Module:
        return cifar_resnet(
            depth,
            residual=residual,
            preactivation=preactivation,
            shortcut=shortcut,
            init=init,
            norm=norm,
            num_classes=num_classes,
            in_channels=in_channels,
        )

    return factory


def cifar_info(prefix: str, depth: int, name: str | None = None) -> ModelInfo:
    """Registry entry of the CIFAR net ``prefix`` (plain/resnet/preresnet) of a depth."""
    residual = prefix != "plain"
    preactivation = prefix == "preresnet"
    bottleneck = preactivation and depth >= 164
    n = blocks_per_stage(depth, bottleneck)
    kind = "pre-activation ResNet" if preactivation else ("ResNet" if residual else "plain net")
    return ModelInfo(
        name=name or f"{prefix}{depth}",
        factory=_factory(depth, residual, preactivation),
        family="cifar-preact" if preactivation else "cifar",
        depth=depth,
        blocks=3 * n,
        input_size=CIFAR_INPUT,
        description=f"CIFAR {kind}, {depth} layers ({3 * n} blocks)",
    )


ALLOWED = "CIFAR nets take 6n+2 layers (pre-activation bottlenecks from 164 on: 9n+2)"

for _prefix in ("plain", "resnet", "preresnet"):
    for _depth in LISTED[_prefix]:
        add_listed(cifar_info(_prefix, _depth))
    register_family(
        "cifar_" + _prefix,
        lambda depth, prefix=_prefix: cifar_info(prefix, depth, f"cifar_{prefix}{depth}"),
        allowed=ALLOWED,
    )
register_family("preresnet", partial(cifar_info, "preresnet"), allowed=ALLOWED)
