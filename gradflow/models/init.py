"""Initialisations, in one visible place: he, zero_gamma, skipinit, fixup.

- ``he``: He et al. (2015) normal init of every conv, std = sqrt(2 / fan_out) (the
  backward-preserving choice, as torchvision), BN gamma = 1 and beta = 0, PyTorch's default
  for the final linear layer. This is the ResNet paper's init.
- ``zero_gamma``: ``he``, then gamma = 0 in the last BN of every residual branch (bn2 of a
  basic block, bn3 of a bottleneck; the BN before the last conv in pre-activation blocks,
  which makes the branch output exactly 0). Each block with an identity shortcut starts
  as the identity (Goyal et al. 2017; torchvision's ``zero_init_residual``).
- ``skipinit``: ``he``, plus a learnable scalar alpha = 0 multiplying every residual branch
  (De & Smith 2020). Normalisation stays unless the model is built with ``norm="none"``.
- ``fixup``: Zhang, Dauphin & Ma (2019), for nets built without normalisation: every branch
  conv but the last scaled by L^(-1/(2m-2)) (L residual branches, m convs per branch), the
  last conv of every branch and the classifier zero, a scalar multiplier (1) per branch,
  and scalar biases where BN was (before each activation / addition). Fixup's extra
  scalar biases *before* each conv are not included: all biases start at 0, so the
  function at init is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserInputError
from .blocks import Block, ScalarBias

INITS = ("he", "zero_gamma", "skipinit", "fixup")


def _residual_blocks(model: nn.Module, init: str) -> list[Block]:
    blocks = [m for m in model.modules() if isinstance(m, Block) and m.residual]
    if not blocks:
        raise UserInputError(
            f"init '{init}' acts on residual branches, but this model has none "
            "(plain nets have no shortcut); use init='he'"
        )
    return blocks


def he_init(model: nn.Module) -> None:
    """He normal init (fan_out, ReLU gain) for convs; BN gamma 1, beta 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def zero_gamma_init(model: nn.Module) -> None:
    """He init, then gamma = 0 in the last BN of every residual branch."""
    he_init(model)
    for block in _residual_blocks(model, "zero_gamma"):
        norm = block.last_norm
        if not isinstance(norm, nn.BatchNorm2d):
            raise UserInputError("init 'zero_gamma' needs BatchNorm layers; build with norm='bn'")
        nn.init.zeros_(norm.weight)


def _add_branch_scale(model: nn.Module, init: str, value: float) -> None:
    for block in _residual_blocks(model, init):
        weight = block.branch_convs[0].weight
        block.branch_scale = nn.Parameter(
            torch.full((), value, dtype=weight.dtype, device=weight.device)
        )


def skipinit_init(model: nn.Module) -> None:
    """He init, plus a learnable scalar alpha = 0 on every residual branch."""
    he_init(model)
    _add_branch_scale(model, "skipinit", 0.0)


def fixup_init(model: nn.Module) -> None:
    """Fixup (Zhang et al. 2019) on a model built with ``norm="bias"`` (no normalisation)."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise UserInputError(
            "init 'fixup' is for nets without normalisation; build with norm='bias'"
        )
    he_init(model)
    blocks = _residual_blocks(model, "fixup")
    convs_per_branch = len(blocks[0].branch_convs)
    scale = len(blocks) ** (-1.0 / (2 * convs_per_branch - 2))
    with torch.no_grad():
        for block in blocks:
            *scaled, last = block.branch_convs
            for conv in scaled:
                conv.weight.mul_(scale)
            last.weight.zero_()
    _add_branch_scale(model, "fixup", 1.0)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, ScalarBias):
            nn.init.zeros_(module.bias)


_INITIALISERS = {
    "he": he_init,
    "zero_gamma": zero_gamma_init,
    "skipinit": skipinit_init,
    "fixup": fixup_init,
}


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Initialise ``model`` in place by name (one of INITS) and return it."""
    if init not in _INITIALISERS:
        raise UserInputError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    _INITIALISERS[init](model)
    return model


def default_norm(init: str) -> str:
    """The normalisation a given init expects: Fixup replaces BN by scalar biases."""
    return "bias" if init == "fixup" else "bn"
