"""Where the Recorder measures: layer selection, block boundaries and each layer's position.

- Responses: for zoo models ``model.response_layers()`` (the ResNet paper's Figure 7 layers);
  otherwise every normalisation layer, or every conv/linear layer when there is none.
- Block boundaries: for zoo models the blocks of ``model.named_blocks()``; otherwise the
  children of every ``nn.Sequential``/``nn.ModuleList`` (outermost ones; containers are
  opened, modules inside a chosen child are not), or the response layers when the model has
  no container.
- ``layers=`` takes module names, glob patterns (``"stage2.*.bn?"``; fnmatch rules: ``*``
  also matches dots, so ``"stage1.*"`` is every module inside stage1) or module types.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from .errors import UserInputError
from .models.blocks import Block

LayerSpec = str | type | Sequence[str | type]

NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
WEIGHTED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
CONTAINER_TYPES = (nn.Sequential, nn.ModuleList)
STEM = "stem"
FRAME_COLUMNS = ("model", "step", "layer", "depth", "stage", "block", "kind", "quantity", "value")
LAYER_COLUMNS = FRAME_COLUMNS[:7]
# one closed step: (step, [(site, keys, quantity), ...], values of all segments concatenated)
StepRecord = tuple[int, list[tuple[str, list[str], str]], np.ndarray]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel (same parameters)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def is_zoo(model: nn.Module) -> bool:
    """True for gradflow zoo networks (they list their blocks and Figure-7 layers)."""
    return callable(getattr(model, "response_layers", None)) and callable(
        getattr(model, "named_blocks", None)
    )


def select_modules(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Module paths matching names, glob patterns or module types, in registration order."""
    items = [spec] if isinstance(spec, str | type) else list(spec)
    named = [(name, module) for name, module in model.named_modules() if name]
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, type):
            hits = {name for name, module in named if isinstance(module, item)}
        elif isinstance(item, str):
            hits = {name for name, _ in named if fnmatch.fnmatchcase(name, item)}
        else:
            raise UserInputError(f"layers= takes names, glob patterns or types, got {item!r}")
        if not hits:
            names = [name for name, _ in named]
            close = difflib.get_close_matches(str(item), names, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see model.named_modules()"
            raise UserInputError(f"layers={item!r} matches no module of the model: {hint}")
        chosen |= hits
    return [name for name, _ in named if name in chosen]


def default_response_layers(model: nn.Module) -> list[str]:
    """Figure-7 layers for zoo models; else norm layers; else conv/linear layers."""
    if is_zoo(model):
        return list(model.response_layers())
    named = [(name, module) for name, module in model.named_modules() if name]
    for types in (NORM_TYPES, WEIGHTED_TYPES):
        names = [name for name, module in named if isinstance(module, types)]
        if names:
            return names
    return []


def _container_children(module: nn.Module, prefix: str) -> list[str]:
    found = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(module, CONTAINER_TYPES) and not isinstance(child, CONTAINER_TYPES):
            found.append(path)
        else:
            found += _container_children(child, path + ".")
    return found


def default_boundaries(model: nn.Module, response_layers: Sequence[str]) -> list[str]:
    """Block paths (zoo), else outermost children of Sequential/ModuleList, else responses."""
    if is_zoo(model):
        return [path for path, _ in model.named_blocks()]
    found = _container_children(model, "")
    return found or list(response_layers)


def block_positions(model: nn.Module) -> dict[str, tuple[int, int, str]]:
    """Block path -> (stage, index within the stage, kind) for every zoo ``Block``."""
    return {
        name: (int(module.stage), int(module.index), str(module.kind))
        for name, module in model.named_modules()
        if isinstance(module, Block)
    }


def position(name: str, blocks: dict[str, tuple[int, int, str]]) -> tuple[int | None, ...]:
    """(stage, block, kind) of a layer/parameter path: its innermost enclosing block's.

    Layers outside every block (stem, head, fc) and non-zoo layers get (None, None, "other").
    """
    path = name.split("@", 1)[0]
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        hit = blocks.get(".".join(parts[:end]))
        if hit is not None:
            return hit
    return (None, None, "other")


def depth_ranks(order: dict[tuple[str, str], int], model: nn.Module) -> dict[tuple[str, str], int]:
    """Depth of every (site, key) from first-call numbers: boundaries ranked from 0 (``stem``),
    responses and parameter-owning modules from 1; modules never called come last."""
    depths: dict[tuple[str, str], int] = {}
    for site, start in (("boundary", 0), ("response", 1), ("module", 1)):
        keys = sorted((k for k in order if k[0] == site), key=order.get)
        depths.update({k: i for i, k in enumerate(keys, start=start)})
    called = sum(1 for k in depths if k[0] == "module")
    for name, module in model.named_modules():
        if module._parameters and ("module", name) not in depths:
            called += 1
            depths[("module", name)] = called
    return depths


def build_frame(
    label: str,
    steps: Sequence[StepRecord],
    depths: dict[tuple[str, str], int],
    blocks: dict[str, tuple[int, int, str]],
) -> pd.DataFrame:
    """The tidy long frame of ``FRAME_COLUMNS`` from the Recorder's closed steps."""
    rows: dict[str, list] = {column: [] for column in FRAME_COLUMNS}
    for step, segments, flat in steps:
        offset = 0
        for site, keys, quantity in segments:
            for key in keys:
                if site == "parameter":
                    depth = depths.get(("module", key.rpartition(".")[0]), 0)
                else:
                    depth = depths[(site, key)]
                stage, block, kind = position(key, blocks)
                rows["layer"].append(key)
                rows["depth"].append(depth)
                rows["stage"].append(stage)
                rows["block"].append(block)
                rows["kind"].append(kind)
                rows["quantity"].append(quantity)
            rows["value"].append(flat[offset : offset + len(keys)])
            rows["step"] += [step] * len(keys)
            offset += len(keys)
    values = np.concatenate(rows["value"]) if rows["value"] else np.zeros(0)
    return pd.DataFrame(
        {
            "model": pd.Series([label] * len(values), dtype=object),
            "step": pd.Series(rows["step"], dtype="int64"),
            "layer": pd.Series(rows["layer"], dtype=object),
            "depth": pd.Series(rows["depth"], dtype="int64"),
            "stage": pd.array(rows["stage"], dtype="Int64"),
            "block": pd.array(rows["block"], dtype="Int64"),
            "kind": pd.Series(rows["kind"], dtype=object),
            "quantity": pd.Series(rows["quantity"], dtype=object),
            "value": values.astype(np.float64),
        },
        columns=list(FRAME_COLUMNS),
    )


def to_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, step, layer, depth) and one column per quantity."""
    wide = frame.pivot_table(
        index=list(LAYER_COLUMNS), columns="quantity", values="value", dropna=False, sort=False
    )
    wide = wide.dropna(how="all").reset_index()
    wide.columns.name = None
    return wide
