"""Lesion study (Veit, Wilber and Belongie 2016): the error after removing blocks at test time.

Removing a block means setting its branch to zero: a residual block y = post(F(x) + S(x))
becomes y = post(S(x)) (post = relu for post-activation blocks, identity for pre-activation
ones; for an identity shortcut on a ReLU output that is y = x), a plain block becomes the
identity where its output has its input's shape (a plain block that changes the shape cannot
be removed and is left out). Every evaluation runs on a private copy in eval mode (BN with
its running statistics); the user's model is never changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import UserInputError
from ..state import preserved_rng
from .blocks import BlockSpec, Fn, as_batch, block_io, resolve_blocks, split_block

COLUMNS = ["model", "k", "draw", "removed", "layer", "depth", "stage", "block", "kind", "error"]


class Lesioned(nn.Module):
    """A removed block: post(S(x)) in place of a residual block, x in place of a plain one.

    The removed block stays registered (``removed``) so that mode changes reach a projection
    shortcut's BN; its branch is never called.
    """

    def __init__(self, removed: nn.Module, shortcut: Fn | None, post: Fn | None) -> None:
        super().__init__()
        self.removed = removed
        self._shortcut, self._post = shortcut, post

    def forward(self, x: Tensor) -> Tensor:
        if self._shortcut is None:
            return x
        return self._post(self._shortcut(x))


def _in_copy(fn: Fn | None, model: nn.Module, twin: nn.Module) -> Fn | None:
    """``fn`` rebound to ``twin`` when it is a submodule or a method of one of ``model``."""
    paths = {id(module): name for name, module in model.named_modules()}
    if isinstance(fn, nn.Module) and id(fn) in paths:
        return twin.get_submodule(paths[id(fn)])
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module) and id(owner) in paths:
        return getattr(twin.get_submodule(paths[id(owner)]), fn.__func__.__name__)
    return fn  # a function of the input alone (or of modules outside the model)


def _twin_specs(model: nn.Module, twin: nn.Module, blocks: object) -> list[BlockSpec]:
    """The blocks of ``model`` as blocks of its copy ``twin`` (same paths, same depths)."""
    paths = {id(module): name for name, module in model.named_modules()}
    twins = []
    for spec in resolve_blocks(model, blocks):
        if id(spec.module) not in paths:
            raise UserInputError(f"block {spec.name!r} is not a submodule of the model")
        path = paths[id(spec.module)]
        pair = (_in_copy(spec.branch, model, twin), _in_copy(spec.shortcut, model, twin))
        item = (path, twin.get_submodule(path), *(pair if spec.kind == "residual" else ()))
        twins.append(replace(resolve_blocks(twin, [item])[0], depth=spec.depth))
    return twins


def _removals(twin: nn.Module, specs: list[BlockSpec], x: Tensor) -> dict[str, Lesioned]:
    """Block path -> its replacement, for every removable block (one forward on ``x``)."""
    with torch.no_grad():
        _, inputs, outputs = block_io(twin, x, specs)
        replacements = {}
        for spec in specs:
            x_in, y = inputs[spec.name], outputs[spec.name]
            if spec.kind == "residual":
                _, _, post = split_block(spec, x_in, y)
                replacements[spec.name] = Lesioned(spec.module, spec.shortcut, post)
            elif x_in.shape == y.shape:
                replacements[spec.name] = Lesioned(spec.module, None, None)
    return replacements


def _swap(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def error_percent(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 error (%) of ``model`` (as it is: call it on an eval-mode copy) on (x, y)."""
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            wrong += int((logits.argmax(1) != y[start : start + batch_size]).sum())
    return 100.0 * wrong / len(x)


