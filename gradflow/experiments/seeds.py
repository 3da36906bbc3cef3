"""Several seeds per run: the spread of a result, and when a difference is beyond it.

Tables with several seeds are long: one row per (model, seed). ``seed_table`` condenses
them to mean, standard deviation and the per-seed values; ``seed_difference`` applies the
rule below to two models; ``compare_seeds`` writes the report sentence (with one seed per
model it is ``reporting.compare``'s sentence, unchanged).

The rule: a difference between two models is **clear** when the two sets of per-seed values
do not overlap (every seed of one is above every seed of the other) *and* that separation is
unlikely by chance: if the seeds of both models were draws from one distribution, all n + m
values are exchangeable and a given complete separation has probability 1 / C(n + m, n) (the
exact one-sided Mann-Whitney test at U = 0; no distribution assumed). Clear means that
probability is at most ``ALPHA`` = 0.05: at 3 seeds per model it is exactly 1/20 = 0.05, the
smallest p-value 3 vs 3 seeds can give, so at 3 seeds the rule *is* the exact test; at 2 vs 2
(1/6) no difference can be clear. Anything else is **within noise**: the seeds' spread is as
large as the difference, and the comparison neither reproduces nor contradicts a finding. A
t-test was not chosen: at 3 seeds it leans on a normality that 3 values cannot check, and one
outlying seed moves it a lot; the range rule is what a reader sees in the figure's band.
"""

from __future__ import annotations

import argparse
from math import comb

import numpy as np
import pandas as pd

from .reporting import compare

ALPHA = 0.05  # largest chance probability of a separation called clear (see the module doc)


def seed_list(text: str) -> tuple[int, ...]:
    """``--seeds`` parser: "0,1,2" -> (0, 1, 2); distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2)"
        ) from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text!r}")
    return seeds


def seed_values(table: pd.DataFrame, model: str, column: str) -> pd.Series:
    """``column`` of ``model``'s rows, indexed by seed (one row per seed; missing dropped)."""
    rows = table[table.model == model]
    seeds = rows["seed"] if "seed" in rows else pd.Series(0, index=rows.index)
    return pd.Series(rows[column].to_numpy(float), index=seeds.to_numpy(), name=column).dropna()


def separation_p(n: int, m: int) -> float:
    """Chance probability of one given complete separation of n and m exchangeable values."""
    return 1 / comb(n + m, n)


def seed_difference(a: pd.Series, b: pd.Series) -> dict:
    """The rule of the module doc for per-seed values ``a`` and ``b``: ``call`` is "higher"
    or "lower" (a than b, clearly) or "within noise"; with the means, stds, ranges and p."""
    n, m = len(a), len(b)
    p = separation_p(n, m)
    separated = "higher" if a.min() > b.max() else "lower" if a.max() < b.min() else None
    clear = separated is not None and p <= ALPHA
    return {
        "n": n, "m": m, "mean": float(a.mean()), "other_mean": float(b.mean()),
        "std": float(a.std(ddof=1)) if n > 1 else np.nan,
        "other_std": float(b.std(ddof=1)) if m > 1 else np.nan,
        "range": (float(a.min()), float(a.max())), "other_range": (float(b.min()), float(b.max())),
        "separated": separated, "p": p, "call": separated if clear else "within noise",
    }  # fmt: skip


def _values(series: pd.Series, unit: str) -> str:
    return "/".join(f"{v:.3g}" for v in series) + unit


