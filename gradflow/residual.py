"""Residual recognition from the autograd graph of one block call (works on any block code).

A block with input x (the only tensor that requires grad: parameters are frozen on the
private copy) is *residual* when the graph of its output holds a skip path: a path from the
output to x through additions (``x + F(x)``) and, optionally, norms/activations (post-activation
ResNets, post-LN transformers). Without a skip path, an addition ``S(x) + F(x)`` whose
smaller side has at most ``PROJECTION_NODES`` nodes is a residual block with a projection
shortcut S. How J_F is then obtained (``route``):

- ``difference``: the skip path holds additions only, so the block is x + F(x) exactly and
  J_F v = J v - v (no need to know which submodule is the branch);
- ``cut``: one addition (with activations above it): F(x) is the addition's other operand,
  read by a TorchFunctionMode that records that operand during a call of the block;
- ``pre_norm``: a post-norm block N(x + F(x)) (one post-LN sublayer; norms above the last
  addition of the skip path, additions only below it): the pre-norm sum s(x) = x + F(x) is
  the result of that addition, read during a call of the block, and J_F v = J_s v - v is exact
  (the whole block's Jacobian is then J_H, not I + J_F);
- ``None``: a norm or activation *between* additions of the skip path (a post-LN transformer
  layer LN2(y + FF(y)), y = LN1(x + SA(x))): no exact J_F of the whole block.

``skip_path`` names the nodes on the skip path from the input up to the output, e.g.
``add > norm`` (post-LN) or ``add > norm > add > norm``: where the frame says why.

A block that is plain by itself may sit inside a skip made by the model's own forward
(``z = z + relu(layer(z))``): ``segment_residuals`` classifies the map from its input to the
next block's input (``gradflow.trace.segment``), which then is the block's unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .trace import Trace, first_float, rebind, segment

PROJECTION_NODES = 8
ADD = "AddBackward0"
CLONE = "CloneBackward0"  # the block input is a clone of the leaf (blocks may work in place)
SKIP_PASS = {
    ADD, "NativeLayerNormBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
    "ReluBackward0", "GeluBackward0", "CloneBackward0", "ToCopyBackward0", "TanhBackward0",
    "SiluBackward0", "NativeGroupNormBackward0",
}  # fmt: skip
NORMS = {"NativeLayerNormBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
         "NativeGroupNormBackward0"}  # fmt: skip
ADD_FUNCS = {torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__}


class AddCalls(TorchFunctionMode):
    """Records every tensor + tensor call; optionally keeps operand ``position`` of call ``at``
    (``position=None``: its result, e.g. the pre-norm sum x + F(x) of a post-norm block)."""

    def __init__(self, at: int | None = None, position: int | None = 0) -> None:
        super().__init__()
        self.at, self.position = at, position
        self.nodes: list[object] = []  # grad_fn of each addition's result, in call order
        self.captured: Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ADD_FUNCS and len(args) >= 2 and all(isinstance(a, Tensor) for a in args[:2]):
            at = len(self.nodes) == self.at
            if at and self.position is not None:
                self.captured = args[self.position].clone()  # before an in-place add
            result = func(*args, **kwargs)
            if at and self.position is None:
                self.captured = result.clone()  # before later in-place ops on it
            self.nodes.append(getattr(result, "grad_fn", None))
            return result
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Residual:
    """What the graph says about one block (see the module docstring)."""

    kind: str  # "plain" | "residual"
    shortcut: str | None  # "identity" | "projection" | None
    route: str | None  # "difference" | "cut" | "pre_norm" | None
    add_index: int | None = None  # which addition call the cut (pre_norm) reads
    position: int | None = 0  # which operand of it is F(x) (None: its result, x + F(x))
    branch_nodes: frozenset = frozenset()
    skip_path: str | None = None  # e.g. "add > norm": the nodes from the input to the output
    post_norm: bool = False  # a norm above the last addition: the block is N(x + F(x))

    @property
    def whole(self) -> str:
        """The operator name of the whole block's Jacobian: J_H unless it is I+J_F (or an
        activation of it, as in post-activation ResNets)."""
        return "I+J_F" if self.kind == "residual" and not self.post_norm else "J_H"


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


def _skip_path(node, x: Tensor, depth: int = 0) -> list[tuple[object, int]] | None:
    """The skip path from ``node`` down to x: [(node, index of the child taken), ...], top
    first, through SKIP_PASS nodes only; None without one."""
    if _is_input(node, x):
        return []
    if depth > 64 or node.name() not in SKIP_PASS:
        return None
    for index, child in _live(node):
        found = _skip_path(child, x, depth + 1)
        if found is not None:
            return [(node, index), *found]
    return None


def _is_add(node) -> bool:
    return node.name() == ADD and len(_live(node)) == 2


def _describe(path: list[tuple[object, int]]) -> str:
    """Nodes of a skip path from the input up, in short words (clones left out)."""
    names = {ADD: "add", **{name: "norm" for name in NORMS}}
    words = [names.get(n.name(), n.name().removesuffix("Backward0").lower()) for n, _ in path]
    return " > ".join(w for w in reversed(words) if w != "clone")


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
    path = _skip_path(top, x)
    adds = [(node, index) for node, index in path or [] if _is_add(node)]
    if adds:
        return _identity(output, x, path, adds, add_nodes)
    add, _ = _post_chain_top(top)
    if add is None or len(_live(add)) != 2:
        return PLAIN
    sizes = [len(_reachable(child, x)) for _, child in _live(add)]
    short = sizes.index(min(sizes))
    if sizes[short] > PROJECTION_NODES or sizes[short] >= sizes[1 - short]:
        return PLAIN
    branch = frozenset(_reachable(add.next_functions[1 - short][0], x))
    return _cut("projection", add, 1 - short, add_nodes, branch)


def _identity(output, x, path, adds, add_nodes: list[object]) -> Residual:
    """A block with a skip path through ``adds``: its J_F route (module docstring)."""
    branch = frozenset().union(*(_reachable(a.next_functions[1 - i][0], x) for a, i in adds))
    names = [node.name() for node, _ in path]
    top_add = path.index(adds[0])  # the last addition before the output
    pure_below = all(name in (ADD, CLONE) for name in names[top_add:])
    post_norm = any(name in NORMS for name in names[:top_add])
    described = dict(skip_path=_describe(path), post_norm=post_norm)
    pure = pure_below and all(name in (ADD, CLONE) for name in names[:top_add])
    if pure and names[0] == ADD and output.shape == x.shape:
        return Residual("residual", "identity", "difference", branch_nodes=branch, **described)
    if post_norm and pure_below:
        index = next((i for i, node in enumerate(add_nodes) if node is path[top_add][0]), None)
        route = "pre_norm" if index is not None else None
        return Residual("residual", "identity", route, index, None, branch, **described)
    if len(adds) == 1:
        add, skip_index = adds[0]
        return _cut("identity", add, 1 - skip_index, add_nodes, branch, **described)
    return Residual("residual", "identity", None, branch_nodes=branch, **described)


def _cut(shortcut: str, add, position: int, add_nodes: list[object], branch, **described):
    index = next((i for i, node in enumerate(add_nodes) if node is add), None)
    route = "cut" if index is not None else None
    return Residual("residual", shortcut, route, index, position, branch, **described)


# ----------------------------------------------------------------------------- blocks
def segment_residuals(twin: nn.Module, infos: list, trace: Trace, head) -> None:
    """Plain blocks whose next block's input (or the head's) is z + F(z) made in the model's
    own forward (``z = z + relu(layer(z))``) become residual: their unit is the segment from
    their input to the next input (``gradflow.trace.segment``)."""
    calls = trace.calls
    for i, info in enumerate(infos):
        last = i == len(infos) - 1
        if info.kind != "plain" or (not last and calls[i + 1].input is calls[i].output):
            continue
        boundary = head if last else infos[i + 1].module
        if boundary is None:
            continue
        try:
            fn = segment(twin, trace.model_inputs, info.module, boundary)
        except RuntimeError:  # the boundary is not called after the block
            continue
        residual, out_shape = (PLAIN, None) if fn is None else classify_fn(fn, calls[i].input)
        if residual.kind != "residual":
            continue
        skip = f"{residual.skip_path} (in the model's forward, around the block)"
        info.residual = replace(residual, skip_path=skip)
        info.kind, info.shortcut, info.out_shape = "residual", residual.shortcut, out_shape
        info.boundary = boundary


def classify_fn(fn: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Residual, tuple | None]:
    """classify() of z -> fn(z) at z (a fresh leaf; a clone goes in: fn may work in place)."""
    leaf = z.detach().requires_grad_(True)
    try:
        with torch.enable_grad(), AddCalls() as adds:
            output = first_float(fn(leaf.clone()))
    except RuntimeError:
        return PLAIN, None
    if not isinstance(output, Tensor):
        return PLAIN, None
    return classify(output, leaf, adds.nodes), tuple(output.shape)


def trace_residual(module: nn.Module, call, paths: dict) -> tuple[Residual, str | None]:
    """classify() on one call of the block at its recorded input (a fresh leaf), and the path
    of the branch's last normalisation layer (the last norm whose output feeds F)."""
    from .sites import NORM_TYPES

    seen: list[tuple[nn.Module, Any]] = []  # (norm, grad_fn of its output when it returned)
    norms = [m for m in module.modules() if isinstance(m, NORM_TYPES)]
    hook = lambda m, a, o: seen.append((m, getattr(o, "grad_fn", None)))  # noqa: E731
    handles = [n.register_forward_hook(hook) for n in norms]
    leaf = call.input.detach().requires_grad_(True)
    try:
        with torch.enable_grad(), AddCalls() as adds:  # a clone: blocks may work in place
            output = first_float(rebind(module, call)(leaf.clone()))
    except RuntimeError:
        return PLAIN, None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, Tensor):
        return PLAIN, None
    residual = classify(output, leaf, adds.nodes)
    branch = [m for m, node in seen if node is not None and node in residual.branch_nodes]
    return residual, paths.get(id(branch[-1])) if branch else None
