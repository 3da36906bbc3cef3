"""Model inputs of any form: a tensor, a tuple of positional arguments, or a dict of kwargs.

``Inputs = Tensor | tuple | dict``. Everything that takes a batch (record, Recorder, structure,
block_spectra, the testing helpers) goes through these functions, so a two-input model or an
HF model called with ``input_ids``/``attention_mask`` works everywhere. The batch dimension is
the leading dimension of the first tensor; tensors with that leading size are sliced together,
everything else (scalars, flags, tensors of another leading size) is passed unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UserInputError

Inputs = Tensor | tuple | dict


def normalize(inputs: Any) -> Inputs:
    """``inputs`` as a Tensor, tuple or dict (a list becomes a tuple); else a UserInputError."""
    if isinstance(inputs, Tensor | tuple | dict):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    raise UserInputError(
        f"model inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )


def call_model(model: Callable, inputs: Inputs) -> Any:
    """tensor -> model(x), tuple -> model(*x), dict -> model(**x)."""
    inputs = normalize(inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def tensors(inputs: Inputs) -> list[Tensor]:
    """The tensors among the inputs, in order (positional order, or dict order)."""
    inputs = normalize(inputs)
    values = inputs.values() if isinstance(inputs, dict) else inputs
    if isinstance(inputs, Tensor):
        values = [inputs]
    return [value for value in values if isinstance(value, Tensor)]


def batch_size(inputs: Inputs) -> int:
    """The leading size of the first tensor (the batch dimension)."""
    found = [t for t in tensors(inputs) if t.dim() >= 1]
    if not found:
        raise UserInputError(
            "the inputs hold no tensor with a batch dimension: pass a tensor, a tuple or a dict "
            "whose first tensor has the batch as its leading dimension"
        )
    return int(found[0].shape[0])


def map_tensors(inputs: Inputs, fn: Callable[[Tensor], Any]) -> Inputs:
    """The inputs with ``fn`` applied to every tensor (same container type)."""
    inputs = normalize(inputs)
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: fn(v) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    return tuple(fn(v) if isinstance(v, Tensor) else v for v in inputs)


def select_samples(inputs: Inputs, index: slice | int) -> Inputs:
    """Samples ``index`` (a slice, or one sample kept as a batch of one) of every batched tensor."""
    size = batch_size(inputs)
    if isinstance(index, int):
        index = slice(index, index + 1)

    def pick(t: Tensor) -> Tensor:
        return t[index] if t.dim() >= 1 and t.shape[0] == size else t

    return map_tensors(inputs, pick)


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Every tensor of the inputs moved to ``device``."""
    return map_tensors(inputs, lambda t: t.to(device))


def detach(inputs: Inputs) -> Inputs:
    """Every tensor of the inputs detached (analysis never backpropagates into the user's graph)."""
    return map_tensors(inputs, lambda t: t.detach())


def first_float_tensor(inputs: Inputs) -> Tensor | None:
    """The first floating-point tensor of the inputs (what input Jacobians are taken w.r.t.)."""
    return next((t for t in tensors(inputs) if t.is_floating_point()), None)


def replace_first_float(inputs: Inputs, value: Tensor) -> Inputs:
    """The inputs with their first floating-point tensor replaced by ``value``."""
    done = False

    def swap(t: Tensor) -> Tensor:
        nonlocal done
        if not done and t.is_floating_point():
            done = True
            return value
        return t

    return map_tensors(inputs, swap)


def describe(inputs: Any) -> str:
    """A short description of the inputs: shapes and dtypes, e.g. ``(x: float32[8, 3, 32, 32])``."""

    def one(value: Any) -> str:
        if isinstance(value, Tensor):
            return f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}"
        return type(value).__name__

    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {one(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, tuple | list):
        return "(" + ", ".join(one(v) for v in inputs) + ")"
    return one(inputs)


def check_inputs(model: nn.Module, inputs: Inputs, name: str | None = None) -> Any:
    """One forward of a private copy of ``model`` on ``inputs`` (no grad); its output.

    A failure becomes a UserInputError naming the model, the input shapes and the error, so
    that wrong shapes or dtypes are reported before any long work starts.
    """
    from .private import private_copy

    inputs = normalize(inputs)
    batch_size(inputs)
    twin = private_copy(model)
    try:
        with torch.no_grad():
            return call_model(twin, inputs)
    except Exception as error:  # any failure of the user's forward on these inputs
        raise forward_error(name or type(model).__name__, inputs, error) from error


def forward_error(label: str, inputs: Inputs, error: Exception) -> UserInputError:
    """The one-line UserInputError for a forward pass that failed on these inputs."""
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserInputError(
        f"{label} fails on the inputs {describe(inputs)}: {message}. Pass inputs the model "
        "accepts: a tensor, a tuple of positional arguments or a dict of keyword arguments "
        "(e.g. {'input_ids': ..., 'attention_mask': ...})"
    )
