"""Paper Figure 1: plain-20 vs plain-56, training and test error vs iterations.

He et al. (2016) show that the deeper plain net has the higher training error (and hence
test error) throughout training on CIFAR-10: the degradation problem. This script trains
both with the paper's recipe at the chosen scale and says whether that is reproduced.
"""

from __future__ import annotations

from gradflow.report import Section, training_curves_figure

from .common import Experiment, experiment_main, shown
from .seeds import compare_seeds, errors_by_seed, seed_frames, seeds_paragraph

PAPER_FIGURE_1 = "paper Figure 1: plain-56 has higher training and test error than plain-20"


def share_above(history, deeper: str, shallower: str, split: str) -> tuple[int, int]:
    """At how many of the logged iterations ``deeper``'s error is above ``shallower``'s (one
    seed's history)."""
    rows = history[(history.quantity == "error") & (history.split == split)]
    wide = rows.pivot_table(index="step", columns="model", values="value")
    return int((wide[deeper] > wide[shallower]).sum()), len(wide)


def throughout(history, deeper: str, shallower: str) -> str:
    """The sentence: is ``deeper``'s training error above ``shallower``'s at every logged
    iteration, for every seed of ``history``?"""
    seeds = sorted(history.seed.unique()) if "seed" in history else [None]
    counts = [
        share_above(history if seed is None else history[history.seed == seed], deeper,
                    shallower, "train")
        for seed in seeds
    ]  # fmt: skip
    every = all(above == logged for above, logged in counts)
    verdict = "throughout, as" if every else "not throughout, unlike"
    if len(counts) == 1:
        above, logged = counts[0]
        return (f"{deeper}'s training error is above {shallower}'s at {above} of {logged} "
                f"logged iterations: {verdict} in the paper (Figure 1).")  # fmt: skip
    per_seed = ", ".join(f"seed {s}: {a} of {n}" for s, (a, n) in zip(seeds, counts, strict=True))
    verdict = "throughout in every seed, as" if every else "not throughout in every seed, unlike"
    return (f"{deeper}'s training error is above {shallower}'s at {per_seed} logged "
            f"iterations: {verdict} in the paper (Figure 1).")  # fmt: skip


@experiment_main("fig1", seeds=(0,))
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    results, history, table = experiment.train_all()
    shallow, deep = list(results)
    comparisons = [
        compare_seeds(table, deep, shallow, "train_error", quantity="training error",
                      expected="higher", paper=PAPER_FIGURE_1),
        compare_seeds(table, deep, shallow, "test_error", quantity="test error",
                      expected="higher", paper=PAPER_FIGURE_1),
        throughout(history, deep, shallow),
    ]  # fmt: skip
    section = Section(
        "Training and test error (Figure 1 layout)",
        paragraphs=[
            "Thin lines: training error (running average over the augmented batches since the "
            "previous point, BN in train mode); bold lines: test error (whole test set, BN in "
            "eval mode). The lr is divided by 10 at 50% and 75% of the budget.",
            *seeds_paragraph(experiment.seeds),
        ],
        table=shown(errors_by_seed(table)),
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
        {"history": history, "final_errors": table, **seed_frames(table)},
        comparisons,
    )
