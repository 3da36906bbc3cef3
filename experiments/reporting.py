"""Report pieces shared by the experiments: versions, comparison sentences, tables.

Every sentence of a report's "Compared with the paper" section comes from ``compare``:
two measured numbers, the direction the paper (or a reasoned expectation) predicts, and
the verdict that follows from them.
"""

from __future__ import annotations

import platform

import numpy as np
import pandas as pd
import torch

from gradflow.train import TrainResult

PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"


def versions() -> dict[str, str]:
    """Versions of what produced a report."""
    import matplotlib

    import gradflow

    return {
        "gradflow": gradflow.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


# ----------------------------------------------------------------------------- comparisons
def compare(
    subject: str,
    value: float,
    other: str,
    other_value: float,
    *,
    quantity: str,
    expected: str | None,
    paper: str,
    verb: str = "ends with",
    unit: str = "%",
    budget: str = "at this scale",
    source: str = "paper",
) -> str:
    """One sentence from two measured numbers: is ``subject``'s ``quantity`` ``expected``
    ("higher"/"lower"/None: no claim) than ``other``'s, as the paper (``paper``: where it
    says so) finds? ``source="expectation"`` for a reasoned expectation, not a finding."""
    if value == other_value:
        relation = f"the same {quantity} as"
    else:
        relation = f"a {'higher' if value > other_value else 'lower'} {quantity} than"
    numbers = f"{value:.3g}{unit} vs {other_value:.3g}{unit}"
    if expected is None:  # the literature makes no claim to check: a reference only
        return f"{subject} {verb} {relation} {other} ({numbers}); {paper}."
    holds = (value > other_value) if expected == "higher" else (value < other_value)
    verdict = (
        ("as in the paper" if holds else f"the paper's finding is not reproduced {budget}")
        if source == "paper"
        else ("as expected" if holds else f"the expectation does not hold {budget}")
    )
    return f"{subject} {verb} {relation} {other} ({numbers}): {verdict} ({paper})."


def final_errors(results: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per run: final training and test error (%), best test error, parameters."""
    from gradflow.models import count_parameters

    rows = []
    for label, result in results.items():
        history = result.history[result.history.quantity == "error"]
        test = history[history.split == "test"].value
        rows.append(
            {
                "model": label,
                "params": count_parameters(result.model),
                "train_error": result.final("train"),
                "test_error": result.final("test"),
                "best_test_error": float(test.min()),
            }
        )
    columns = ["model", "params", "train_error", "test_error", "best_test_error"]
    return pd.DataFrame(rows, columns=columns)


def histories(results: dict[str, TrainResult]) -> pd.DataFrame:
    """All runs' history frames stacked (the model column holds each run's label)."""
    return pd.concat([r.history for r in results.values()], ignore_index=True)


def gradient_log10_ratio(records: pd.DataFrame) -> pd.Series:
    """Per model: log10 ||dL/dz_0|| / ||dL/dz_L|| (block-1 input over last block output)."""
    grads = records[records.quantity == "activation_grad_norm"]

    def ratio(group: pd.DataFrame) -> float:
        by_depth = group.set_index("depth")["value"]
        first, last = by_depth[by_depth.index.min()], by_depth[by_depth.index.max()]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 (fixup at init): nan
            return float(np.log10(np.float64(first) / last))

    return grads.groupby("model", sort=False).apply(ratio, include_groups=False)


def deepest_spectra(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model (and step): the cumulative spectrum at the deepest depth measured, samples
    averaged in log space: largest, RMS (sqrt of Hutchinson's ||J||_F^2 / dim) and smallest
    computed singular value; log10_spread = log10(largest / RMS), which needs no smallest
    value (1 for an isometry: 0), and log10_condition = log10(largest / smallest)."""
    keys = [k for k in ("model", "step") if k in summary]
    prod = summary[summary.operator == "prod"]
    last = prod[prod.depth == prod.groupby(keys)["depth"].transform("max")]
    with np.errstate(divide="ignore"):  # an exact 0 gives -inf: condition number inf
        logs = last.assign(
            largest=np.log10(last.largest),
            rms=0.5 * np.log10(last.mean_sq_estimate.astype(float)),
            smallest=np.log10(last.smallest),
        )
    table = logs.groupby(keys, sort=False)[["depth", "largest", "rms", "smallest"]].mean()
    table["log10_spread"] = table.largest - table.rms
    table["log10_condition"] = table.largest - table.smallest
    table[["largest", "rms", "smallest"]] = 10 ** table[["largest", "rms", "smallest"]]
    return table.reset_index()


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A copy for a README table: missing numbers as an en dash instead of "nan"."""
    return table.astype(object).where(table.notna(), "\u2013")


def compare_rows(table: pd.DataFrame, subject: str, other: str, column: str, **options) -> str:
    """``compare`` of two rows of ``table`` (index labels) in ``column``."""
    value, other_value = float(table.at[subject, column]), float(table.at[other, column])
    return compare(subject, value, other, other_value, **options)
