"""Taps on a residual block's calls: F(x) at the end of its branch and the gradient split.

For y = post(u), u = F(x) + S(x), hooks alone (nothing recomputed, no buffer touched) give:

- F(x): ``difference`` blocks (y = x + F(x) exactly, ``gradflow.residual``) F = y - x; else,
  while the block runs, a TorchFunctionMode sees the addition that forms u (number ``at`` of
  the block's additions, the last one when ``at`` is None) and reads its F operand before
  the addition runs (an in-place ``out += identity`` overwrites it);
- g_u = dL/du: the gradient of a view of the S operand put in its place in that addition
  (for ``difference`` blocks u = y); g_u J_S is g_u when S is the identity (S(x) is x itself),
  else one vector-Jacobian product through S alone (small: a 1x1 conv + BN, a padding);
- g_u J_F = dL/dx - g_u J_S, with dL/dx the gradient of a view of x passed to the block in
  place of x (what reaches x through this block alone, also when x is used elsewhere).

The views change no value; a user's backward hooks on the shortcut's modules run once more
for the VJP through a projection shortcut.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .residual import ADD_FUNCS
from .trace import first_float

INPLACE_ADDS = {Tensor.add_, Tensor.__iadd__}
_own_math = [0]  # > 0 while gradflow's own hooks compute: their additions are not the block's


def untapped(hook: Callable) -> Callable:
    """A hook whose tensor math (e.g. merging statistics: mean_a + delta ...) runs inside a
    block call but must not count as one of the block's additions."""

    @functools.wraps(hook)
    def run(*args, **kwargs):
        _own_math[0] += 1
        try:
            return hook(*args, **kwargs)
        finally:
            _own_math[0] -= 1

    return run


@dataclass(frozen=True)
class BranchRoute:
    """Where F(x) and S(x) meet: y - x (``difference``) or operand ``position`` of addition
    number ``at`` (0-based, None: the last addition of the call) is F(x)."""

    difference: bool
    at: int | None = None
    position: int = 0


def route_for(route: str | None, add_index: int | None, position: int) -> BranchRoute | None:
    """The tap route of a block from its ``gradflow.residual`` route (``branch``: a zoo block,
    ``relu(F(x) + S(x))`` or ``F(x) + S(x)``, its last addition); None: no single branch."""
    if route == "difference":
        return BranchRoute(True)
    if route == "cut":
        return BranchRoute(False, add_index, position)
    if route == "branch":
        return BranchRoute(False, None, 0)
    return None


class ResidualAdd(TorchFunctionMode):
    """During one block call: F(x) of the residual addition and a hooked view of its S(x)."""

    def __init__(self, route: BranchRoute, on_branch: Callable[[Tensor], object] | None) -> None:
        super().__init__()
        self.route, self.on_branch = route, on_branch
        self.calls = 0
        self.branch = None  # what on_branch returned for the chosen addition
        self.shortcut: Tensor | None = None  # S(x) as the block computed it
        self.tap: Tensor | None = None  # the view of S(x) the addition used instead

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _own_math[0]:
            return func(*args, **kwargs)
        if func in ADD_FUNCS and len(args) >= 2 and all(isinstance(a, Tensor) for a in args[:2]):
            index, self.calls = self.calls, self.calls + 1
            if self.route.at is None or index == self.route.at:
                return self._residual_add(func, list(args), kwargs)
        return func(*args, **kwargs)

    def _residual_add(self, func, args: list, kwargs: dict) -> Tensor:
        f_at = self.route.position
        s_at = 1 - f_at
        f, s = args[f_at], args[s_at]
        if self.on_branch is not None:
            self.branch = self.on_branch(f)  # before an in-place addition overwrites f
        self.shortcut, self.tap = s, None
        if s.requires_grad and not (func in INPLACE_ADDS and s_at == 0):
            args[s_at] = self.tap = s.view_as(s)
        return func(*args, **kwargs)


