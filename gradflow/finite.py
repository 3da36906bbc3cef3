"""NaN/Inf checks of inputs and measurements, under the user's ``on_nonfinite`` policy."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserInputError
from .state import preserved_rng

NONFINITE_POLICIES = ("warn", "raise", "ignore")


class NonFiniteError(UserInputError):
    """A measurement or an input is NaN/Inf (raised under ``on_nonfinite="raise"``)."""


def report_nonfinite(message: str, policy: str) -> None:
    """Raise (``"raise"``), warn (``"warn"``) or do nothing (``"ignore"``) about ``message``."""
    if policy == "raise":
        raise NonFiniteError(message)
    if policy == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def check_input(x: Tensor, policy: str) -> None:
    """Report NaN/Inf in an input batch, with counts, before anything is measured on it."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or policy == "ignore":
        return
    finite = x.isfinite()
    if not bool(finite.all()):
        nan, total = int(x.isnan().sum()), x.numel()
        inf = int((~finite).sum()) - nan
        report_nonfinite(
            f"the input batch x contains {nan} NaN and {inf} Inf values (of {total}): "
            "check the data loading and normalisation",
            policy,
        )


def check_measurements(
    prefix: str, step: int, segments: list, flat: np.ndarray, policy: str, skip: str = ""
) -> None:
    """Report the first non-finite values of one step (``segments``: (site, keys, quantity)
    in the order of ``flat``); quantity ``skip`` may be NaN by definition."""
    bad, offset = [], 0
    for _site, keys, quantity in segments:
        values = flat[offset : offset + len(keys)]
        offset += len(keys)
        if quantity == skip:
            continue
        bad += [
            f"{quantity} of {k} = {v}"
            for k, v in zip(keys, values, strict=True)
            if not np.isfinite(v)
        ]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        report_nonfinite(
            f"{prefix}non-finite measurements at step {step}: " + "; ".join(bad[:5]) + more,
            policy,
        )


# ------------------------------------------------------------------ where it first appears


def describe_counts(t: Tensor) -> str:
    """``"3 NaN, 1 Inf of 256"``: the non-finite entries of one tensor."""
    nan = int(t.isnan().sum())
    inf = int(t.isinf().sum())
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return ", ".join(p for p in parts if p) + f" of {t.numel()}"


def nonfinite_tensors(module: nn.Module, *, recurse: bool = False) -> list[str]:
    """Names of ``module``'s floating parameters and buffers holding NaN/Inf, with counts."""
    named = [*module.named_parameters(recurse=recurse), *module.named_buffers(recurse=recurse)]
    return [
        f"{name} ({describe_counts(t.detach())})"
        for name, t in named
        if t is not None and t.is_floating_point() and not bool(t.detach().isfinite().all())
    ]


@dataclass
class NonFiniteSite:
    """Where NaN/Inf first appears in one pass: the module, what went non-finite, and why."""

    stage: str  # "forward" | "loss" | "backward" | "parameter gradient"
    module: str  # module path ("" for the whole model), or the parameter's name
    kind: str  # class of the module
    detail: str  # what is non-finite, with counts
    cause: str  # non-finite weights/buffers of the module, or what the inputs were

    @property
    def where(self) -> str:
        return f"`{self.module}` ({self.kind})" if self.module else f"the model ({self.kind})"

    def sentence(self) -> str:
        """One line for the summary, the report and the terminal."""
        if self.stage == "forward":
            return (
                f"non-finite values first appear in the forward pass at the output of "
                f"{self.where}: {self.detail}; {self.cause}"
            )
        if self.stage == "loss":
            return f"the forward pass is finite but the loss is not: {self.detail}"
        if self.stage == "backward":
            return (
                f"the forward pass is finite; the gradient first goes non-finite in the "
                f"backward pass at dL/d(output of {self.where}): {self.detail}"
            )
        return (
            f"the forward pass and every activation gradient are finite, but the gradient of "
            f"the parameter `{self.module}` is not: {self.detail}"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "sentence": self.sentence()}


def _float_outputs(value) -> list[Tensor]:
    """The floating-point tensors of a module's output (a tensor, tuple, list, dict)."""
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _float_outputs(item)]
    return []


def _name(described: str) -> str:
    return described.split(" (")[0]


