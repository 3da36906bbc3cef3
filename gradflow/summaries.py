"""Every derived number, written once: the CLI summary, the reports and the experiments call these.

The frames come in tidy (``record``'s frame, ``block_spectra``'s frame and its
``summarize_spectra`` summary); the numbers that come out:

- ``geomean``: the geometric mean exp(mean(log v)); 0 when any value is 0 (the product is
  0), NaN when a value is negative or NaN (undefined; never explained away) or there is none.
- ``log10_condition``: log10(largest / smallest); +inf when smallest <= 0 (rank-deficient).
- ``gradient_log10_ratio``: log10 ||dL/dz_0|| / ||dL/dz_L||, the activation-gradient norm
  at the input of the first block over the one at the output of the last (NaN with fewer
  than two depths: a ratio needs two boundaries).
- ``deepest_prod``: the cumulative spectrum at the deepest depth measured, per model (and
  step): geometric means over the samples of the largest and smallest singular value, the
  RMS singular value sqrt(mean over samples of Hutchinson's ||J||_F^2 / dim), the spread
  log10(largest / RMS), the condition number and whether the bottom values converged
  (smallest and condition NaN when only the largest values were measured).
- ``spectra_summary_by_step``: ``summarize_spectra`` of each step's part of a spectra frame.
- ``summary_table``: one row per (model, step), the table ``gradflow analyze`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "model",
    "step",
    "blocks",
    "grad_log10_ratio",
    "response_std_min",
    "response_std_max",
    "prod_depth",
    "prod_largest",
    "prod_rms",
    "prod_smallest",
    "prod_log10_condition",
    "prod_bottom_converged",
]
DEEPEST_COLUMNS = [
    "depth",
    "largest",
    "rms",
    "smallest",
    "log10_spread",
    "log10_condition",
    "bottom_converged",
]


def geomean(values: Sequence[float] | pd.Series) -> float:
    """exp(mean(log v)): 0 if any v is 0, NaN if any v is negative or NaN, or v is empty."""
    values = pd.Series(values, dtype=float)
    if values.empty or values.isna().any() or (values < 0).any():
        return float("nan")
    if (values == 0).any():
        return 0.0
    return float(np.exp(np.log(values).mean()))


def log10_condition(largest: float, smallest: float) -> float:
    """log10(largest / smallest); +inf when smallest <= 0 (rank-deficient), NaN stays NaN."""
    if np.isnan(largest) or np.isnan(smallest):
        return float("nan")
    return float(np.log10(largest / smallest)) if smallest > 0 else float("inf")


def _keys(frame: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return [key for key in by if key in frame]


def _log10_first_over_last(group: pd.DataFrame) -> float:
    """log10 of the value at the smallest depth over the value at the largest one."""
    ordered = group.sort_values("depth")["value"]
    if group["depth"].nunique() < 2:
        return float("nan")
    first, last = ordered.iloc[0], ordered.iloc[-1]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 (fixup at init): nan
        return float(np.log10(np.float64(first) / last))


def gradient_log10_ratio(records: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.Series:
    """Per ``by`` group: log10 ||dL/dz_0|| / ||dL/dz_L|| (block-1 input over the last output)."""
    grads = records[records["quantity"] == "activation_grad_norm"]
    keys = _keys(grads, by)
    ratios = {key: _log10_first_over_last(part) for key, part in grads.groupby(keys, sort=False)}
    index = (
        pd.MultiIndex.from_tuples(list(ratios), names=keys)
        if len(keys) > 1
        else pd.Index([k[0] for k in ratios], name=keys[0])
    )
    return pd.Series(list(ratios.values()), index=index, name="grad_log10_ratio", dtype=float)


def _deepest_row(part: pd.DataFrame) -> dict:
    """The deepest depth of one (model, step)'s ``prod`` rows, reduced over the samples."""
    depth = int(part["depth"].max())
    last = part[part["depth"] == depth]
    largest, smallest = geomean(last["largest"]), geomean(last["smallest"])
    rms = float(np.sqrt(last["mean_sq_estimate"].mean()))
    bottom = last["has_bottom"] if "has_bottom" in last else pd.Series(True, index=last.index)
    if not bottom.any():  # only the largest values were measured (which="largest")
        smallest = float("nan")
    return {
        "depth": depth,
        "largest": largest,
        "rms": rms,
        "smallest": smallest,
        "log10_spread": float(np.log10(largest / rms)) if rms > 0 else float("nan"),
        "log10_condition": log10_condition(largest, smallest),
        "bottom_converged": bool((bottom & last["converged"]).all()),
    }


def deepest_prod(
    spectra_summary: pd.DataFrame, by: Sequence[str] = ("model", "step")
) -> pd.DataFrame:
    """Per model (and step, where the frame has one): the cumulative spectrum at the deepest
    depth, samples reduced as the module doc says (columns ``by`` + DEEPEST_COLUMNS)."""
    keys = _keys(spectra_summary, by)
    prod = spectra_summary[spectra_summary["operator"] == "prod"]
    rows = []
    for key, part in prod.groupby(keys, sort=False):
        rows.append({**dict(zip(keys, key, strict=True)), **_deepest_row(part)})
    return pd.DataFrame(rows, columns=[*keys, *DEEPEST_COLUMNS])


def spectra_summary_by_step(spectra: pd.DataFrame) -> pd.DataFrame:
    """``summarize_spectra`` of each step's rows, with the step column kept."""
    from .spectra import summarize_spectra

    if spectra.empty:  # no model had spectra (e.g. all non-finite): nothing to summarise
        return pd.DataFrame()

    return pd.concat(
        [summarize_spectra(part).assign(step=step) for step, part in spectra.groupby("step")],
        ignore_index=True,
    )


def summary_table(records: pd.DataFrame, spectra_summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, step): the numbers that say whether gradient flows and why."""
    ratios = gradient_log10_ratio(records, by=("model", "step"))
    deepest = {}
    if not spectra_summary.empty:
        for row in deepest_prod(spectra_summary).to_dict("records"):
            deepest[row.pop("model"), row.pop("step")] = {
                f"prod_{k}": v for k, v in row.items() if k != "log10_spread"
            }
    empty = dict.fromkeys(SUMMARY_COLUMNS[6:], np.nan)
    rows = []
    for (model, step), part in records.groupby(["model", "step"], sort=False):
        grads = part[part["quantity"] == "activation_grad_norm"]
        responses = part[part["quantity"] == "response_std"]["value"]
        rows.append(
            {
                "model": model,
                "step": int(step),
                "blocks": int(grads["depth"].max()) if len(grads) else 0,
                "grad_log10_ratio": float(ratios.get((model, step), np.nan)),
                "response_std_min": float(responses.min()) if len(responses) else np.nan,
                "response_std_max": float(responses.max()) if len(responses) else np.nan,
                **deepest.get((model, step), empty),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
