"""Plain and residual blocks of He et al. (2016a, 2016b), each exposing F and its shortcut.

In torchvision's style the network builds each block's shortcut (``make_shortcut``) and
passes it, with a ``norm_layer`` callable (channels -> module), into the block; a block with
``residual=False`` is the plain twin: the same layers, no shortcut, so plain and residual
twins have the same layers (and, under shortcut option A, the same parameters).

Each block exposes its structure so that analysis code needs no guessing:

- ``block.kind``: ``"residual"`` or ``"plain"``;
- ``block.branch(x)``: the residual branch F(x), exactly what is added to the shortcut;
- ``block.shortcut(x)``: the shortcut S(x) (identity, option-A zero padding or projection);
- ``block.stage`` / ``block.index``: 1-based position in the network;
- ``block.last_norm``: the normalisation layer whose gamma zero-gamma sets to 0;
- ``block.branch_convs``: the convolutions of F in forward order;
- ``block.response_layers``: names of the sub-modules whose outputs are the ResNet paper's
  Figure 7 "responses" (the output of every 3x3 conv after its BN, before the nonlinearity
  and before the addition).

Post-activation blocks compute H(x) = relu(F(x) + S(x)) (plain: relu(F(x))); pre-activation
blocks compute H(x) = F(x) + S(x) with F starting by BN-ReLU (plain: F(x)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError

Shortcut = Literal["A", "B", "C"]
Norm = Literal["bn", "none", "bias"]
NormLayer = Callable[[int], nn.Module]
SHORTCUTS = ("A", "B", "C")
NORMS = ("bn", "none", "bias")


class ScalarBias(nn.Module):
    """A learnable scalar bias, y = x + b (b = 0 at init); Fixup's replacement for BN."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def scalar_bias(channels: int) -> ScalarBias:
    """``norm_layer`` for ``norm="bias"``: one scalar bias, whatever the width."""
    return ScalarBias()


def no_norm(channels: int) -> nn.Identity:
    """``norm_layer`` for ``norm="none"``: nothing after the conv."""
    return nn.Identity()


NORM_LAYERS: dict[str, NormLayer] = {"bn": nn.BatchNorm2d, "bias": scalar_bias, "none": no_norm}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by the stride, extra channels zero-padded (no params)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class Projection(nn.Module):
    """Options B/C: a strided 1x1 convolution followed by normalisation."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.conv = conv1x1(in_channels, out_channels, stride)
        self.bn = norm_layer(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def make_shortcut(
    option: Shortcut, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
) -> nn.Module:
    """Shortcut by the paper's options: A zero-pads, B projects where shape changes, C always."""
    changes_shape = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and changes_shape):
        return Projection(in_channels, out_channels, stride, norm_layer)
    if changes_shape:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


