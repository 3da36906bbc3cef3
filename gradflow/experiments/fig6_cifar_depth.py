"""Paper Figure 6 / Table 6: plain and residual CIFAR nets of depth 20, 32, 44, 56 (110).

He et al. (2016): deeper plain nets have higher training error, deeper ResNets lower; at
equal depth the ResNet is better. Table 6 lists the ResNets' test errors on CIFAR-10.
"""

from __future__ import annotations

from gradflow.report import Section, training_curves_figure

from .common import Experiment, experiment_main, shown
from .seeds import compare_seeds, errors_by_seed, seed_frames, seeds_paragraph

# Table 6, CIFAR-10 test error (%) after 64k iterations (ResNet-110: best of 5 runs)
PAPER_TABLE_6 = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
}
FIGURE_6 = "paper Figure 6"


def paper_column(table):
    """``table`` with Table 6's CIFAR-10 test error of each model (NaN where it has none)."""
    return table.assign(paper_test_error_cifar10=table.model.map(PAPER_TABLE_6))


@experiment_main("fig6", seeds=(0,))
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    results, history, table = experiment.train_all()
    table = paper_column(table)
    plain = [m for m in results if m.startswith("plain")]
    resnet = [m for m in results if m.startswith("resnet")]
    shallow, deep = plain[0], plain[-1]
    comparisons = [
        compare_seeds(table, deep, shallow, "train_error", quantity="training error",
                      expected="higher",
                      paper=f"{FIGURE_6} left: deeper plain nets have higher training error"),
        compare_seeds(table, resnet[-1], resnet[0], "train_error", quantity="training error",
                      expected="lower",
                      paper=f"{FIGURE_6} middle: deeper ResNets have lower training error"),
        compare_seeds(table, resnet[-1], resnet[0], "test_error", quantity="test error",
                      expected="lower",
                      paper=f"Table 6: {resnet[0]} {PAPER_TABLE_6.get(resnet[0])}%, "
                      f"{resnet[-1]} {PAPER_TABLE_6.get(resnet[-1])}% on CIFAR-10"),
    ]  # fmt: skip
    for plain_net in plain:
        residual = plain_net.replace("plain", "resnet")
        if residual in set(table.model):
            comparisons.append(compare_seeds(
                table, residual, plain_net, "train_error", quantity="training error",
                expected="lower",
                paper=f"{FIGURE_6}: a ResNet trains better than its plain counterpart",
            ))  # fmt: skip
    panels = {"plain nets": plain, "ResNets": resnet}
    section = Section(
        "Training and test error vs depth (Figure 6 layout, Table 6 numbers)",
        paragraphs=[
            "Thin lines: training error (running average since the previous point); bold "
            "lines: test error. One colour per depth; plain nets left, ResNets right. The "
            "paper's column is its CIFAR-10 result after 64k iterations: a reference for the "
            "ordering, not a number this scale can match.",
            *seeds_paragraph(experiment.seeds),
        ],
        table=shown(paper_column(errors_by_seed(table))),
        figures=[
            (
                "training_curves",
                training_curves_figure(history, panels),
                "Training (thin) and test (bold) error vs iterations, plain and residual.",
            )
        ],
    )
    experiment.write_report(
        "Figure 6 / Table 6: plain and residual nets of increasing depth",
        [section],
        {"history": history, "final_errors": table, **seed_frames(table)},
        comparisons,
    )
