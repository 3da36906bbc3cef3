"""Snapshots of everything analysis must leave untouched, and context managers that restore it.

``ModelState.capture(model)`` records a model's parameters, buffers (BN running statistics
and ``num_batches_tracked``), ``training`` flags, ``requires_grad``, ``.grad`` (presence and
values), the keys of every hook dictionary (module hooks, parameter tensor hooks, PyTorch's
global module hooks) and, by default, the global torch RNG state. ``a.differences(b)`` says in
words what changed between two snapshots; ``a.restore(model)`` writes values back.

``preserved_rng()`` and ``preserved_buffers(model)`` restore the RNG state and the buffers on
exit, also when the body raises: the tools ``gradflow.record`` and the spectra engine use to
run forward passes without side effects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_mod

_PARAMETER_HOOK_ATTRIBUTES = ("_backward_hooks", "_post_accumulate_grad_hooks")


@dataclass(frozen=True)
class RNGState:
    """The global torch RNG state: CPU generator and every initialised CUDA generator."""

    cpu: Tensor
    cuda: tuple[Tensor, ...] = ()

    @classmethod
    def capture(cls) -> RNGState:
        cuda = ()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = tuple(torch.cuda.get_rng_state_all())
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(list(self.cuda))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RNGState) or len(self.cuda) != len(other.cuda):
            return False
        pairs = zip((self.cpu, *self.cuda), (other.cpu, *other.cuda), strict=True)
        return all(torch.equal(a, b) for a, b in pairs)

    __hash__ = None  # mutable contents: not hashable


@contextlib.contextmanager
def preserved_rng() -> Iterator[RNGState]:
    """Run the body, then put the global torch RNG state back (also on error)."""
    state = RNGState.capture()
    try:
        yield state
    finally:
        state.restore()


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Run the body, then restore every buffer of ``model`` in place (also on error).

    Covers BN ``running_mean``/``running_var``/``num_batches_tracked``. The original tensor
    objects are kept (values copied back into them), and re-attached if the body replaced one.
    """
    saved = []
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                saved.append((module, name, buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, original, values in saved:
                original.copy_(values)
                if module._buffers.get(name) is not original:
                    module._buffers[name] = original


def _hook_dicts(owner: object) -> dict[str, tuple]:
    """Keys of every hook dictionary an object holds (``*hooks*`` attributes), by name."""
    found = {}
    for name, value in vars(owner).items():
        if "hooks" in name and isinstance(value, dict):
            found[name] = tuple(value.keys())
    return found


def _parameter_hooks(param: Tensor) -> dict[str, tuple]:
    found = {}
    for name in _PARAMETER_HOOK_ATTRIBUTES:
        hooks = getattr(param, name, None)
        found[name] = tuple(hooks.keys()) if isinstance(hooks, dict) else ()
    return found


def _global_hooks() -> dict[str, tuple]:
    return {
        name: tuple(value.keys())
        for name, value in vars(_module_mod).items()
        if name.startswith("_global") and "hooks" in name and isinstance(value, dict)
    }


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and values, NaN equal to NaN (a NaN weight left alone is unchanged)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return False


def _describe_change(kind: str, name: str, before: Tensor, after: Tensor) -> str:
    if before.shape != after.shape or before.dtype != after.dtype:
        return (
            f"{kind} {name} changed from {before.dtype}{tuple(before.shape)} "
            f"to {after.dtype}{tuple(after.shape)}"
        )
    if before.is_floating_point():
        diff = (after.double() - before.double()).abs().nan_to_num(nan=float("inf")).max()
        return f"{kind} {name} changed (max abs diff {float(diff):.3g})"
    return f"{kind} {name} changed ({int((before != after).sum())} elements differ)"


def _compare_tensors(
    kind: str, before: dict[str, Tensor], after: dict[str, Tensor], out: list[str]
) -> None:
    for name in before.keys() - after.keys():
        out.append(f"{kind} {name} was removed")
    for name in after.keys() - before.keys():
        out.append(f"{kind} {name} was added")
    for name in before.keys() & after.keys():
        if not _same_values(before[name], after[name]):
            out.append(_describe_change(kind, name, before[name], after[name]))


def _compare_flags(kind: str, before: dict, after: dict, out: list[str]) -> None:
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name, "absent"), after.get(name, "absent")
        if old != new:
            out.append(f"{kind} of {name or '<root>'} changed from {old} to {new}")


@dataclass
class ModelState:
    """What analysis must not change in a model, captured by value (tensors are cloned)."""

    parameters: dict[str, Tensor] = field(default_factory=dict)
    buffers: dict[str, Tensor] = field(default_factory=dict)
    training: dict[str, bool] = field(default_factory=dict)
    requires_grad: dict[str, bool] = field(default_factory=dict)
    grads: dict[str, Tensor | None] = field(default_factory=dict)
    hooks: dict[str, dict[str, tuple]] = field(default_factory=dict)
    rng: RNGState | None = None

    @classmethod
    def capture(cls, model: nn.Module, *, rng: bool = True) -> ModelState:
        """Snapshot ``model`` (and the global RNG state unless ``rng=False``)."""
        state = cls(rng=RNGState.capture() if rng else None)
        for name, param in model.named_parameters(remove_duplicate=False):
            state.parameters[name] = param.detach().clone()
            state.requires_grad[name] = param.requires_grad
            state.grads[name] = None if param.grad is None else param.grad.detach().clone()
            state.hooks[f"parameter {name}"] = _parameter_hooks(param)
        for name, buffer in model.named_buffers(remove_duplicate=False):
            state.buffers[name] = buffer.detach().clone()
        for name, module in model.named_modules(remove_duplicate=False):
            state.training[name] = module.training
            hooks = _hook_dicts(module)
            hooks["_is_full_backward_hook"] = (getattr(module, "_is_full_backward_hook", None),)
            state.hooks[f"module {name or '<root>'}"] = hooks
        state.hooks["global module hooks"] = _global_hooks()
        return state

    def differences(self, other: ModelState) -> list[str]:
        """Everything that differs from ``other`` (a later snapshot), one sentence each."""
        out: list[str] = []
        _compare_tensors("parameter", self.parameters, other.parameters, out)
        _compare_tensors("buffer", self.buffers, other.buffers, out)
        _compare_flags("training flag", self.training, other.training, out)
        _compare_flags("requires_grad", self.requires_grad, other.requires_grad, out)
        for name in sorted(self.grads.keys() & other.grads.keys()):
            old, new = self.grads[name], other.grads[name]
            if old is None and new is not None:
                out.append(f".grad of {name} was None and is now a tensor")
            elif old is not None and new is None:
                out.append(f".grad of {name} was a tensor and is now None")
            elif old is not None and not _same_values(old, new):
                out.append(_describe_change(".grad of", name, old, new))
        for owner in sorted(self.hooks.keys() | other.hooks.keys()):
            old, new = self.hooks.get(owner, {}), other.hooks.get(owner, {})
            for attr in sorted(old.keys() | new.keys()):
                if old.get(attr, ()) != new.get(attr, ()):
                    out.append(
                        f"hooks {attr} of {owner} changed: "
                        f"{list(old.get(attr, ()))} -> {list(new.get(attr, ()))}"
                    )
        if self.rng is not None and other.rng is not None and self.rng != other.rng:
            out.append("the global torch RNG state changed")
        return out

    def restore(self, model: nn.Module) -> None:
        """Write the captured values back into ``model`` (hooks are not touched)."""
        with torch.no_grad():
            for name, param in model.named_parameters(remove_duplicate=False):
                if name in self.parameters:
                    param.copy_(self.parameters[name])
                    param.requires_grad_(self.requires_grad[name])
                    saved = self.grads[name]
                    param.grad = None if saved is None else saved.clone()
            for name, buffer in model.named_buffers(remove_duplicate=False):
                if name in self.buffers:
                    buffer.copy_(self.buffers[name])
        for name, module in model.named_modules(remove_duplicate=False):
            if name in self.training:
                module.training = self.training[name]
        if self.rng is not None:
            self.rng.restore()
