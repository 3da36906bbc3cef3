"""ImageNet-style nets of He et al. (2016a, Table 1): plain/ResNet 18, 34, 50, 101, 152.

Basic blocks for 18/34, bottlenecks for 50+; stem 7x7/2 conv + 3x3/2 max pool, stages of
64/128/256/512 filters (x4 output for bottlenecks). Defaults follow the paper: shortcut
option A for 18/34 (Table 2: "no extra parameters") and B for 50/101/152 (Table 3);
``shortcut="B"`` gives exactly torchvision's parameter counts. Bottlenecks put the stride in
the first 1x1 conv as the paper does (``stride_in="1x1"``, matching Table 1's FLOPs);
``stride_in="3x3"`` is torchvision's "v1.5" placement (same parameters, ~5% more FLOPs).

``resnetD`` / ``plainD`` with any other depth resolve to the CIFAR family (6n+2).
"""

from __future__ import annotations

from torch import nn

from ..errors import UserInputError, check_choice
from .blocks import BasicBlock, Bottleneck
from .cifar import cifar_info
from .network import ResNet, build_resnet
from .registry import ModelInfo, add_listed, register_family

IMAGENET_INPUT = (3, 224, 224)
IMAGENET_WIDTHS = (64, 128, 256, 512)
LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def imagenet_resnet(
    depth: int,
    *,
    residual: bool = True,
    shortcut: str | None = None,
    init: str = "he",
    norm: str | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
    stride_in: str | None = None,
) -> ResNet:
    """An ImageNet plain/residual net of depth 18, 34, 50, 101 or 152 (paper Table 1).

    ``stride_in`` (bottlenecks only): "1x1" (the paper, default) or "3x3" (torchvision).
    """
    if depth not in LAYOUTS:
        raise UserInputError(f"ImageNet-style depth {depth} is not one of {sorted(LAYOUTS)}")
    block, layout = LAYOUTS[depth]
    block_args = None
    if block is Bottleneck:
        block_args = {"stride_in": check_choice("stride_in", stride_in or "1x1", ("1x1", "3x3"))}
    elif stride_in is not None:
        raise UserInputError(
            f"stride_in places the stride inside a bottleneck; depth {depth} has basic "
            "blocks (one 3x3 conv takes the stride): drop the option, or use depth 50, 101, 152"
        )
    return build_resnet(
        block,
        layout,
        IMAGENET_WIDTHS,
        style="imagenet",
        residual=residual,
        shortcut=shortcut,
        default_shortcut="A" if block is BasicBlock else "B",
        init=init,
        norm=norm,
        num_classes=num_classes,
        in_channels=in_channels,
        block_args=block_args,
    )


def _factory(depth: int, residual: bool):
    def factory(
        *,
        shortcut: str | None = None,
        init: str = "he",
        norm: str | None = None,
        num_classes: int = 1000,
        in_channels: int = 3,
        stride_in: str | None = None,
    ) -> nn.Module:
        return imagenet_resnet(
            depth,
            residual=residual,
            shortcut=shortcut,
            init=init,
            norm=norm,
            num_classes=num_classes,
            in_channels=in_channels,
            stride_in=stride_in,
        )

    return factory


def imagenet_info(prefix: str, depth: int) -> ModelInfo:
    """Registry entry of ImageNet ``plain``/``resnet`` of a Table 1 depth."""
    _, layout = LAYOUTS[depth]
    kind = "ResNet" if prefix == "resnet" else "plain net"
    return ModelInfo(
        name=f"{prefix}{depth}",
        factory=_factory(depth, prefix == "resnet"),
        family="imagenet",
        depth=depth,
        blocks=sum(layout),
        input_size=IMAGENET_INPUT,
        description=f"ImageNet {kind}, {depth} layers ({sum(layout)} blocks)",
    )


def _by_depth(prefix: str):
    def resolve(depth: int) -> ModelInfo:
        return imagenet_info(prefix, depth) if depth in LAYOUTS else cifar_info(prefix, depth)

    return resolve


for _prefix in ("plain", "resnet"):
    for _depth in LAYOUTS:
        add_listed(imagenet_info(_prefix, _depth))
    register_family(
        _prefix,
        _by_depth(_prefix),
        allowed=f"ImageNet depths are {sorted(LAYOUTS)}, CIFAR depths 6n+2 (20, 32, 44, ...)",
    )
