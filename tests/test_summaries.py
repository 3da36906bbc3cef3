"""gradflow.summaries pinned on hand-computed frames (zeros, NaN, a single depth)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradflow.summaries import (
    SUMMARY_COLUMNS,
    deepest_prod,
    geomean,
    gradient_log10_ratio,
    log10_condition,
    spectra_summary_by_step,
    summary_table,
)


def test_geomean_by_hand():
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)  # sqrt(16)
    assert geomean([1e-3, 1e3, 1.0]) == pytest.approx(1.0)
    assert geomean([5.0]) == pytest.approx(5.0)
    assert geomean([3.0, 0.0]) == 0.0  # the product is 0
    assert math.isnan(geomean([3.0, float("nan")]))  # never explained away
    assert math.isnan(geomean([3.0, -1.0]))
    assert math.isnan(geomean([]))


def test_log10_condition_by_hand():
    assert log10_condition(1000.0, 1.0) == pytest.approx(3.0)
    assert log10_condition(2.0, 0.0) == math.inf  # rank-deficient
    assert math.isnan(log10_condition(float("nan"), 1.0))


def _records(values_by_model: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for model, values in values_by_model.items():
        for depth, value in enumerate(values):
            rows.append(
                {
                    "model": model,
                    "step": 0,
                    "depth": depth,
                    "quantity": "activation_grad_norm",
                    "value": value,
                }
            )
            rows.append(
                {"model": model, "step": 0, "depth": depth, "quantity": "weight_norm", "value": 9.0}
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # depth order must not matter


def test_gradient_log10_ratio_first_over_last_depth():
    records = _records({"a": [100.0, 5.0, 1.0], "b": [1.0, 10.0], "one": [3.0], "zero": [0.0, 0.0]})
    ratio = gradient_log10_ratio(records)
    assert ratio["a"] == pytest.approx(2.0)  # log10(100 / 1)
    assert ratio["b"] == pytest.approx(-1.0)  # log10(1 / 10): shrinks towards the input
    assert math.isnan(ratio["one"])  # a ratio needs two boundaries
    assert math.isnan(ratio["zero"])  # 0 / 0
    by_step = gradient_log10_ratio(records, by=("model", "step"))
    assert by_step[("a", 0)] == pytest.approx(2.0)


def _spectra_summary() -> pd.DataFrame:
    rows = [
        # model a: depth 2 is the deepest; two samples
        ("a", 1, 0, 50.0, 0.5, 1.0, True, True),
        ("a", 2, 0, 10.0, 1.0, 4.0, True, True),
        ("a", 2, 1, 1000.0, 0.01, 16.0, True, False),
        # model z: a zero smallest value in one sample, a single depth
        ("z", 3, 0, 4.0, 0.0, 1.0, True, True),
        ("z", 3, 1, 9.0, 2.0, 1.0, True, True),
    ]
    columns = ["model", "depth", "sample", "largest", "smallest", "mean_sq_estimate"]
    frame = pd.DataFrame(rows, columns=[*columns, "has_bottom", "converged"])
    frame["operator"] = "prod"
    other = frame.assign(operator="J_H", largest=1e9)  # other operators are ignored
    return pd.concat([frame, other], ignore_index=True).assign(step=0)


def test_deepest_prod_by_hand():
    table = deepest_prod(_spectra_summary()).set_index("model")
    a, z = table.loc["a"], table.loc["z"]
    assert a["depth"] == 2 and z["depth"] == 3
    assert a["largest"] == pytest.approx(100.0)  # sqrt(10 * 1000)
    assert a["smallest"] == pytest.approx(0.1)  # sqrt(1 * 0.01)
    assert a["rms"] == pytest.approx(math.sqrt(10.0))  # sqrt(mean(4, 16))
    assert a["log10_condition"] == pytest.approx(3.0)
    assert a["log10_spread"] == pytest.approx(math.log10(100 / math.sqrt(10)))
    assert not a["bottom_converged"]  # sample 1 did not converge
    assert z["largest"] == pytest.approx(6.0) and z["smallest"] == 0.0
    assert z["log10_condition"] == math.inf and z["bottom_converged"]


def test_deepest_prod_without_a_step_column():
    table = deepest_prod(_spectra_summary().drop(columns="step"))
    assert list(table.columns[:2]) == ["model", "depth"] and len(table) == 2


def test_summary_table_joins_records_and_spectra():
    records = _records({"a": [100.0, 5.0, 1.0], "z": [1.0, 1.0]})
    response = pd.DataFrame(
        [
            {"model": "a", "step": 0, "depth": 1, "quantity": "response_std", "value": v}
            for v in (0.5, 2.0)
        ]
    )
    table = summary_table(pd.concat([records, response]), _spectra_summary())
    assert list(table.columns) == SUMMARY_COLUMNS
    a = table.set_index("model").loc["a"]
    assert a["blocks"] == 2 and a["grad_log10_ratio"] == pytest.approx(2.0)
    assert (a["response_std_min"], a["response_std_max"]) == (0.5, 2.0)
    assert a["prod_largest"] == pytest.approx(100.0) and a["prod_log10_condition"] == pytest.approx(
        3
    )
    z = table.set_index("model").loc["z"]
    assert z["grad_log10_ratio"] == 0.0 and np.isnan(z["response_std_min"])
    empty = summary_table(records, _spectra_summary().iloc[0:0])
    assert empty["prod_largest"].isna().all()


def test_spectra_summary_by_step_keeps_the_step():
    rows = []
    for step in (0, 5):
        for index, sigma in enumerate((3.0, 1.0)):
            rows.append({"model": "a", "depth": 1, "block": "b1", "operator": "prod", "sample": 0,
                         "index": index, "sigma": sigma * (1 + step), "dim": 2, "error": 0.0,
                         "mean_sq_estimate": 5.0, "converged": True, "method": "dense",
                         "step": step})  # fmt: skip
    table = spectra_summary_by_step(pd.DataFrame(rows))
    assert sorted(table["step"]) == [0, 5]
    assert table.set_index("step")["largest"].to_dict() == {0: 3.0, 5: 18.0}
    assert table.set_index("step")["smallest"].to_dict() == {0: 1.0, 5: 6.0}
