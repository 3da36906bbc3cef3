"""Shattered gradients (Balduzzi et al. 2017): how fast input gradients decorrelate along a line.

Points x(t_i) = x0 + t_i d on a uniform grid t_i = -radius .. radius along a random
direction d (unit RMS per coordinate, so t is in units of the input's per-coordinate
scale). A scalar output s(x) (a fixed random unit projection of the logits, or one logit)
has at every point

- ``measure="cosine"``: the full input gradient g_i = grad_x s(x(t_i)); the correlation at
  lag L is the mean over i of cos(g_i, g_{i+L});
- ``measure="directional"``: the directional derivative h_i = d/dt s(x(t)) = g_i . d (a 1-D
  signal, as Balduzzi's 1-D inputs); the correlation at lag L is the Pearson correlation of
  (h_i, h_{i+L}) over i, the sample autocorrelation of the sequence.

A linear model has a constant gradient: cosine correlation 1 at every lag. White-noise
gradients have correlation ~0 at every lag >= 1. The model is evaluated in a calibrated
private copy with eval-mode BN (``gradflow.spectra.calibrated_copy``, statistics from the
calibration batch), so the points of a line do not mix through batch statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import UserInputError, check_choice

MEASURES = ("cosine", "directional")
COLUMNS = ["model", "step", "line", "measure", "lag", "distance", "quantity", "value"]
ScalarOutput = str | int | Callable[[Tensor], Tensor]


def scalar_output(output: ScalarOutput, num_outputs: int, seed: int) -> Callable[[Tensor], Tensor]:
    """s(logits) per sample: ``"projection"`` (a seeded random unit vector), a logit index,
    or a callable of the (points, outputs) tensor returning (points,)."""
    if callable(output):
        return output
    if output == "projection":
        generator = torch.Generator().manual_seed(seed)
        u = torch.randn(num_outputs, generator=generator, dtype=torch.float64)
        u = u / u.norm()
        return lambda logits: logits @ u.to(logits)
    if isinstance(output, int) and 0 <= output < num_outputs:
        return lambda logits: logits[:, output]
    raise UserInputError(
        f"output must be 'projection', a logit index in 0..{num_outputs - 1} or a callable, "
        f"got {output!r}"
    )


def line_gradients(
    fn: Callable[[Tensor], Tensor], x0: Tensor, direction: Tensor, ts: Tensor, chunk: int = 64
) -> Tensor:
    """(points, dim) input gradients of the per-sample scalar ``fn`` at x0 + t d, t in ``ts``."""
    grads = []
    for start in range(0, len(ts), chunk):
        t = ts[start : start + chunk].to(x0).view(-1, *([1] * x0.dim()))
        points = (x0.unsqueeze(0) + t * direction.unsqueeze(0)).requires_grad_(True)
        with torch.enable_grad():
            values = fn(points)
            (grad,) = torch.autograd.grad(values.sum(), points)
        grads.append(grad.reshape(len(t), -1).double())
    return torch.cat(grads)


def autocorrelation(grads: Tensor, direction: Tensor, measure: str, max_lag: int) -> np.ndarray:
    """Correlation at lags 0..max_lag of the gradients along one line (module docstring)."""
    if measure == "cosine":
        unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-300)
        values = [float((unit[: len(unit) - lag] * unit[lag:]).sum(1).mean())
                  for lag in range(max_lag + 1)]  # fmt: skip
        return np.array(values)
    h = (grads @ direction.reshape(-1).double()).numpy()
    values = []
    for lag in range(max_lag + 1):
        a, b = h[: len(h) - lag], h[lag:]
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 else np.nan)
    return np.array(values)


def shattered_gradients(
    model: nn.Module,
    inputs: Tensor,
    *,
    lines: int = 4,
    points: int = 128,
    radius: float = 1.0,
    max_lag: int | None = None,
    output: ScalarOutput = "projection",
    measures: tuple[str, ...] = MEASURES,
    calibration: Tensor | None = None,
    label: str | None = None,
    step: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Gradient autocorrelation vs lag along ``lines`` lines through the first inputs, for
    each of ``measures`` (both by default, from the same gradients).

    One line per input x0 = inputs[i], direction seeded per line. BN runs in eval mode in a
    private copy calibrated on ``calibration`` (default: ``inputs``); the model is untouched.
    Frame: model, step, line, measure, lag (grid steps), distance (|t_i - t_j| ||d||),
    quantity ``gradient_correlation``, value. See ``shattering_summary`` for the decay.
    """
    from ..spectra import calibrated_copy
    from ..state import preserved_rng

    for measure in measures:
        check_choice("measure", measure, MEASURES)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or len(inputs) < lines:
        raise UserInputError(f"inputs must be a batch of at least lines={lines} samples")
    if points < 3 or radius <= 0:
        raise UserInputError(f"need points >= 3 and radius > 0, got {points}, {radius}")
    max_lag = min(points - 2, max_lag if max_lag is not None else points // 2)
    with preserved_rng():
        twin = calibrated_copy(model, inputs if calibration is None else calibration)
        with torch.no_grad():
            num_outputs = twin(inputs[:1]).reshape(1, -1).shape[1]
        scalar = scalar_output(output, num_outputs, seed)
        generator = torch.Generator().manual_seed(seed)
        ts = torch.linspace(-radius, radius, points, dtype=torch.float64)
        rows, name = [], label or type(model).__name__
        for line in range(lines):
            direction = torch.randn(inputs.shape[1:], generator=generator).to(inputs)
            direction = direction / direction.pow(2).mean().sqrt()
            grads = line_gradients(lambda z: scalar(twin(z).reshape(len(z), -1)), inputs[line],
                                   direction, ts)  # fmt: skip
            spacing = float(ts[1] - ts[0]) * float(direction.double().norm())
            for measure in measures:
                values = autocorrelation(grads, direction, measure, max_lag)
                rows += [(name, step, line, measure, lag, lag * spacing, "gradient_correlation",
                          value) for lag, value in enumerate(values)]  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def shattering_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model (and step, measure), lines averaged: correlation at lag 1, and the
    decorrelation lag, the first lag at which the mean correlation drops below 1/e (NaN if it
    never does within the lags measured), in grid steps and in input distance."""
    keys = ["model", "step", "measure"]
    mean = frame.groupby([*keys, "lag"], sort=False)[["distance", "value"]].mean().reset_index()

    def decay(group: pd.DataFrame) -> pd.Series:
        by_lag = group.set_index("lag")
        below = by_lag.index[(by_lag.value < np.exp(-1)) & (by_lag.index > 0)]
        lag = float(below[0]) if len(below) else np.nan
        return pd.Series({
            "lag1_correlation": float(by_lag.value.get(1, np.nan)),
            "decorrelation_lag": lag,
            "decorrelation_distance": float(by_lag.distance[int(lag)]) if len(below) else np.nan,
            "max_lag": int(by_lag.index.max()),
        })  # fmt: skip

    return mean.groupby(keys, sort=False).apply(decay, include_groups=False).reset_index()
