"""Several seeds: the within-noise rule, the seed column, the spread table and the band."""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from torch import nn

from gradflow.errors import UserInputError
from gradflow.experiments import common, seed_spread
from gradflow.experiments.reporting import compare, final_errors, histories
from gradflow.experiments.seeds import (
    compare_seeds,
    seed_difference,
    seed_list,
    seed_table,
    separation_p,
)
from gradflow.figures import training_curves_figure
from gradflow.train import TrainConfig, TrainResult

PAPER = "the paper finds it lower"


def _table(values: dict[str, list[float]], column: str = "train_error") -> pd.DataFrame:
    """A long (model, seed) table of final errors from model -> per-seed values."""
    rows = [{"model": model, "seed": seed, column: value}
            for model, seeds in values.items() for seed, value in enumerate(seeds)]  # fmt: skip
    return pd.DataFrame(rows)


def _sentence(values: dict[str, list[float]]) -> str:
    return compare_seeds(_table(values), "resnet", "plain", "train_error",
                         quantity="training error", expected="lower", paper=PAPER)  # fmt: skip


# ----------------------------------------------------------------------------- the rule
def test_separation_probability_is_one_over_the_number_of_splits():
    assert separation_p(3, 3) == pytest.approx(1 / 20)  # C(6, 3) = 20
    assert separation_p(2, 2) == pytest.approx(1 / 6)
    assert separation_p(3, 4) == pytest.approx(1 / 35)


def test_rule_calls_apart_ranges_clear_and_overlapping_ones_within_noise():
    win = seed_difference(pd.Series([20.0, 21.0, 22.5]), pd.Series([30.0, 31.0, 29.0]))
    assert win["call"] == "lower" and win["p"] == pytest.approx(0.05)
    assert win["mean"] == pytest.approx(21.1666667) and win["other_mean"] == pytest.approx(30.0)
    assert win["std"] == pytest.approx(np.std([20, 21, 22.5], ddof=1))
    loss = seed_difference(pd.Series([40.0, 41.0, 39.5]), pd.Series([30.0, 31.0, 29.0]))
    assert loss["call"] == "higher"
    # a 3-point mean difference, but seed 2 of the first lies inside the second's range
    noise = seed_difference(pd.Series([27.0, 28.0, 30.5]), pd.Series([30.0, 31.0, 32.0]))
    assert noise["mean"] < noise["other_mean"] and noise["call"] == "within noise"
    assert noise["separated"] is None
    touching = seed_difference(pd.Series([28.0, 29.0, 30.0]), pd.Series([30.0, 31.0, 32.0]))
    assert touching["call"] == "within noise"  # equal values overlap


def test_two_seeds_each_cannot_make_a_separation_clear():
    rule = seed_difference(pd.Series([1.0, 2.0]), pd.Series([10.0, 11.0]))
    assert rule["separated"] == "lower" and rule["p"] == pytest.approx(1 / 6)
    assert rule["call"] == "within noise"


def test_sentences_say_reproduced_not_reproduced_or_within_noise():
    win = _sentence({"resnet": [20, 21, 22.5], "plain": [30, 31, 29]})
    assert "as in the paper, beyond the seeds' spread" in win and "p = 0.05" in win
    assert "mean 21.2% vs 30%" in win and "per seed 20/21/22.5% vs 30/31/29%" in win
    loss = _sentence({"resnet": [40, 41, 39.5], "plain": [30, 31, 29]})
    assert "not reproduced at this scale, beyond the seeds' spread" in loss
    noise = _sentence({"resnet": [27, 28, 30.5], "plain": [30, 31, 32]})
    assert "within noise (the seeds' ranges overlap)" in noise
    assert "as in the paper" not in noise and "not reproduced" not in noise


def test_one_seed_per_model_keeps_the_single_run_sentence():
    one = _sentence({"resnet": [20.0], "plain": [30.0]})
    assert one == compare("resnet", 20.0, "plain", 30.0, quantity="training error",
                          expected="lower", paper=PAPER)  # fmt: skip
    assert "as in the paper" in one


# ----------------------------------------------------------------------------- the tables
def _result(model: str, seed: int, train: list[float], test: list[float]) -> TrainResult:
    steps = [10 * (i + 1) for i in range(len(train))]
    rows = [{"model": model, "step": s, "split": split, "quantity": "error", "value": v}
            for split, values in (("train", train), ("test", test))
            for s, v in zip(steps, values, strict=True)]  # fmt: skip
    config = TrainConfig(model=model, seed=seed)
    return TrainResult(pd.DataFrame(rows), pd.DataFrame(), nn.Linear(2, 3), config)


