"""Residual recognition from the autograd graph of one block call (works on any block code).

A block with input x (the only tensor that requires grad: parameters are frozen on the
private copy) is *residual* when the graph of its output holds a skip path: a path from the
output to x through additions (``x + F(x)``) and, optionally, norms/activations (post-activation
ResNets, post-LN transformers). Without a skip path, an addition ``S(x) + F(x)`` whose
smaller side has at most ``PROJECTION_NODES`` nodes is a residual block with a projection
shortcut S. How J_F is then obtained (``route``):

- ``difference``: the skip path holds additions only, so the block is x + F(x) exactly and
  J_F v = J v - v (no need to know which submodule is the branch);
- ``cut``: one addition (with post ops above it): F(x) is the addition's other operand, read
  by a TorchFunctionMode that records that operand during a call of the block;
- ``None``: several additions with norms between them (post-LN layers): no single branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

PROJECTION_NODES = 8
ADD = "AddBackward0"
CLONE = "CloneBackward0"  # the block input is a clone of the leaf (blocks may work in place)
SKIP_PASS = {
    ADD, "NativeLayerNormBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
    "ReluBackward0", "GeluBackward0", "CloneBackward0", "ToCopyBackward0", "TanhBackward0",
    "SiluBackward0", "NativeGroupNormBackward0",
}  # fmt: skip
ADD_FUNCS = {torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__}


class AddCalls(TorchFunctionMode):
    """Records every tensor + tensor call; optionally keeps operand ``position`` of call ``at``."""

    def __init__(self, at: int | None = None, position: int = 0) -> None:
        super().__init__()
        self.at, self.position = at, position
        self.nodes: list[object] = []  # grad_fn of each addition's result, in call order
        self.captured: Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ADD_FUNCS and len(args) >= 2 and all(isinstance(a, Tensor) for a in args[:2]):
            if len(self.nodes) == self.at:
                self.captured = args[self.position].clone()  # before an in-place add
            result = func(*args, **kwargs)
            self.nodes.append(getattr(result, "grad_fn", None))
            return result
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Residual:
    """What the graph says about one block (see the module docstring)."""

    kind: str  # "plain" | "residual"
    shortcut: str | None  # "identity" | "projection" | None
    route: str | None  # "difference" | "cut" | None
    add_index: int | None = None  # which addition call the cut reads
    position: int = 0  # which operand of it is F(x)
    branch_nodes: frozenset = frozenset()


PLAIN = Residual("plain", None, None)


def _is_input(node, x: Tensor) -> bool:
    return node.name().endswith("AccumulateGrad") and getattr(node, "variable", None) is x


def _live(node) -> list[tuple[int, object]]:
    return [(i, child) for i, (child, _) in enumerate(node.next_functions) if child is not None]


def _reachable(node, x: Tensor) -> set:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen or _is_input(current, x):
            continue
        seen.add(current)
        stack += [child for _, child in _live(current)]
    return seen


def _skip_path(node, x: Tensor, depth: int = 0):
    """[(add node, operand index of the path), ...] and whether only additions lie on it."""
    if _is_input(node, x):
        return [], True
    if depth > 64 or node.name() not in SKIP_PASS:
        return None
    live = _live(node)
    for index, child in live:
        found = _skip_path(child, x, depth + 1)
        if found is None:
            continue
        adds, pure = found
        if node.name() == ADD and len(live) == 2:
            return [(node, index), *adds], pure
        return adds, pure and node.name() in (ADD, CLONE)
    return None


def _post_chain_top(node):
    """The first addition below a chain of single-input nodes (post ops), and the chain length."""
    count = 0
    while node is not None and node.name() != ADD:
        live = _live(node)
        if len(live) != 1:
            return None, count
        node, count = live[0][1], count + 1
    return node, count


def classify(output: Tensor, x: Tensor, add_nodes: list[object]) -> Residual:
    """Kind, shortcut and J_F route of a block from its output's graph (x: its input leaf)."""
    top = output.grad_fn
    if top is None:
        return PLAIN
    found = _skip_path(top, x)
    if found is not None and found[0]:
        adds, pure = found
        branch = frozenset().union(*(_reachable(a.next_functions[1 - i][0], x) for a, i in adds))
        if pure and top.name() == ADD and output.shape == x.shape:
            return Residual("residual", "identity", "difference", branch_nodes=branch)
        if len(adds) == 1:
            add, skip_index = adds[0]
            return _cut("identity", add, 1 - skip_index, add_nodes, branch)
        return Residual("residual", "identity", None, branch_nodes=branch)
    add, _ = _post_chain_top(top)
    if add is None or len(_live(add)) != 2:
        return PLAIN
    sizes = [len(_reachable(child, x)) for _, child in _live(add)]
    short = sizes.index(min(sizes))
    if sizes[short] > PROJECTION_NODES or sizes[short] >= sizes[1 - short]:
        return PLAIN
    branch = frozenset(_reachable(add.next_functions[1 - short][0], x))
    return _cut("projection", add, 1 - short, add_nodes, branch)


def _cut(shortcut: str, add, position: int, add_nodes: list[object], branch) -> Residual:
    index = next((i for i, node in enumerate(add_nodes) if node is add), None)
    route = "cut" if index is not None else None
    return Residual("residual", shortcut, route, index, position, branch)
