"""Seed spread: the depth comparisons of Figures 1 and 6 and the zero-gamma pair over seeds.

plain vs ResNet at 20 and 56 layers and ResNet-56 with he vs zero-gamma init, each trained
with several seeds (default 0, 1, 2) by the paper's recipe at the chosen scale. Every
difference the other reports read off one seed is recomputed here on the seeds' mean, and
called clear or within noise by the rule of ``gradflow/experiments/seeds.py``: clear when
the per-seed values do not overlap and such a separation has chance probability <= 0.05.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from gradflow.report import Section, paper_style, training_curves_figure

from .common import Experiment, experiment_main, shown
from .seeds import (
    compare_seeds,
    seed_difference,
    seed_table,
    seed_values,
    seeds_paragraph,
)

SEEDS = (0, 1, 2)
FIGURE_1 = "paper Figure 1: plain-56 has higher training and test error than plain-20"
FIGURE_6 = "paper Figure 6"
GOYAL = "Goyal et al. 2017 zero the last BN gamma of each residual block; no CIFAR number"
# (subject, other, column, expected direction of subject vs other or None, the claim)
CLAIMS = (
    ("plain56", "plain20", "train_error", "higher", FIGURE_1),
    ("plain56", "plain20", "test_error", "higher", FIGURE_1),
    ("resnet20", "plain20", "train_error", "lower",
     f"{FIGURE_6}: a ResNet trains better than its plain counterpart"),
    ("resnet56", "plain56", "train_error", "lower",
     f"{FIGURE_6}: a ResNet trains better than its plain counterpart"),
    ("resnet56", "resnet20", "train_error", "lower",
     f"{FIGURE_6} middle: deeper ResNets have lower training error"),
    ("resnet56", "resnet20", "test_error", "lower",
     "Table 6: ResNet-20 8.75%, ResNet-56 6.97% on CIFAR-10"),
    ("resnet56 zero_gamma", "resnet56", "train_error", None, GOYAL),
    ("resnet56 zero_gamma", "resnet56", "test_error", None, GOYAL),
)  # fmt: skip
QUANTITY = {"train_error": "training error", "test_error": "test error"}


def differences(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of CLAIMS present in ``table``: both means, their difference, the
    per-seed ranges, the chance probability of the separation and the rule's call."""
    rows = []
    for subject, other, column, expected, _ in CLAIMS:
        if not {subject, other} <= set(table.model):
            continue
        rule = seed_difference(
            seed_values(table, subject, column), seed_values(table, other, column)
        )
        rows.append(
            {"subject": subject, "other": other, "quantity": column, "expected": expected,
             "subject_mean": rule["mean"], "other_mean": rule["other_mean"],
             "difference": rule["mean"] - rule["other_mean"],
             "subject_range": "{:.3g}-{:.3g}".format(*rule["range"]),
             "other_range": "{:.3g}-{:.3g}".format(*rule["other_range"]),
             "seeds": f"{rule['n']} vs {rule['m']}", "p_separation": rule["p"],
             "call": rule["call"]}
        )  # fmt: skip
    return pd.DataFrame(rows)


def final_errors_figure(table: pd.DataFrame) -> plt.Figure:
    """Final training and test error per model: one dot per seed, a bar at the mean."""
    paper_style()
    long = table.melt(id_vars=["model", "seed"], value_vars=list(QUANTITY), var_name="split",
                      value_name="error")  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (column, title) in zip(axes, QUANTITY.items(), strict=True):
        data = long[long.split == column]
        sns.stripplot(data=data, x="model", y="error", hue="seed", ax=ax, size=6, jitter=0.12,
                      palette="dark", legend=ax is axes[0])  # fmt: skip
        means = data.groupby("model", sort=False).error.mean()
        ax.scatter(range(len(means)), means.to_numpy(), marker="_", s=900, color="0.2",
                   zorder=3, label=None)  # fmt: skip
        ax.set_title(f"final {title} (dots: seeds, bar: mean)")
        ax.set_xlabel("")
        ax.set_ylabel("error (%)")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


@experiment_main("seed_spread", seeds=SEEDS)
def main(experiment: Experiment) -> None:
    """Train or load every model with every seed, apply the rule, write the report."""
    results, history, table = experiment.train_all()
    comparisons = [
        compare_seeds(table, subject, other, column, quantity=QUANTITY[column],
                      expected=expected, paper=paper)
        for subject, other, column, expected, paper in CLAIMS
        if {subject, other} <= set(table.model)
    ]  # fmt: skip
    summary = seed_table(table, list(QUANTITY))
    calls = differences(table)
    panels = {
        "plain nets": [m for m in ("plain20", "plain56") if m in results],
        "ResNets": [m for m in ("resnet20", "resnet56") if m in results],
        "ResNet-56 init": [m for m in ("resnet56", "resnet56 zero_gamma") if m in results],
    }
    sections = [
        Section(
            "Final errors over seeds",
            paragraphs=[
                *seeds_paragraph(experiment.seeds),
                "Errors in %, the last logged value of each run (training error: running "
                "average over the batches since the previous point, BN in train mode; test "
                "error: the whole test set, BN in eval mode).",
            ],
            table=shown(summary),
            figures=[
                (
                    "final_errors",
                    final_errors_figure(table),
                    "Final training and test error, one dot per seed.",
                )
            ],
        ),
        Section(
            "The differences and the rule's call",
            paragraphs=[
                "difference = subject_mean - other_mean; p_separation = 1 / C(n + m, n), the "
                "chance probability that the subject's seeds all fall on the observed side of "
                "the other's; call: higher / lower (clear: ranges apart and p_separation <= "
                "0.05) or within noise. expected: the direction the paper finds (empty: the "
                "literature makes no claim to check)."
            ],
            table=shown(calls),
        ),
        Section(
            "Training curves",
            paragraphs=["Thin: training error, bold: test error; mean over seeds, band: range."],
            figures=[
                (
                    "training_curves",
                    training_curves_figure(history, panels),
                    "Training (thin) and test (bold) error vs iterations, mean and range "
                    "over seeds.",
                )
            ],
        ),
    ]
    experiment.write_report(
        "Seed spread: plain vs ResNet-20/56 and zero-gamma ResNet-56 over seeds",
        sections,
        {
            "history": history,
            "final_errors": table,
            "seed_summary": summary,
            "differences": calls,
        },
        comparisons,
    )
