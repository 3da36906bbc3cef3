"""lesion_study's summary: how far one block removal takes a net toward chance."""

from __future__ import annotations

import pandas as pd
import pytest

from gradflow.experiments.lesion_study import _comparisons, _summary


def _frame(model: str, intact: float, singles: list[float], k2: list[float]) -> pd.DataFrame:
    rows = [{"model": model, "k": 0, "draw": 0, "stage": pd.NA, "block": pd.NA, "error": intact}]
    rows += [{"model": model, "k": 1, "draw": 0, "stage": 1, "block": i + 1, "error": e}
             for i, e in enumerate(singles)]  # fmt: skip
    rows += [{"model": model, "k": 2, "draw": d, "stage": pd.NA, "block": pd.NA, "error": e}
             for d, e in enumerate(k2)]  # fmt: skip
    return pd.DataFrame(rows).astype({"stage": "Int64", "block": "Int64"})


def test_plain_net_that_breaks_and_residual_net_that_degrades_smoothly():
    frame = pd.concat([_frame("plain20", 10, [88, 85, 50], [89, 90]),
                       _frame("resnet20", 10, [12, 14, 20], [20, 30])])  # fmt: skip
    table = _summary(frame, chance=90.0).set_index("model")
    assert table.at["plain20", "near_chance_share"] == pytest.approx(200 / 3)  # 88, 85 >= 80
    assert table.at["resnet20", "near_chance_share"] == 0
    assert table.at["plain20", "gap_closed"] == pytest.approx((223 / 3 - 10) / 80)
    assert table.at["resnet20", "gap_closed"] == pytest.approx((46 / 3 - 10) / 80)
    assert table.at["resnet20", "k2_mean_error"] == 25
    lines = _comparisons(table)
    share = next(line for line in lines if "within 10 points of chance" in line)
    assert share.startswith("resnet20 has a lower share") and "as in the paper" in share
    gap = next(line for line in lines if "gap from its intact error" in line)
    assert "0.0667 vs 0.804" in gap and "as in the paper" in gap
