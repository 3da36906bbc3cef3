"""Parameter and multiply-add counts, measured by running the model on the meta device."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of conv and linear layers for one input (the paper's "FLOPs").

    A conv costs out_elements * (in_channels / groups) * kh * kw; a linear layer
    in_features * out_features. BN, ReLU, pooling and additions are not counted, as in
    He et al. (2016a), Table 1. Runs the model on whatever device it is on (meta is free).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()  # no BN statistics update; also much faster on the meta device
            model(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