class Block(nn.Module):
    """Base class: what every block shares (kind, position, branch scale, shortcut).

    Subclasses build their layers, then call ``self.attach_shortcut`` last, so that the
    shortcut comes after the branch in ``modules()`` (the order He init draws in) and in
    the state dict; they name their last norm and their branch convs as class attributes.
    """

    expansion = 1
    preactivation = False
    response_layers: tuple[str, ...] = ()
    last_norm_name = ""
    branch_conv_names: tuple[str, ...] = ()

    def __init__(self, *, stage: int, index: int) -> None:
        super().__init__()
        self.stage = stage
        self.index = index
        self.skip: nn.Module | None = None
        # SkipInit / Fixup put a learnable scalar on F; None means no scalar (factor 1).
        self.register_parameter("branch_scale", None)

    def attach_shortcut(self, shortcut: nn.Module | None, residual: bool) -> None:
        """Register S: ``shortcut`` (None: the identity) if residual; plain blocks have none."""
        if not residual:
            if shortcut is not None:
                raise UserInputError(f"a plain {type(self).__name__} takes no shortcut")
            return
        self.skip = nn.Identity() if shortcut is None else shortcut

    @property
    def residual(self) -> bool:
        return self.skip is not None

    @property
    def kind(self) -> str:
        return "residual" if self.residual else "plain"

    @property
    def projects(self) -> bool:
        """True when the shortcut is a learned projection (options B/C)."""
        return isinstance(self.skip, Projection)

    @property
    def last_norm(self) -> nn.Module:
        """The norm after (post-activation) or before (pre-activation) the last conv of F."""
        return getattr(self, self.last_norm_name)

    @property
    def branch_convs(self) -> list[nn.Conv2d]:
        return [getattr(self, name) for name in self.branch_conv_names]

    def branch(self, x: Tensor) -> Tensor:
        """F(x): the residual branch, exactly what the block adds to S(x)."""
        raise NotImplementedError

    def _scale(self, out: Tensor) -> Tensor:
        return out if self.branch_scale is None else out * self.branch_scale

    def shortcut(self, x: Tensor) -> Tensor:
        """S(x): what the block adds to F(x); plain blocks have none."""
        if self.skip is None:
            raise UserInputError(
                f"{type(self).__name__} at stage {self.stage} is plain: no shortcut"
            )
        return self.skip(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, stage={self.stage}, index={self.index}"


class PostActivationBlock(Block):
    """Shared forward of post-activation blocks: H(x) = relu(F(x) + S(x)), plain: relu(F(x))."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return F.relu(out)


class BasicBlock(PostActivationBlock):
    """Two 3x3 convs (He et al. 2016a, Fig. 2): F(x) = BN(W2 relu(BN(W1 x)))."""

    response_layers = ("bn1", "bn2")
    last_norm_name = "bn2"
    branch_conv_names = ("conv1", "conv2")

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        *,
        residual: bool = True,
        stage: int = 1,
        index: int = 1,
    ) -> None:
        super().__init__(stage=stage, index=index)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = norm_layer(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = norm_layer(channels)
        self.attach_shortcut(shortcut, residual)

    def branch(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self._scale(self.bn2(self.conv2(out)))


class Bottleneck(PostActivationBlock):
    """1x1 reduce, 3x3, 1x1 expand (He et al. 2016a, Fig. 5), output 4x the width.

    ``stride_in="1x1"`` puts the stride in the first 1x1 conv as the paper (and its Table 1
    FLOPs) does; ``"3x3"`` puts it in the 3x3 conv as torchvision does ("ResNet v1.5").
    """

    expansion = 4
    response_layers = ("bn2",)
    last_norm_name = "bn3"
    branch_conv_names = ("conv1", "conv2", "conv3")

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        *,
        residual: bool = True,
        stage: int = 1,
        index: int = 1,
        stride_in: str = "1x1",
    ) -> None:
        super().__init__(stage=stage, index=index)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = norm_layer(channels)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = norm_layer(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = norm_layer(channels * self.expansion)
        self.attach_shortcut(shortcut, residual)

    def branch(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self._scale(self.bn3(self.conv3(out)))


class PreActivationBlock(Block):
    """Shared forward of pre-activation blocks: H(x) = F(x) + S(x), F starting with BN-ReLU.

    A projection shortcut takes the pre-activated input relu(BN(x)), as in the paper's code,
    so that the BN-ReLU runs once per forward pass.
    """

    preactivation = True

    def _branch_from(self, pre: Tensor) -> Tensor:
        """F given the pre-activated input relu(bn1(x))."""
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        return self._branch_from(F.relu(self.bn1(x)))

    def shortcut(self, x: Tensor) -> Tensor:
        if self.projects:
            return self.skip(F.relu(self.bn1(x)))
        return super().shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self._branch_from(pre)
        if self.skip is not None:
            out = out + self.skip(pre if self.projects else x)
        return out


class PreActBlock(PreActivationBlock):
    """Pre-activation basic block (He et al. 2016b): F(x) = W2 relu(BN(W1 relu(BN(x)))).

    Figure-7 responses of a pre-activation block are its 3x3 conv outputs (before addition).
    """

    response_layers = ("conv1", "conv2")
    last_norm_name = "bn2"
    branch_conv_names = ("conv1", "conv2")

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        *,
        residual: bool = True,
        stage: int = 1,
        index: int = 1,
    ) -> None:
        super().__init__(stage=stage, index=index)
        self.bn1 = norm_layer(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = norm_layer(channels)
        self.conv2 = conv3x3(channels, channels)
        self.attach_shortcut(shortcut, residual)

    def _branch_from(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        return self._scale(self.conv2(F.relu(self.bn2(out))))


class PreActBottleneck(PreActivationBlock):
    """Pre-activation bottleneck (He et al. 2016b): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1.

    The stride sits in the 3x3 conv.
    """

    expansion = 4
    response_layers = ("conv2",)
    last_norm_name = "bn3"
    branch_conv_names = ("conv1", "conv2", "conv3")

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        *,
        residual: bool = True,
        stage: int = 1,
        index: int = 1,
    ) -> None:
        super().__init__(stage=stage, index=index)
        self.bn1 = norm_layer(in_channels)
        self.conv1 = conv1x1(in_channels, channels)
        self.bn2 = norm_layer(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = norm_layer(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.attach_shortcut(shortcut, residual)

    def _branch_from(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return self._scale(self.conv3(F.relu(self.bn3(out))))
