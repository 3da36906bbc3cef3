"""The blocks an evidence function measures: name, module, position and, for residual
blocks, the branch F and shortcut S with y = post(F(x) + S(x)).

Sources, in order: ``blocks=`` given by the caller (a list of ``(name, module)`` or
``(name, module, branch, shortcut)`` tuples, or any object with a ``.blocks`` list whose
items have ``.name`` and ``.module``, such as a future ``gradflow.structure`` result), else
``model.named_blocks()`` of a zoo model. A module with ``.branch``/``.shortcut`` methods and
``kind == "residual"`` (every zoo residual block) is residual without being told.

``post`` is found, not assumed: ``split_block`` checks numerically that the block's output
equals F(x) + S(x) (pre-activation blocks) or relu(F(x) + S(x)) (post-activation blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError
from ..models.blocks import PostActivationBlock, PreActivationBlock

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class BlockSpec:
    """One block: module path, module, 1-based position, and F and S if it is residual."""

    name: str
    module: nn.Module
    depth: int  # 1-based order along the forward pass
    stage: int | None = None
    index: int | None = None
    branch: Fn | None = None
    shortcut: Fn | None = None

    @property
    def kind(self) -> str:
        if self.branch is not None and self.shortcut is not None:
            return "residual"
        return str(getattr(self.module, "kind", "plain"))


def _spec(depth: int, item: object) -> BlockSpec:
    if isinstance(item, tuple) and len(item) in (2, 4):
        name, module, *pair = item
    elif hasattr(item, "name") and hasattr(item, "module"):
        name, module = item.name, item.module
        pair = [getattr(item, "branch", None), getattr(item, "shortcut", None)]
        pair = pair if all(callable(p) for p in pair) else []
    else:
        raise UserInputError(
            f"blocks= takes (name, module) or (name, module, branch, shortcut) tuples, got {item!r}"
        )
    if not isinstance(module, nn.Module):
        raise UserInputError(f"block {name!r}: {module!r} is not an nn.Module")
    if not pair and getattr(module, "kind", None) == "residual":
        pair = [module.branch, module.shortcut]
    stage, index = getattr(module, "stage", None), getattr(module, "index", None)
    branch, shortcut = pair if pair else (None, None)
    return BlockSpec(str(name), module, depth, stage, index, branch, shortcut)


def resolve_blocks(model: nn.Module, blocks: object = None) -> list[BlockSpec]:
    """The blocks of ``model`` in forward order (see the module docstring for the sources)."""
    if blocks is None:
        if not callable(getattr(model, "named_blocks", None)):
            raise UserInputError(
                f"{type(model).__name__} is not a gradflow zoo model: pass "
                "blocks=[(name, module), ...] in forward order, and for residual blocks "
                "(name, module, branch, shortcut) with module(x) = [relu](branch(x) + shortcut(x))"
            )
        blocks = model.named_blocks()
    items: Sequence = getattr(blocks, "blocks", blocks)
    specs = [_spec(depth, item) for depth, item in enumerate(items, start=1)]
    if not specs:
        raise UserInputError("the model has no blocks to measure (blocks= is empty)")
    return specs


def split_block(spec: BlockSpec, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Fn]:
    """(F(x), S(x), post) of a residual block with y = post(F(x) + S(x)), post = identity or
    relu, checked against the block's actual output ``y``; UserInputError otherwise."""
    f, s = spec.branch(x), spec.shortcut(x)
    total, y = f + s, y.detach()
    scale = float(y.abs().max()) + 1e-12
    for post in _post_candidates(spec.module):
        candidate = post(total).detach()
        if candidate.shape == y.shape and float((candidate - y).abs().max()) <= 1e-4 * scale:
            return f, s, post
    raise UserInputError(
        f"block {spec.name!r}: its output is neither branch(x) + shortcut(x) nor "
        "relu(branch(x) + shortcut(x)); pass the branch and shortcut that compose it"
    )


def block_io(model: nn.Module, x: Tensor, specs: list[BlockSpec]) -> tuple[Tensor, dict, dict]:
    """One forward pass; the first input and output of every block, by name."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def hook(name: str, module: nn.Module, args: tuple, output: Tensor) -> None:
        if name not in inputs:
            inputs[name], outputs[name] = args[0], output

    handles = [
        s.module.register_forward_hook(lambda m, a, o, n=s.name: hook(n, m, a, o)) for s in specs
    ]
    try:
        result = model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise UserInputError(f"blocks {missing} were not called in the forward pass")
    return result, inputs, outputs


def _identity(t: Tensor) -> Tensor:
    return t


def _post_candidates(module: nn.Module) -> tuple[Fn, ...]:
    """The post-op to try first: a zoo block says which; otherwise relu, because where
    F + S >= 0 both fit the output but only relu has the block's backward (mask at 0)."""
    if isinstance(module, PostActivationBlock):
        return (F.relu,)
    if isinstance(module, PreActivationBlock):
        return (_identity,)
    return (F.relu, _identity)


def channel_stats(z: Tensor, channel_dim: int = 1) -> tuple[float, float]:
    """(mean over channels of the squared channel mean, mean over channels of the channel
    variance), statistics over every other axis (batch and positions), population variance."""
    flat = z.detach().movedim(channel_dim, 0).reshape(z.shape[channel_dim], -1).double()
    mean = flat.mean(dim=1)
    variance = flat.var(dim=1, correction=0)
    return float((mean**2).mean()), float(variance.mean())


def as_batch(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise UserInputError(f"inputs must be a batched tensor (N, ...), got {type(x).__name__}")
    return x
