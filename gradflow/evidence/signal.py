"""Signal propagation plots (Brock, De and Smith 2021) and the shortcut/branch gradient split,
on one batch: the Recorder's signal probes (``gradflow.signal_probes``, which defines the six
quantities) run by ``gradflow.record``, so that these numbers are the Recorder's numbers.

Depth 0 (layer ``stem``) is the input of the first block, depth k the output of block k;
branch quantities exist at residual blocks whose branch ``gradflow.structure`` isolates (all
zoo and torchvision-style blocks, pre-LN transformer layers; not post-LN layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
from torch import Tensor, nn

from ..errors import UserInputError
from ..inputs import Inputs
from ..probes import SIGNAL_QUANTITIES, BranchVariance, ChannelVariance, ShortcutShare
from ..record_pass import record

__all__ = ["SIGNAL_QUANTITIES", "signal_probes", "signal_propagation"]


def signal_probes(channel_dim: int | None = None) -> list:
    """The three probes of the signal propagation frame (channel axis: by layout if None)."""
    return [ChannelVariance(channel_dim), BranchVariance(channel_dim), ShortcutShare()]


def _block_paths(model: nn.Module, blocks: Sequence) -> list[str]:
    """Module paths of ``blocks`` (paths, or (name, module) pairs of ``model``'s modules)."""
    paths = {id(m): p for p, m in model.named_modules()}
    names = []
    for item in blocks:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and id(item[1]) in paths:
            names.append(paths[id(item[1])])
        else:
            raise UserInputError(
                f"blocks= takes module paths or (name, module) pairs of the model, got {item!r}"
                " (branch and shortcut are found from the autograd graph)"
            )
    return names


def signal_propagation(
    model: nn.Module,
    inputs: Inputs,
    targets: Tensor | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | str | None = None,
    blocks: Sequence | None = None,
    label: str | None = None,
    step: int = 0,
    channel_dim: int | None = None,
) -> pd.DataFrame:
    """Signal propagation frame of ``model`` on one batch (quantities: gradflow.signal_probes).

    Any model: blocks from ``gradflow.structure`` (zoo: its own), or ``blocks=`` (module
    paths or (name, module) pairs in forward order). Runs in the model's current mode and
    leaves it unchanged (``gradflow.record``). Backward quantities need ``targets`` or
    ``loss_fn``. ``channel_dim``: the channel axis (None: by tensor layout).
    """
    boundaries = None if blocks is None else _block_paths(model, blocks)
    if boundaries == []:
        raise UserInputError("blocks= is empty: name the blocks in forward order")
    frame = record(
        model,
        inputs,
        targets,
        loss_fn,
        probes=signal_probes(channel_dim),
        boundaries=boundaries,
        label=label or type(model).__name__,
    )
    frame["step"] = step
    return frame.reset_index(drop=True)
