"""Paper Figure 1: plain-20 vs plain-56, training and test error vs iterations.

He et al. (2016) show that the deeper plain net has the higher training error (and hence
test error) throughout training on CIFAR-10: the degradation problem. This script trains
both with the paper's recipe at the chosen scale and says whether that is reproduced.
"""

from __future__ import annotations

from gradflow.report import Section, training_curves_figure

from .common import Experiment, compare_rows, experiment_main

PAPER_FIGURE_1 = "paper Figure 1: plain-56 has higher training and test error than plain-20"


def share_above(history, deeper: str, shallower: str, split: str) -> tuple[int, int]:
    """At how many of the logged iterations ``deeper``'s error is above ``shallower``'s."""
    rows = history[(history.quantity == "error") & (history.split == split)]
    wide = rows.pivot_table(index="step", columns="model", values="value")
    return int((wide[deeper] > wide[shallower]).sum()), len(wide)


@experiment_main("fig1")
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    results, history, table = experiment.train_all()
    shallow, deep = list(results)
    final = table.set_index("model")
    above, logged = share_above(history, deep, shallow, "train")
    comparisons = [
        compare_rows(final, deep, shallow, "train_error", quantity="training error",
                     expected="higher", paper=PAPER_FIGURE_1),
        compare_rows(final, deep, shallow, "test_error", quantity="test error",
                     expected="higher", paper=PAPER_FIGURE_1),
        f"{deep}'s training error is above {shallow}'s at {above} of {logged} logged "
        f"iterations: {'throughout, as' if above == logged else 'not throughout, unlike'} "
        "in the paper (Figure 1).",
    ]  # fmt: skip
    section = Section(
        "Training and test error (Figure 1 layout)",
        paragraphs=[
            "Thin lines: training error (running average over the augmented batches since the "
            "previous point, BN in train mode); bold lines: test error (whole test set, BN in "
            "eval mode). The lr is divided by 10 at 50% and 75% of the budget."
        ],
        table=table,
        figures=[
            (
                "training_curves",
                training_curves_figure(history, {"plain nets": [shallow, deep]}),
                "Training (thin) and test (bold) error of the plain nets vs iterations.",
            )
        ],
    )
    experiment.write_report(
        "Figure 1: degradation of deeper plain nets",
        [section],
        {"history": history, "final_errors": table},
        comparisons,
    )
