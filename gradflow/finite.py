"""NaN/Inf checks of inputs and measurements, under the user's ``on_nonfinite`` policy."""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor

from .errors import UserInputError

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