class _Watch:
    """Hooks on every module of a private copy that note the first non-finite value."""

    def __init__(self, twin: nn.Module) -> None:
        self.twin = twin
        self.names = {module: name for name, module in twin.named_modules()}
        self.modules = dict(twin.named_modules())
        self.broken = {_name(t) for t in nonfinite_tensors(twin, recurse=True)}  # before
        self.site: NonFiniteSite | None = None
        self.grad_site: NonFiniteSite | None = None
        self.handles: list = []

    def __enter__(self) -> _Watch:
        for module in self.names:
            self.handles.append(module.register_forward_pre_hook(self._before))
            self.handles.append(module.register_forward_hook(self._after))
        return self

    def __exit__(self, *exc) -> None:
        while self.handles:
            self.handles.pop().remove()

    def _before(self, module: nn.Module, args) -> None:
        if self.site is not None:
            return
        for t in _float_outputs(args):
            if not bool(t.detach().isfinite().all()):
                name = self.names[module]
                parent = name.rpartition(".")[0]
                owner = self.modules.get(parent, self.twin)
                where = f"`{name}`" if name else "the model"
                self.site = NonFiniteSite(
                    "forward", parent, type(owner).__name__,
                    f"the input of {where} ({describe_counts(t.detach())})",
                    "computed by the forward code of this module between its submodules",
                )  # fmt: skip
                return

    def _after(self, module: nn.Module, args, output) -> None:
        outputs = _float_outputs(output)
        if self.site is None:
            bad = [t for t in outputs if not bool(t.detach().isfinite().all())]
            stats = nonfinite_tensors(module)  # e.g. BN running_var after an overflow
            if bad or stats:
                self.site = self._forward_site(module, args, bad, stats)
        for t in outputs:
            if t.requires_grad:
                t.register_hook(partial(self._on_grad, module))

    def _forward_site(self, module, args, bad: list[Tensor], stats: list[str]) -> NonFiniteSite:
        prefix = f"{self.names[module]}." if self.names[module] else ""
        own = [
            t for t in nonfinite_tensors(module, recurse=True) if prefix + _name(t) in self.broken
        ]
        stats = [t for t in stats if prefix + _name(t) not in self.broken]
        if bad:
            detail = describe_counts(bad[0].detach())
        else:
            detail = "the output is finite, but the statistics it keeps are not"
        if own:
            cause = "its parameters/buffers are already non-finite: " + "; ".join(own[:3])
        else:
            inputs = [t.detach() for t in _float_outputs(args)]
            largest = max((float(t.abs().max()) for t in inputs if t.numel()), default=0.0)
            kept = f"{'; '.join(stats)} after this pass, from finite" if stats else "its finite"
            cause = (
                f"{kept} inputs, parameters and buffers (largest input magnitude "
                f"{largest:.3g}): the computation overflows float32 here"
            )
        return NonFiniteSite("forward", self.names[module], type(module).__name__, detail, cause)

    def _on_grad(self, module: nn.Module, grad: Tensor) -> None:
        if self.grad_site is None and not bool(grad.isfinite().all()):
            self.grad_site = NonFiniteSite(
                "backward", self.names[module], type(module).__name__,
                f"dL/dz has {describe_counts(grad)}", "",
            )  # fmt: skip


def locate_nonfinite(
    model: nn.Module, batches: Iterable[tuple[Any, Any]], loss_fn=None
) -> NonFiniteSite | None:
    """The first NaN/Inf of a forward (+ backward) pass of ``model`` on each (inputs, targets)
    of ``batches`` in turn, in a private copy (the model is not touched); None if all finite.

    Forward: the innermost module whose output (or kept statistics, e.g. BN's running_var)
    is first non-finite, with its own non-finite parameters/buffers or, when those are finite,
    the largest input magnitude (an overflow). Then the loss, then backward: the module whose
    output gradient dL/dz is first non-finite (closest to the loss), then parameter gradients.
    """
    from .inputs import call_model, first_float_tensor, replace_first_float
    from .losses import resolve_loss
    from .private import private_copy

    twin = private_copy(model)
    named = [(n, p) for n, p in twin.named_parameters() if p.is_floating_point()]
    for _, p in named:
        p.requires_grad_(True)
    loss_of = resolve_loss(loss_fn)
    with preserved_rng():
        for inputs, targets in batches:
            first = first_float_tensor(inputs)
            if first is not None:
                inputs = replace_first_float(inputs, first.detach().requires_grad_(True))
            with _Watch(twin) as watch:
                output = call_model(twin, inputs)
                if watch.site is not None:
                    return watch.site
                if targets is None and loss_fn is None:
                    continue  # forward only (as record() without targets)
                loss = loss_of(output, targets)
                if not bool(loss.detach().isfinite().all()):
                    return NonFiniteSite("loss", "", type(twin).__name__,
                                         f"the loss is {float(loss):.3g}", "")  # fmt: skip
                sources = [p for _, p in named]
                grads = torch.autograd.grad(loss, sources, allow_unused=True) if sources else []
            if watch.grad_site is not None:
                return watch.grad_site
            for (name, _), grad in zip(named, grads, strict=True):
                if grad is not None and not bool(grad.isfinite().all()):
                    return NonFiniteSite("parameter gradient", name, "", describe_counts(grad), "")
    return None


SPECTRUM_CELLS = ("prod_depth", "prod_largest", "prod_rms", "prod_smallest", "prod_log10_condition")
RECORD_CELLS = {
    "grad_log10_ratio": "activation_grad_norm",
    "response_std_min": "response_std",
    "response_std_max": "response_std",
}


def mark_summary(summary, records, sites: list[dict]):
    """The summary with column ``nonfinite`` (where NaN/Inf first appeared, "" if nowhere) and,
    on those rows, NaN for every number that a non-finite value went into: the spectrum
    (not measured) and each record-derived cell whose records hold a NaN/Inf (min/max skip
    NaN, a ratio of the two end points would hide a NaN in between)."""
    summary = summary.copy()
    where = {(s["model"], s["step"]): s["sentence"] for s in sites}
    summary["nonfinite"] = [
        where.get((m, s), "") for m, s in zip(summary["model"], summary["step"], strict=True)
    ]
    for index, row in summary.iterrows():
        if not row["nonfinite"]:
            continue
        for cell in SPECTRUM_CELLS:
            summary.loc[index, cell] = np.nan
        part = records[(records["model"] == row["model"]) & (records["step"] == row["step"])]
        for cell, quantity in RECORD_CELLS.items():
            values = part.loc[part["quantity"] == quantity, "value"].to_numpy(dtype=float)
            if not np.isfinite(values).all():
                summary.loc[index, cell] = np.nan
    return summary