def test_histories_and_final_errors_carry_each_runs_seed():
    runs = {"plain20": _result("plain20", 2, [50, 40], [45, 38])}
    history, table = histories(runs), final_errors(runs)
    assert set(history.seed) == {2} and len(history) == 4
    assert table.loc[0, "seed"] == 2 and table.loc[0, "train_error"] == 40
    assert table.loc[0, "test_error"] == 38 and table.loc[0, "params"] == 9


def test_seed_table_gives_mean_std_and_per_seed_values_in_seed_order():
    table = pd.DataFrame({"model": ["a", "a", "a", "b"], "seed": [2, 0, 1, 0],
                          "train_error": [30.0, 10.0, 20.0, 5.0]})  # fmt: skip
    summary = seed_table(table, ["train_error"]).set_index("model")
    assert summary.at["a", "seeds"] == "0,1,2"
    assert summary.at["a", "train_error_mean"] == pytest.approx(20.0)
    assert summary.at["a", "train_error_std"] == pytest.approx(10.0)  # ddof 1
    assert summary.at["a", "train_error_per_seed"] == "10 / 20 / 30"
    assert np.isnan(summary.at["b", "train_error_std"])


def test_seed_spread_differences_table_applies_the_rule_per_claim():
    table = pd.concat([
        _table({"plain20": [20, 21, 22], "plain56": [40, 45, 50]}, "train_error"),
        _table({"plain20": [20, 21, 22], "plain56": [21, 19, 30]}, "test_error")["test_error"],
    ], axis=1)  # fmt: skip
    calls = seed_spread.differences(table).set_index("quantity")
    assert list(calls.index) == ["train_error", "test_error"]  # only claims with both models
    assert calls.at["train_error", "call"] == "higher"
    assert calls.at["train_error", "difference"] == pytest.approx(24.0)
    assert calls.at["test_error", "call"] == "within noise"


# ----------------------------------------------------------------------------- the figure
def _history(seeds: list[int]) -> pd.DataFrame:
    results = {f"plain20-{s}": _result("plain20", s, [50 + s, 40 + 2 * s], [45 - s, 38])
               for s in seeds}  # fmt: skip
    return histories(results)


def test_training_curves_draw_the_mean_and_a_band_over_seeds():
    fig = training_curves_figure(_history([0, 1, 2]))
    ax = fig.axes[0]
    train, test = ax.lines[:2]
    np.testing.assert_allclose(train.get_ydata(), [51, 42])  # means of 50/51/52 and 40/42/44
    np.testing.assert_allclose(test.get_ydata(), [44, 38])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one per line
    low, high = (
        bands[0].get_paths()[0].vertices[:, 1].min(),
        bands[0].get_paths()[0].vertices[:, 1].max(),
    )
    assert (low, high) == (40, 52)  # train: min 40 (seed 0, step 20), max 52 (seed 2, step 10)
    assert "range over seeds" in ax.get_legend().get_title().get_text()
    plt.close(fig)


def test_training_curves_of_one_seed_have_no_band():
    fig = training_curves_figure(_history([0]))
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [50, 40])
    plt.close(fig)


# ----------------------------------------------------------------------------- the option
def test_seeds_option_parses_lists_and_rejects_bad_ones():
    assert seed_list("0,1,2") == (0, 1, 2)
    for bad in ("0,x", "1,1", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)


def test_seed_and_seeds_resolve_to_one_tuple(capsys):
    args = common.parse_args("fig1_degradation.py", "", ["--seeds", "3,1"], seeds=(0,))
    assert args.seeds == (3, 1) and args.seed == 3
    assert common.parse_args("fig1_degradation.py", "", ["--seed", "4"]).seeds == (4,)
    spread = common.parse_args("seed_spread.py", "", [], seeds=(0, 1, 2))
    assert spread.seeds == (0, 1, 2) and spread.seed == 0
    assert common.parse_args("fig7_response_std.py", "", []).seeds == (0,)
    with pytest.raises(SystemExit) as both:
        common.parse_args("fig1_degradation.py", "", ["--seed", "1", "--seeds", "0,1"], seeds=(0,))
    assert both.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="reports one seed"):
        common.parse_args("fig7_response_std.py", "", ["--seeds", "0,1"])


def test_plan_lists_every_seed_of_every_run(tmp_path, capsys):
    argv = ["--scale", "smoke", "--seeds", "0,5", "--cache", str(tmp_path), "--plan"]
    seed_spread.main(argv)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:] if line.split()[:1] != ["estimated"]]
    assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
        (m, i, s) for m, i in [("plain20", "he"), ("resnet20", "he"), ("plain56", "he"),
                               ("resnet56", "he"), ("resnet56", "zero_gamma")]
        for s in ("0", "5")
    )  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing trained
