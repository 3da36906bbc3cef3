"""One forward pass recorded at chosen modules: their real arguments, inputs and outputs.

``capture(model, inputs, modules)`` runs the model once with temporary hooks (with kwargs) and
keeps, for the first call of each module, its positional and keyword arguments, the slot of
its input (the first floating-point tensor argument) and its first floating-point output.
``rebind(module, call)`` is then z -> that output with the input slot replaced by z and every
other argument (attention masks, skip tensors, position ids) as recorded: the function whose
Jacobian is the block's. ``stop`` ends the forward early (``Stop`` carries the value out).

``segment(model, inputs, block, boundary)`` is z -> the input of ``boundary`` with z put in
place of the block's input *where that tensor was made* (``Origin``): the map from one block's
input to the next when the model's own forward adds a skip around the block
(``z = z + relu(layer(z))``), which a block-level substitution would cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .inputs import Inputs, call_model
from .losses import output_tensors


class Stop(Exception):
    """Raised by a hook to end a forward pass early, carrying the value it wanted."""

    def __init__(self, value: Any) -> None:
        super().__init__("forward stopped by gradflow")
        self.value = value


def first_float(value: Any) -> Tensor | None:
    """The first floating-point tensor of a module output (tensor, tuple, dict, ModelOutput)."""
    return next((t for t in output_tensors(value) if t.is_floating_point()), None)


@dataclass
class Call:
    """One recorded module call: arguments, the input's slot, the input and first output."""

    args: tuple
    kwargs: dict
    slot: tuple[str, int | str]
    input: Tensor
    output: Tensor | None = None


@dataclass
class Trace:
    """Recorded calls of the chosen modules, in the order the modules were given."""

    calls: list[Call]
    model_inputs: Any = None  # the inputs of the forward pass that was recorded

    @property
    def inputs(self) -> list[Tensor]:
        return [call.input for call in self.calls]


def _slot(args: tuple, kwargs: dict) -> tuple[tuple[str, int | str], Tensor] | None:
    for i, value in enumerate(args):
        if isinstance(value, Tensor) and value.is_floating_point():
            return ("arg", i), value
    for key, value in kwargs.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            return ("kw", key), value
    return None


def capture(
    model: nn.Module,
    inputs: Inputs,
    modules: Sequence[nn.Module],
    *,
    complete: bool = False,
    stop: str | None = "input",
    replace: tuple[nn.Module, Tensor] | None = None,
) -> Trace:
    """Record the first call of each module in one forward pass of ``model`` on ``inputs``.

    With ``complete=False`` the pass stops at the last module (``stop="input"``: before it
    runs, ``"output"``: after). ``replace=(module, z)`` substitutes z for that module's input.
    Raises a RuntimeError naming the modules the forward pass never called.
    """
    calls: dict[int, Call] = {}
    last = len(modules) - 1

    def before(i: int, module: nn.Module, args: tuple, kwargs: dict):
        if i in calls:
            return None
        found = _slot(args, kwargs)
        if found is None:
            raise RuntimeError(f"{type(module).__name__} received no floating-point tensor")
        slot, value = found
        calls[i] = Call(args, kwargs, slot, value)
        if not complete and i == last and stop == "input":
            raise Stop(Trace([calls[j] for j in range(len(modules))]))
        return None

    def substitute(module: nn.Module, args: tuple, kwargs: dict):
        found = _slot(args, kwargs)
        return None if found is None else _put(args, kwargs, found[0], replace[1])

    def after(i: int, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        call = calls.get(i)
        if call is not None and call.output is None:
            call.output = first_float(output)
            if not complete and i == last:
                raise Stop(Trace([calls[j] for j in range(len(modules))]))

    handles = []
    try:
        if replace is not None:  # registered first: the recording hooks see the substitute
            hook = replace[0].register_forward_pre_hook(substitute, with_kwargs=True)
            handles.append(hook)
        for i, module in enumerate(modules):
            pre = _bind(before, i)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(_bind(after, i), with_kwargs=True))
        call_model(model, inputs)
    except Stop as stopped:
        stopped.value.model_inputs = inputs
        return stopped.value
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(modules)) if i not in calls]
    if missing:
        names = ", ".join(type(modules[i]).__name__ for i in missing[:3])
        raise RuntimeError(f"the forward pass never called block(s) {missing} ({names})")
    return Trace([calls[i] for i in range(len(modules))], inputs)


def _bind(hook: Callable, i: int) -> Callable:
    return lambda *args: hook(i, *args)


def _put(args: tuple, kwargs: dict, slot: tuple[str, int | str], value: Tensor):
    where, key = slot
    if where == "arg":
        args = (*args[:key], value, *args[key + 1 :])
    else:
        kwargs = {**kwargs, key: value}
    return args, kwargs


def rebind(module: nn.Module, call: Call) -> Callable[[Tensor], Tensor]:
    """z -> first floating-point output of ``module`` with z in the recorded input slot."""

    def block(z: Tensor) -> Tensor:
        args, kwargs = _put(call.args, call.kwargs, call.slot, z)
        return first_float(module(*args, **kwargs))

    return block


class Origin(TorchFunctionMode):
    """Numbers the torch calls that return a floating-point tensor of ``shape``, in call order.

    Without ``at`` it keeps those results (to find which call made a tensor); with ``at`` it
    returns ``value`` in place of result number ``at``, so every later use of that tensor in
    the forward pass (branch and skip alike) sees ``value``. Gradflow's hooks make no such
    tensors, so the numbering is the model's own and the same in every pass on equal inputs.
    """

    def __init__(self, shape: tuple[int, ...], at: int | None = None, value=None) -> None:
        super().__init__()
        self.shape, self.at, self.value = tuple(shape), at, value
        self.results: list[Tensor] = []
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not (isinstance(result, Tensor) and result.is_floating_point()):
            return result
        if tuple(result.shape) == self.shape:
            if self.at is None:
                self.results.append(result)
            elif self.count == self.at:
                result = self.value
            self.count += 1
        return result


def origin(model: nn.Module, inputs: Inputs, block: nn.Module) -> tuple[tuple, int] | None:
    """(shape, number) of the ``Origin`` call that made ``block``'s input in a forward pass on
    ``inputs``; None when no torch call made it (it is a model input)."""
    with Origin(capture(model, inputs, [block]).inputs[0].shape) as seen:
        target = capture(model, inputs, [block]).inputs[0]  # the same pass, numbered
    made = [i for i, result in enumerate(seen.results) if result is target]
    return (tuple(target.shape), made[-1]) if made else None


def segment(
    model: nn.Module, inputs: Inputs, block: nn.Module, boundary: nn.Module
) -> Callable[[Tensor], Tensor] | None:
    """z -> the input of ``boundary``, z replacing ``block``'s input where it was made (module
    docstring); None when that input was not made by a torch call (a model input)."""
    found = origin(model, inputs, block)
    if found is None:
        return None

    def forward(z: Tensor) -> Tensor:
        with Origin(found[0], found[1], z):
            return capture(model, inputs, [boundary]).inputs[0]

    return forward
