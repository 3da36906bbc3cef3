"""Paper Figure 4: ImageNet-style plain-18/34 vs ResNet-18/34, at a reduced size.

He et al. (2016) train on ImageNet at 224 x 224: plain-34 has higher training error than
plain-18 throughout, ResNet-34 lower than ResNet-18, and ResNets converge faster early on.
ImageNet does not fit this machine (nor 224 x 224 inputs in 45 minutes), so the same
networks (7x7/2 stem + 3x3/2 max pool, four stages of basic blocks, option-A shortcuts) are
trained on small images with the CIFAR recipe; the report says exactly what was reduced.
"""

from __future__ import annotations

import torch

from gradflow.report import Section, training_curves_figure

from .common import Experiment, compare_rows, experiment_main, shown

# Table 2, ImageNet top-1 error (%, 10-crop testing)
PAPER_TABLE_2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}
FIGURE_4 = "paper Figure 4"


def map_sizes(model: torch.nn.Module, channels: int, size: int) -> list[int]:
    """Side of the feature maps after the stem and after each stage, for one input."""
    with torch.no_grad():
        z = model.eval().forward_stem(torch.zeros(1, channels, size, size))
        sizes = [z.shape[-1]]
        for stage in model.stages():
            z = stage(z)
            sizes.append(z.shape[-1])
    model.train()
    return sizes


def reductions(experiment: Experiment, model: torch.nn.Module) -> str:
    """What differs from the paper's ImageNet setting, in one paragraph."""
    data, scale = experiment.dataset("test"), experiment.scale
    stem, *stages = map_sizes(model, data.channels, data.image_size)
    return (
        f"Reduced from the paper's setting: input {data.channels} x {data.image_size} x "
        f"{data.image_size} ({data.name}, {data.num_classes} classes) instead of 3 x 224 x 224 "
        f"ImageNet crops with 1000 classes; so the stem leaves {stem} x {stem} maps (paper: "
        f"56 x 56) and the four stages work on {' / '.join(f'{s} x {s}' for s in stages)} "
        f"(paper: 56 / 28 / 14 / 7). {scale.imagenet_iterations} iterations of batch "
        f"{scale.batch_size} (paper: 60e4 of batch 256), lr 0.1 divided by 10 at 50% and 75% "
        "of the budget (paper: on plateaus), 4-pixel pad + random crop + flip (paper: scale "
        "and colour augmentation), single-crop test error (paper: 10-crop). Architecture, "
        "option-A shortcuts, BN, He init, momentum and weight decay are the paper's."
    )


@experiment_main("fig4")
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    results, history, table = experiment.train_all()
    table["paper_top1_imagenet"] = table.model.map(PAPER_TABLE_2)
    final = table.set_index("model")
    train = history[(history.quantity == "error") & (history.split == "train")]
    first = train[train.step == train.step.min()].set_index("model").value
    final["first_train_error"] = first
    comparisons = [
        compare_rows(final, "plain34", "plain18", "train_error", quantity="training error",
                     expected="higher",
                     paper=f"{FIGURE_4} left: plain-34 has higher training error than plain-18"),
        compare_rows(final, "resnet34", "resnet18", "train_error", quantity="training error",
                     expected="lower",
                     paper=f"{FIGURE_4} right: ResNet-34 has lower training error than ResNet-18"),
        compare_rows(final, "resnet34", "plain34", "test_error", quantity="test error",
                     expected="lower",
                     paper="Table 2: top-1 error 25.03% (ResNet-34) vs 28.54% (plain-34)"),
    ] + [
        compare_rows(final, f"resnet{depth}", f"plain{depth}", "first_train_error",
                     quantity="training error at the first logged iteration", expected="lower",
                     verb="has", paper=f"{FIGURE_4}: ResNets converge faster early on")
        for depth in ("18", "34")
    ]  # fmt: skip
    section = Section(
        "Training and test error (Figure 4 layout)",
        paragraphs=[
            reductions(experiment, results["resnet18"].model),
            "Thin lines: training error; bold lines: test error. The paper's column is its "
            "ImageNet top-1 error: a reference for the ordering only.",
        ],
        table=shown(table),
        figures=[
            (
                "training_curves",
                training_curves_figure(
                    history,
                    {"plain nets": ["plain18", "plain34"], "ResNets": ["resnet18", "resnet34"]},
                ),
                "Training (thin) and test (bold) error vs iterations, plain and residual.",
            )
        ],
    )
    experiment.write_report(
        "Figure 4: ImageNet-style plain vs residual nets (reduced setting)",
        [section],
        {"history": history, "final_errors": table},
        comparisons,
    )
