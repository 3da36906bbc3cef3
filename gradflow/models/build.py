"""One ``build_model`` for every caller: train, analyze, the experiments and the run cache.

The same (name, options, seed) gives the same weights everywhere: the options a model's
source cannot take are dropped, the global RNG is seeded with ``seed`` right before the
constructor runs, and the model is moved to ``device``.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import create_model

# Options every caller may pass that some sources do not take: torchvision's constructors
# have no in_channels (they are RGB), a user's factory takes what its signature names.
TORCHVISION_UNSUPPORTED = ("in_channels",)


def model_options(name: str, options: dict | None) -> dict:
    """The options ``name``'s source accepts: None values dropped, then filtered by source.

    Registry names get every option (an unknown one is the user's error, reported by the
    registry); ``torchvision:NAME`` drops ``in_channels``; ``path.py:factory`` keeps the
    options its signature accepts.
    """
    options = {key: value for key, value in (options or {}).items() if value is not None}
    if ":" not in name:
        return options
    if name.startswith("torchvision:"):
        return {k: v for k, v in options.items() if k not in TORCHVISION_UNSUPPORTED}
    from .external import accepted_options

    return accepted_options(name, options)


def build_model(
    name: str, *, options: dict | None = None, seed: int = 0, device: str | torch.device = "cpu"
) -> nn.Module:
    """``create_model(name, **accepted options)`` drawn after ``torch.manual_seed(seed)``, on
    ``device``: the same seed gives the same initial weights in every command."""
    accepted = model_options(name, options)
    torch.manual_seed(seed)
    return create_model(name, **accepted).to(device)
