"""Assertions for users' own test suites: fail CI when gradient flow breaks.

>>> import gradflow.testing as gft
>>> gft.assert_gradient_preserved(model, x, y, max_log10_ratio=1.0)

Every assertion leaves the model exactly as it found it (the Recorder's guarantee), raises
``AssertionError`` with a small table pointing at the first place where the bound breaks,
and hands the frame behind it to the pytest plugin (``--gradflow-report DIR`` saves them).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .inputs import Inputs

# Frames behind the assertions of the running test: the pytest plugin drains this list.
_collected: list[tuple[str, pd.DataFrame]] = []


def _collect(assertion: str, frame: pd.DataFrame) -> None:
    _collected.append((assertion, frame))


def drain_collected() -> list[tuple[str, pd.DataFrame]]:
    """Return and forget the frames collected since the last call (for the pytest plugin)."""
    items = list(_collected)
    _collected.clear()
    return items


def _table(frame: pd.DataFrame, mark: int | None, mark_text: str, context: int = 2) -> str:
    """``frame`` as text; long tables keep both ends and the rows around ``mark``."""
    lines = frame.to_string(index=False, float_format=lambda v: f"{v:.4g}").split("\n")
    header, rows = lines[0], lines[1:]
    if mark is not None:
        rows[mark] += f"   <-- {mark_text}"
    if len(rows) <= 4 * context + 6:
        return "\n".join([header, *rows])
    keep = set(range(context)) | set(range(len(rows) - context, len(rows)))
    if mark is not None:
        keep |= set(range(max(0, mark - context), min(len(rows), mark + context + 1)))
    shown, previous = [header], -1
    for row in sorted(keep):
        if row > previous + 1:
            shown.append("   ...")
        shown.append(rows[row])
        previous = row
    return "\n".join(shown)


def gradient_norms(
    model: nn.Module,
    x: Inputs,
    y: Tensor | None = None,
    loss_fn: Callable | None = None,
    layers=None,
) -> pd.DataFrame:
    """||dL/dz_k|| at every block boundary (or ``layers``), from one forward/backward."""
    from .record_pass import record

    frame = record(model, x, y, loss_fn=loss_fn, probes=["activation_grad_norm"], layers=layers)
    grads = frame[frame["quantity"] == "activation_grad_norm"]
    return grads.sort_values("depth").reset_index(drop=True)


def assert_gradient_preserved(
    model: nn.Module,
    x: Inputs,
    y: Tensor | None = None,
    loss_fn: Callable | None = None,
    max_log10_ratio: float = 1.0,
    layers=None,
) -> pd.DataFrame:
    """Fail if log10(max/min) of the activation-gradient norms across boundaries > bound.

    The norms are ||dL/dz_k||_2 over the batch at every block boundary k (the input of the
    first block and the output of every block) from one forward/backward pass. The message
    walks from the output side towards the input and points at the first boundary where
    the spread of the norms seen so far exceeds ``max_log10_ratio``. Returns the frame.
    """
    grads = gradient_norms(model, x, y, loss_fn, layers)
    _collect("assert_gradient_preserved", grads)
    if len(grads) < 2:
        raise AssertionError(
            "assert_gradient_preserved found fewer than two block boundaries; "
            "pass layers= to name the modules whose outputs to compare"
        )
    values = grads["value"].to_numpy(dtype=float)
    table = pd.DataFrame(
        {
            "depth": grads["depth"],
            "layer": grads["layer"],
            "grad_norm": values,
        }
    )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        bad = int(np.flatnonzero(~np.isfinite(values) | (values <= 0))[-1])
        raise AssertionError(
            "gradient not preserved: the activation-gradient norm is "
            f"{values[bad]} at depth {grads['depth'][bad]} ({grads['layer'][bad]}).\n"
            + _table(table, bad, "not finite / zero")
        )
    logs = np.log10(values)
    table["log10_ratio_to_output"] = logs - logs[-1]
    spread = float(logs.max() - logs.min())
    if spread <= max_log10_ratio:
        return grads
    # from the output side (last row) towards the input: first row where the bound breaks
    first_broken = None
    for row in range(len(logs) - 1, -1, -1):
        seen = logs[row:]
        if seen.max() - seen.min() > max_log10_ratio:
            first_broken = row
            break
    where = f"depth {grads['depth'][first_broken]} ({grads['layer'][first_broken]})"
    raise AssertionError(
        f"gradient not preserved: log10(max/min) of ||dL/dz|| across {len(logs)} block "
        f"boundaries is {spread:.2f} > max_log10_ratio={max_log10_ratio}; going from the "
        f"output to the input, the bound first breaks at {where}.\n"
        + _table(table, first_broken, "bound broken here")
        + "\nIf this spread is expected, relax the bound: "
        f"max_log10_ratio={math.ceil(spread * 10) / 10}."
    )


def assert_response_std_bounded(
    model: nn.Module,
    x: Inputs,
    low: float = 0.0,
    high: float = math.inf,
    layers=None,
) -> pd.DataFrame:
    """Fail if any layer response std (Figure 7 layers by default) is outside [low, high]."""
    from .record_pass import record

    was = torch.is_grad_enabled()
    with torch.no_grad():
        frame = record(model, x, None, probes=["response_std"], layers=layers)
    torch.set_grad_enabled(was)
    stds = frame[frame["quantity"] == "response_std"].sort_values("depth").reset_index(drop=True)
    _collect("assert_response_std_bounded", stds)
    values = stds["value"].to_numpy(dtype=float)
    outside = ~np.isfinite(values) | (values < low) | (values > high)
    if not outside.any():
        return stds
    table = pd.DataFrame({"depth": stds["depth"], "layer": stds["layer"], "std": values})
    first = int(np.flatnonzero(outside)[0])
    raise AssertionError(
        f"{int(outside.sum())} of {len(values)} layer responses have a std outside "
        f"[{low}, {high}]; the first is {stds['layer'][first]} (std {values[first]:.4g}).\n"
        + _table(table[outside].reset_index(drop=True), 0, "first outside")
    )


def assert_dynamical_isometry(
    model_or_fn: nn.Module | Callable[[Tensor], Tensor],
    x: Inputs,
    max_log10_condition: float = 2.0,
    depth: int | None = None,
    k: int = 4,
) -> pd.DataFrame:
    """Fail if the input-output Jacobian is worse conditioned than 10^max_log10_condition.

    For a model (any ``nn.Module``; x a tensor, tuple or dict): the cumulative Jacobian from
    the input (a token model: the embedding output) to the output of block ``depth`` (default:
    the last block of ``gradflow.structure``), at the first sample of ``x``. For a plain
    function: its Jacobian at ``x``. Uses the top-k and bottom-k
    singular values (cheap iterative settings), so the condition number is exact.
    """
    from .spectra import block_spectra, singular_values

    if isinstance(model_or_fn, nn.Module):
        from .inputs import select_samples
        from .structure import structure

        first = select_samples(x, 0)
        last = depth or len(structure(model_or_fn, first).blocks)
        spectra = block_spectra(
            model_or_fn, first, k=k, depths=[last], samples=1, operators=["prod"]
        )
        sigma = spectra[(spectra["operator"] == "prod") & (spectra["depth"] == last)]["sigma"]
        what = f"the cumulative Jacobian from the input to block {last}"
        frame = spectra
    else:
        result = singular_values(model_or_fn, x, k=k, which="both")
        sigma = pd.Series(result.values)
        what = "the Jacobian of the function at x"
        frame = result.frame()
    _collect("assert_dynamical_isometry", frame)
    largest, smallest = float(sigma.max()), float(sigma.min())
    condition = math.inf if smallest <= 0 else math.log10(largest / smallest)
    if condition > max_log10_condition:
        raise AssertionError(
            f"no dynamical isometry: {what} has singular values {smallest:.3g} .. {largest:.3g}, "
            f"log10 condition number {condition:.2f} > max_log10_condition={max_log10_condition}."
        )
    return frame


@contextlib.contextmanager
def assert_unchanged(model: nn.Module) -> Iterator[None]:
    """Fail if the body changes the model's parameters, buffers, flags, grads or hooks."""
    from .state import ModelState

    before = ModelState.capture(model)
    yield
    differences = before.differences(ModelState.capture(model))
    if differences:
        listed = "\n".join(f"  - {d}" for d in differences[:20])
        more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
        raise AssertionError(f"the model changed inside assert_unchanged:\n{listed}{more}")