class Lesions:
    """A private eval-mode copy of ``model`` whose removable blocks can be swapped out.

    ``removable``: the blocks that can be removed (module docstring); ``removed(names)``: a
    context manager in which the copy runs with those blocks removed (restored on exit).
    ``x`` is one batch of inputs, used once to check each block's decomposition and shapes.
    """

    def __init__(self, model: nn.Module, x: Tensor, blocks: object = None) -> None:
        with preserved_rng():
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
            self.specs = _twin_specs(model, self.model, blocks)
            self.replacements = _removals(self.model, self.specs, as_batch(x))
        self.removable = [s for s in self.specs if s.name in self.replacements]

    def spec(self, name: str) -> BlockSpec:
        for spec in self.removable:
            if spec.name == name:
                return spec
        names = ", ".join(s.name for s in self.removable) or "none"
        raise UserInputError(f"block {name!r} cannot be removed; removable blocks: {names}")

    @contextlib.contextmanager
    def removed(self, names: Sequence[str]) -> Iterator[nn.Module]:
        specs = [self.spec(name) for name in names]
        try:
            for spec in specs:
                _swap(self.model, spec.name, self.replacements[spec.name])
            yield self.model
        finally:
            for spec in specs:
                _swap(self.model, spec.name, spec.module)


def lesioned_model(
    model: nn.Module, remove: Sequence[str], inputs: Tensor, *, blocks: object = None
) -> nn.Module:
    """An eval-mode copy of ``model`` with the blocks at paths ``remove`` removed (module
    docstring); ``inputs``: a batch to check the blocks on. The model is untouched."""
    lesions = Lesions(model, inputs, blocks)
    specs = [lesions.spec(name) for name in remove]
    for spec in specs:
        _swap(lesions.model, spec.name, lesions.replacements[spec.name])
    return lesions.model


def lesion_study(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    ks: Sequence[int] = (),
    draws: int = 3,
    blocks: object = None,
    label: str | None = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Test error (%) of ``model`` on (inputs, targets) intact (k = 0), with each removable
    block removed alone (k = 1, one row per block) and with ``draws`` random sets of k
    removable blocks removed together for each k in ``ks`` (Veit et al.'s Fig. 5; seeded).

    Frame: model, k, draw, removed (";"-joined paths), layer/depth/stage/block/kind (of the
    block for k = 1), error. The model is untouched (module docstring).
    """
    x, label = as_batch(inputs), label or type(model).__name__
    if len(targets) != len(x):
        raise UserInputError(f"{len(x)} inputs but {len(targets)} targets")
    lesions = Lesions(model, x[:batch_size], blocks)
    removable = lesions.removable
    too_many = [k for k in ks if not 1 <= k <= len(removable)]
    if too_many:
        raise UserInputError(f"ks={too_many}: the model has {len(removable)} removable blocks")
    rng = np.random.default_rng(seed)
    plan = [(0, 0, [])] + [(1, 0, [s]) for s in removable]
    plan += [(k, d, [removable[i] for i in sorted(rng.choice(len(removable), k, False))])
             for k in ks for d in range(draws)]  # fmt: skip
    rows = []
    for k, draw, removed in plan:
        with lesions.removed([s.name for s in removed]) as lesioned:
            error = error_percent(lesioned, x, targets, batch_size)
        rows.append(_lesion_row(label, k, draw, removed, error))
        if progress is not None:
            removed_names = ";".join(s.name for s in removed) or "intact"
            progress(f"{label}: k={k} {removed_names}: error {error:.2f}%")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"stage": "Int64", "block": "Int64", "depth": "Int64"})


def _lesion_row(label: str, k: int, draw: int, removed: list[BlockSpec], error: float) -> dict:
    one = removed[0] if len(removed) == 1 and k == 1 else None
    return dict(
        model=label, k=k, draw=draw, removed=";".join(s.name for s in removed),
        layer=one.name if one else pd.NA, depth=one.depth if one else pd.NA,
        stage=one.stage if one and one.stage is not None else pd.NA,
        block=one.index if one and one.index is not None else pd.NA,
        kind=one.kind if one else "other", error=error,
    )  # fmt: skip
