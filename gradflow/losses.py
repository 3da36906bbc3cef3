"""Default losses chosen by the type of the model's output and of the targets.

``auto`` (``default_loss``): an output carrying a tensor ``.loss`` (HF models given labels)
-> that loss; logits ``(B, T, V)`` (``.logits``, a ``"logits"`` key, or the first tensor of a
tuple/dict output) with integer targets ``(B, T)`` -> the language-model loss (next-token
cross-entropy, logits at t predict targets at t+1); logits ``(B, C, ...)`` with integer targets
``(B, ...)`` -> cross-entropy; float targets shaped like the output -> MSE. Anything else is a
UserInputError that says to pass ``loss_fn``. ``sum_output`` is the documented fallback for
models without targets: the sum of every floating-point output tensor (dL/d output = 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserInputError, check_choice

LossFn = Callable[[Any, Any], Tensor]


def output_tensors(output: Any) -> list[Tensor]:
    """Every tensor in a model output (tensor, tuple/list, dict or ModelOutput), in order."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):  # also HF ModelOutput (an OrderedDict)
        output = list(output.values())
    if isinstance(output, tuple | list):
        return [t for item in output for t in output_tensors(item)]
    return []


def logits_of(output: Any) -> Tensor:
    """The prediction tensor: the output, ``.logits``, ``["logits"]`` or its first float tensor."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, Tensor):
        return logits
    found = [t for t in output_tensors(output) if t.is_floating_point()]
    if not found:
        raise UserInputError(
            f"the model returned {type(output).__name__} without a floating-point tensor: "
            "pass loss_fn=lambda output, y: ... returning a scalar"
        )
    return found[0]


def cross_entropy(output: Any, targets: Tensor) -> Tensor:
    """Cross-entropy of class logits (B, C, ...) against integer targets (B, ...)."""
    return F.cross_entropy(logits_of(output), targets)


def mse(output: Any, targets: Tensor) -> Tensor:
    """Mean squared error against float targets shaped like the output."""
    return F.mse_loss(logits_of(output), targets)


def lm(output: Any, targets: Tensor | None) -> Tensor:
    """Language-model loss: ``.loss`` if the output carries one, else next-token cross-entropy."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if isinstance(loss, Tensor):
        return loss
    if targets is None:
        raise UserInputError("the language-model loss needs token targets (B, T): pass y=input_ids")
    logits = logits_of(output)
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, targets[:, 1:].reshape(-1).to(torch.long))


def sum_output(output: Any, targets: Any = None) -> Tensor:
    """The sum of every floating-point output tensor (a probe loss with dL/d output = 1)."""
    found = [t for t in output_tensors(output) if t.is_floating_point()]
    if not found:
        raise UserInputError("sum_output needs a floating-point tensor in the model output")
    return sum(t.sum() for t in found)


def _is_lm(logits: Tensor, targets: Tensor, output: Any) -> bool:
    carries = not isinstance(output, Tensor)
    return carries and logits.dim() == 3 and targets.shape == logits.shape[:2]


def default_loss(output: Any, targets: Any) -> Tensor:
    """The loss for this output and these targets (see the module docstring)."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, Tensor) and loss.numel() == 1:
        return loss
    if targets is None:
        raise UserInputError(
            "no targets and the output carries no .loss: pass y=..., or loss_fn='sum_output'"
        )
    if not isinstance(targets, Tensor):
        raise UserInputError(
            f"targets must be a tensor, got {type(targets).__name__}: pass loss_fn"
        )
    logits = logits_of(output)
    if not targets.is_floating_point() and not targets.is_complex():
        if _is_lm(logits, targets, output):
            return lm(output, targets)
        if logits.dim() >= 2 and targets.shape == logits.shape[:1] + logits.shape[2:]:
            return F.cross_entropy(logits, targets)
    elif targets.shape == logits.shape:
        return F.mse_loss(logits, targets)
    raise UserInputError(
        f"no default loss for output {tuple(logits.shape)} and targets "
        f"{str(targets.dtype).replace('torch.', '')}{tuple(targets.shape)}: "
        "pass loss_fn=lambda output, y: ... returning a scalar"
    )


LOSSES: dict[str, LossFn] = {
    "auto": default_loss,
    "cross_entropy": cross_entropy,
    "mse": mse,
    "lm": lm,
    "sum_output": sum_output,
}


def resolve_loss(name_or_callable: str | LossFn | None) -> LossFn:
    """A loss callable ``(output, targets) -> scalar`` from a name of ``LOSSES`` or a callable."""
    if name_or_callable is None:
        return default_loss
    if callable(name_or_callable):
        return name_or_callable
    return LOSSES[check_choice("loss", name_or_callable, list(LOSSES))]
