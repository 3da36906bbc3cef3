"""Paper Figure 7: std of the layer responses of trained plain and residual CIFAR nets.

A response is the output of a 3x3 conv after its BN, before the ReLU and before the
residual addition. He et al. (2016): ResNets have generally smaller responses than their
plain counterparts, and deeper ResNets smaller ones still: residual functions are closer to
zero than non-residual ones. Trained models come from the run cache (fig6's runs).
"""

from __future__ import annotations

import itertools

import pandas as pd

from gradflow.record_pass import record
from gradflow.report import Section, response_std_figure

from .common import Experiment, compare_rows, experiment_main

FIGURE_7 = "paper Figure 7"


@experiment_main("fig7")
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure, write the report (see the module doc)."""
    x, y = experiment.measurement_batch()
    frames = []
    for model, _ in experiment.models():
        trained = experiment.run(model).model.eval()  # BN with its running statistics
        frame = record(trained, x, y, probes=["response_std"], label=model)
        frames.append(frame[frame.quantity == "response_std"])
    responses = pd.concat(frames, ignore_index=True)
    table = (
        responses.groupby("model", sort=False)["value"]
        .agg(layers="count", mean_std="mean", median_std="median", max_std="max")
        .reset_index()
    )
    summary = table.set_index("model")
    options = dict(quantity="mean response std", expected="lower", verb="has", unit="")
    comparisons = [
        compare_rows(summary, plain.replace("plain", "resnet"), plain, "mean_std", **options,
                     paper=f"{FIGURE_7}: ResNets have generally smaller responses than plain nets")
        for plain in summary.index
        if plain.startswith("plain") and plain.replace("plain", "resnet") in summary.index
    ]  # fmt: skip
    resnets = [m for m in summary.index if m.startswith("resnet")]
    comparisons += [
        compare_rows(summary, deeper, shallower, "mean_std", **options,
                     paper=f"{FIGURE_7}: deeper ResNets have smaller magnitudes of responses")
        for shallower, deeper in itertools.pairwise(resnets)
    ]  # fmt: skip
    section = Section(
        "Layer responses (Figure 7 layout)",
        paragraphs=[
            f"Trained models in eval mode (BN with its running statistics), one measurement batch "
            f"of {len(x)} class-balanced test images. (a) layers in forward order, (b) the "
            "same values sorted in descending order. The stem's BN counts as the first layer."
        ],
        table=table,
        figures=[
            (
                "response_std",
                response_std_figure(responses),
                "Std of each 3x3 layer's response, forward order and sorted.",
            )
        ],
    )
    experiment.write_report(
        "Figure 7: standard deviations of layer responses",
        [section],
        {"responses": responses, "summary": table},
        comparisons,
    )
