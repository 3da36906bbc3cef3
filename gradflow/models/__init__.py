"""The model zoo: plain and residual nets of He et al. (2016), created by name."""

from . import cifar, imagenet  # noqa: F401  (registers the families)
from .blocks import (
    BasicBlock,
    Block,
    Bottleneck,
    PreActBlock,
    PreActBottleneck,
    Projection,
    ZeroPadShortcut,
)
from .complexity import count_macs, count_parameters
from .init import INITS, apply_init
from .network import ResNet
from .registry import ModelInfo, create_model, get_model_info, list_models, register
from .sources import ModelSource, model_source

__all__ = [
    "INITS",
    "BasicBlock",
    "Block",
    "Bottleneck",
    "ModelInfo",
    "ModelSource",
    "PreActBlock",
    "PreActBottleneck",
    "Projection",
    "ResNet",
    "ZeroPadShortcut",
    "apply_init",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_model_info",
    "list_models",
    "model_source",
    "register",
]
