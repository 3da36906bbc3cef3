"""Paper Figure 6 / Table 6: plain and residual CIFAR nets of depth 20, 32, 44, 56 (110).

He et al. (2016): deeper plain nets have higher training error, deeper ResNets lower; at
equal depth the ResNet is better. Table 6 lists the ResNets' test errors on CIFAR-10.
"""

from __future__ import annotations

from gradflow.report import Section, training_curves_figure

from .common import Experiment, compare_rows, experiment_main, shown

# Table 6, CIFAR-10 test error (%) after 64k iterations (ResNet-110: best of 5 runs)
PAPER_TABLE_6 = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
}
FIGURE_6 = "paper Figure 6"


@experiment_main("fig6")
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    results, history, table = experiment.train_all()
    table["paper_test_error_cifar10"] = table.model.map(PAPER_TABLE_6)
    final = table.set_index("model")
    plain = [m for m in results if m.startswith("plain")]
    resnet = [m for m in results if m.startswith("resnet")]
    shallow, deep = plain[0], plain[-1]
    comparisons = [
        compare_rows(final, deep, shallow, "train_error", quantity="training error",
                     expected="higher",
                     paper=f"{FIGURE_6} left: deeper plain nets have higher training error"),
        compare_rows(final, resnet[-1], resnet[0], "train_error", quantity="training error",
                     expected="lower",
                     paper=f"{FIGURE_6} middle: deeper ResNets have lower training error"),
        compare_rows(final, resnet[-1], resnet[0], "test_error", quantity="test error",
                     expected="lower",
                     paper=f"Table 6: {resnet[0]} {PAPER_TABLE_6.get(resnet[0])}%, "
                     f"{resnet[-1]} {PAPER_TABLE_6.get(resnet[-1])}% on CIFAR-10"),
    ]  # fmt: skip
    for plain_net in plain:
        residual = plain_net.replace("plain", "resnet")
        if residual in final.index:
            comparisons.append(compare_rows(
                final, residual, plain_net, "train_error", quantity="training error",
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
            "ordering, not a number this scale can match."
        ],
        table=shown(table),
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
        {"history": history, "final_errors": table},
        comparisons,
    )