def compare_seeds(table: pd.DataFrame, subject: str, other: str, column: str, **options) -> str:
    """``compare``'s sentence for two models of a long (model, seed) ``table``; with several
    seeds, on the means, with the per-seed values, and "within noise" unless the rule (module
    doc) calls the difference clear. ``options``: those of ``compare``."""
    a, b = seed_values(table, subject, column), seed_values(table, other, column)
    if len(a) <= 1 and len(b) <= 1:
        return compare(subject, float(a.iloc[0]), other, float(b.iloc[0]), **options)
    rule = seed_difference(a, b)
    unit, expected = options.get("unit", "%"), options.get("expected")
    quantity, verb = options["quantity"], options.get("verb", "ends with")
    relation = (
        "the same"
        if rule["mean"] == rule["other_mean"]
        else "a higher"
        if rule["mean"] > rule["other_mean"]
        else "a lower"
    )
    numbers = (
        f"mean {rule['mean']:.3g}{unit} vs {rule['other_mean']:.3g}{unit} over "
        f"{rule['n']} and {rule['m']} seeds; per seed {_values(a, unit)} vs {_values(b, unit)}"
    )
    than = "as" if relation == "the same" else "than"
    head = f"{subject} {verb} {relation} mean {quantity} {than} {other} ({numbers})"
    paper, budget = options["paper"], options.get("budget", "at this scale")
    source = options.get("source", "paper")
    if rule["call"] == "within noise":
        why = (
            "the seeds' ranges overlap"
            if rule["separated"] is None
            else f"separated, but at these seed counts chance separates them with p = "
            f"{rule['p']:.2g} > {ALPHA}"
        )
        claim = "" if expected is None else "; it neither reproduces nor contradicts the finding"
        return f"{head}: within noise ({why}){claim} ({paper})."
    beyond = f"beyond the seeds' spread (ranges apart, p = {rule['p']:.2g})"
    if expected is None:
        return f"{head}, {beyond}; {paper}."
    holds = rule["call"] == expected
    verdict = (
        ("as in the paper" if holds else f"the paper's finding is not reproduced {budget}")
        if source == "paper"
        else ("as expected" if holds else f"the expectation does not hold {budget}")
    )
    return f"{head}: {verdict}, {beyond} ({paper})."


def seed_table(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per model of a long (model, seed) ``table``: its seeds, and for each of
    ``columns`` the mean, the standard deviation over seeds (ddof 1) and the per-seed values
    ("a / b / c", in seed order)."""
    rows = []
    for model, part in table.groupby("model", sort=False):
        part = part.sort_values("seed")
        row = {"model": model, "seeds": ",".join(map(str, part.seed))}
        for column in columns:
            values = part[column].astype(float)
            row[f"{column}_mean"] = values.mean()
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{column}_per_seed"] = " / ".join(f"{v:.3g}" for v in values)
        rows.append(row)
    return pd.DataFrame(rows)


def errors_by_seed(
    table: pd.DataFrame, columns: tuple[str, ...] = ("train_error", "test_error")
) -> pd.DataFrame:
    """A report's table of final errors: the per-run rows for one seed; for several,
    ``seed_table`` of ``columns`` (mean, std and per-seed values)."""
    if table.seed.nunique() <= 1:
        return table
    return seed_table(table, list(columns))


def seeds_paragraph(seeds: tuple[int, ...]) -> list[str]:
    """What a report with several seeds shows and how it decides (nothing for one seed)."""
    if len(seeds) <= 1:
        return []
    return [
        f"Seeds {', '.join(map(str, seeds))} (initial weights, data order, augmentation): "
        "each line is the mean over seeds and its band spans the seeds' minimum to maximum; "
        "tables give the mean, the standard deviation over seeds (ddof 1) and the per-seed "
        "values in seed order. A difference is called clear only when the two models' "
        "per-seed values do not overlap and such a separation has chance probability "
        f"1 / C(n + m, n) <= {ALPHA} (the exact one-sided Mann-Whitney test; 1/20 at 3 "
        "seeds each); otherwise it is within noise (gradflow/experiments/seeds.py)."
    ]


def seed_frames(
    table: pd.DataFrame, columns: tuple[str, ...] = ("train_error", "test_error")
) -> dict[str, pd.DataFrame]:
    """The extra CSV of a report with several seeds: {"seed_summary": ``seed_table``}."""
    return {} if table.seed.nunique() <= 1 else {"seed_summary": seed_table(table, list(columns))}
