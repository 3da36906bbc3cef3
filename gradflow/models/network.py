"""One network skeleton for every zoo model: stem -> stages of blocks -> head.

Module paths are stable and readable: ``stem.conv``, ``stem.bn``, ``stage2.block3.bn1``,
``head.bn`` (pre-activation nets only), ``fc``. ``model.blocks()`` lists the blocks in
forward order, so ``forward_stem``, the blocks and ``forward_head`` compose to ``forward``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError, check_choice
from .blocks import NORM_LAYERS, NORMS, SHORTCUTS, Block, NormLayer, Shortcut, make_shortcut


class Stem(nn.Module):
    """The input layer: a 3x3 conv (CIFAR) or a 7x7/2 conv + 3x3/2 max pool (ImageNet).

    Post-activation nets follow the conv with BN-ReLU; pre-activation nets do not (their
    first block starts with BN-ReLU).
    """

    def __init__(
        self, in_channels: int, width: int, style: str, norm_layer: NormLayer, preactivation: bool
    ) -> None:
        super().__init__()
        if style == "imagenet":
            self.conv = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = None if preactivation else norm_layer(width)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if style == "imagenet" else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x))
        if self.pool is not None:
            x = self.pool(x)
        return x


class Head(nn.Module):
    """Final BN-ReLU (pre-activation nets only), global average pooling."""

    def __init__(self, channels: int, norm_layer: NormLayer, preactivation: bool) -> None:
        super().__init__()
        self.bn = norm_layer(channels) if preactivation else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x.mean(dim=(2, 3))


class ResNet(nn.Module):
    """A plain or residual network of He et al. (2016): stem, stages of blocks, head, fc.

    The network builds every shortcut (``make_shortcut`` by the option A/B/C) and hands it
    and ``norm_layer`` to the block, as torchvision does; ``residual=False`` gives the plain
    twin: the same layers with every shortcut removed. ``block_args`` go to every block
    (e.g. ``{"stride_in": "3x3"}`` for bottlenecks, as timm's ``block_args``).
    """

    def __init__(
        self,
        block: type[Block],
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        *,
        style: str,
        residual: bool = True,
        shortcut: Shortcut = "A",
        norm_layer: NormLayer = nn.BatchNorm2d,
        in_channels: int = 3,
        num_classes: int = 10,
        block_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        stem_width = widths[0] if style == "cifar" else 64
        self.style = style
        self.residual = residual
        self.stem = Stem(in_channels, stem_width, style, norm_layer, block.preactivation)
        channels = stem_width
        for stage, (count, width) in enumerate(zip(blocks_per_stage, widths, strict=True), start=1):
            layers = OrderedDict()
            for index in range(1, count + 1):
                stride = 2 if (index == 1 and stage > 1) else 1
                out_channels = width * block.expansion
                skip = (
                    make_shortcut(shortcut, channels, out_channels, stride, norm_layer)
                    if residual
                    else None
                )
                layers[f"block{index}"] = block(
                    channels,
                    width,
                    stride,
                    skip,
                    norm_layer,
                    residual=residual,
                    stage=stage,
                    index=index,
                    **(block_args or {}),
                )
                channels = out_channels
            self.add_module(f"stage{stage}", nn.Sequential(layers))
        self.num_stages = len(widths)
        self.head = Head(channels, norm_layer, block.preactivation)
        self.fc = nn.Linear(channels, num_classes)
        self.feature_channels = channels

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"stage{s}") for s in range(1, self.num_stages + 1)]

    def blocks(self) -> list[Block]:
        """All blocks in forward order."""
        return [block for stage in self.stages() for block in stage]

    def named_blocks(self) -> list[tuple[str, Block]]:
        """(module path, block) in forward order, e.g. ``("stage2.block3", block)``."""
        return [
            (f"stage{s}.{name}", block)
            for s, stage in enumerate(self.stages(), start=1)
            for name, block in stage.named_children()
        ]

    def response_layers(self) -> list[str]:
        """Module paths whose outputs are the paper's Figure 7 responses, in forward order.

        That is the output of every 3x3 conv after its BN, before the nonlinearity and
        before the residual addition (the stem's BN included); see ``Block.response_layers``
        for pre-activation blocks.
        """
        names = [] if self.stem.bn is None or self.style != "cifar" else ["stem.bn"]
        for path, block in self.named_blocks():
            names += [f"{path}.{layer}" for layer in block.response_layers]
        return names

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_head(self, z: Tensor) -> Tensor:
        return self.fc(self.head(z))

    def forward(self, x: Tensor) -> Tensor:
        z = self.forward_stem(x)
        for stage in self.stages():
            z = stage(z)
        return self.forward_head(z)


def build_resnet(
    block: type[Block],
    blocks_per_stage: Sequence[int],
    widths: Sequence[int],
    *,
    style: str,
    residual: bool,
    shortcut: str | None,
    default_shortcut: str,
    init: str,
    norm: str | None,
    num_classes: int,
    in_channels: int,
    block_args: Mapping[str, Any] | None = None,
) -> ResNet:
    """Validate user options, build the network, initialise it (see ``init.py``)."""
    from .init import INITS, apply_init, default_norm

    if not residual and shortcut not in (None, "A"):
        raise UserInputError(
            f"plain networks have no shortcuts, so shortcut={shortcut!r} does not apply; "
            "use a resnet* model to compare shortcut options"
        )
    shortcut = check_choice("shortcut", shortcut or default_shortcut, SHORTCUTS)
    init = check_choice("init", init, INITS)
    norm = check_choice("norm", norm or default_norm(init), NORMS)
    for option, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise UserInputError(f"{option} must be a positive integer, got {value!r}")
    model = ResNet(
        block,
        blocks_per_stage,
        widths,
        style=style,
        residual=residual,
        shortcut=shortcut,
        norm_layer=NORM_LAYERS[norm],
        in_channels=in_channels,
        num_classes=num_classes,
        block_args=block_args,
    )
    return apply_init(model, init)