class BlockCall:
    """One call of a tapped block: its key, the view of x it ran on, its ResidualAdd."""

    __slots__ = ("inner", "key", "mode", "shortcut_part", "x")

    def __init__(self, key: str, x: Tensor | None, mode: ResidualAdd | None) -> None:
        self.key, self.x, self.mode = key, x, mode
        self.shortcut_part: Tensor | None = None
        self.inner = False  # inside the VJP through S (x's hook ignores that gradient)


class ResidualTap:
    """The hooks of one residual block (see the module docstring).

    ``branch_stats(F)`` makes the statistics of F(x) (None: not measured); ``on_split(key,
    shortcut_sumsq, branch_sumsq)`` receives the gradient split; ``key_of()`` the call's key.
    """

    def __init__(
        self,
        route: BranchRoute,
        key_of: Callable[[], str],
        branch_stats: Callable[[Tensor], object] | None,
        on_branch: Callable[[str, object], None],
        on_split: Callable[[str, Tensor, Tensor], None] | None,
        active: Callable[[], bool],
    ) -> None:
        self.route, self.key_of = route, key_of
        self.branch_stats, self.on_branch, self.on_split = branch_stats, on_branch, on_split
        self.active = active
        self.calls: list[BlockCall] = []

    def before(self, module, args: tuple):
        """Forward pre-hook: x -> a view of x (when the split is measured); enter the mode."""
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if x is not None and x.requires_grad and self.on_split is not None:
            x = x.view_as(x)  # its gradient: what reaches x through this block alone
            args = (x, *args[1:])
        mode = None
        if not self.route.difference:
            mode = ResidualAdd(self.route, self.branch_stats)
            mode.__enter__()
        call = BlockCall(self.key_of(), x, mode)
        self.calls.append(call)
        if call.x is not None and call.x.requires_grad and self.on_split is not None:
            call.x.register_hook(lambda g, c=call: self._on_input_grad(c, g))
        return args

    def after(self, module, args: tuple, output) -> None:
        """Forward hook (always called, also on error): leave the mode, read F, hook g_u."""
        call = self.calls.pop()
        if call.mode is not None:
            call.mode.__exit__(None, None, None)
        y = output if isinstance(output, Tensor) else first_float(output)
        if not isinstance(y, Tensor):
            return
        x, mode = call.x, call.mode
        call.x = call.mode = None  # x's hook holds call: a tensor in it would be a leaked cycle
        if mode is None:  # difference: F = y - x, u = y, S = identity
            if self.branch_stats is not None and x is not None:
                self.on_branch(call.key, self.branch_stats(y.detach() - x.detach()))
            shortcut, u = x, y
        else:
            if mode.branch is not None:
                self.on_branch(call.key, mode.branch)
            shortcut, u = mode.shortcut, mode.tap
            mode.shortcut = mode.tap = mode.branch = None
        if self.on_split is not None and x is not None and u is not None and u.requires_grad:
            u.register_hook(lambda g, c=call, s=shortcut, x=x: self._on_sum_grad(c, s, x, g))

    def _on_sum_grad(self, call: BlockCall, shortcut: Tensor | None, x: Tensor, grad_u) -> None:
        if not self.active():
            return
        if shortcut is x:
            call.shortcut_part = grad_u
            return
        call.inner = True
        try:
            (part,) = torch.autograd.grad(shortcut, x, grad_u, retain_graph=True, allow_unused=True)
        finally:
            call.inner = False
        call.shortcut_part = torch.zeros_like(x) if part is None else part

    def _on_input_grad(self, call: BlockCall, grad_x: Tensor) -> None:
        if call.inner or call.shortcut_part is None or not self.active():
            return
        part, call.shortcut_part = call.shortcut_part, None
        branch = grad_x - part
        sumsq = lambda g: torch.linalg.vector_norm(g.detach()).square()  # noqa: E731
        self.on_split(call.key, sumsq(part), sumsq(branch))
