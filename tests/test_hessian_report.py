"""The hessian_spectra report's "Compared with the literature" sentences follow the numbers:
supported, against, or not resolved by the error bars, with a tally that counts them."""

from __future__ import annotations

import pandas as pd

from gradflow.experiments.hessian_spectra import comparisons


def _summary() -> pd.DataFrame:
    rows = [  # model, step, top, bound, trace, se, outliers
        ("plain20", 0, 50.0, 0.1, 900.0, 10.0, 40.0),
        ("resnet20", 0, 20.0, 0.1, 1000.0, 10.0, 5.0),  # top lower (resolved), trace higher
        ("plain20", 300, 30.0, 8.0, 500.0, 100.0, 3.0),
        ("resnet20", 300, 25.0, 8.0, -50.0, 10.0, 9.0),  # top within error; more outliers
    ]
    columns = ["model", "step", "top_eigenvalue", "top_bound", "trace", "trace_se",
               "outliers_slq"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_comparisons_follow_the_numbers_and_error_bars():
    lines = comparisons(_summary())
    top0, trace0, out0, top300, trace300, out300, tally, negative = lines
    assert "lower top Hessian eigenvalue than plain20 (20 vs 50): as the literature" in top0
    assert "does not resolve" not in top0
    assert "higher Hessian trace than plain20 (1e+03 vs 900)" in trace0
    assert "does not support the literature" in trace0
    assert "as the literature finds" in out0
    assert "after 300 iterations" in top300 and "does not resolve it" in top300
    assert "does not resolve" not in trace300  # 550 apart, errors ~100
    assert "does not support the literature" in out300
    assert tally.startswith("In sum, of 6 comparisons")
    assert "supports the literature in 3" in tally and "goes against it in 2" in tally
    assert "cannot resolve 1 (top Hessian eigenvalue of resnet20 vs plain20 at step 300)" in tally
    assert negative.startswith("Negative traces (resnet20 at step 300)")
