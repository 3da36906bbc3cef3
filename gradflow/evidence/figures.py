"""Figures of the evidence frames; they only read the frames (nothing is recomputed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..figures import depth_panels_figure
from ..report import paper_style

SIGNAL_PANELS = ("channel_variance", "channel_mean_sq", "branch_variance", "shortcut_grad_share")


def _palette(frame: pd.DataFrame) -> dict:
    """One colour per model, the same in every panel (panels may lack some models)."""
    models = list(dict.fromkeys(frame.model))
    return dict(zip(models, sns.color_palette(n_colors=len(models)), strict=True))


def signal_propagation_figure(frame: pd.DataFrame) -> plt.Figure:
    """Signal propagation plot: the four quantities of ``signal_propagation`` vs depth."""
    return depth_panels_figure(frame, SIGNAL_PANELS)


def gradient_correlation_figure(frame: pd.DataFrame) -> plt.Figure:
    """Gradient autocorrelation vs lag (lines averaged, band: their spread), one panel per
    measure; the dotted line is 1/e, where ``shattering_summary`` reads the decay lag."""
    paper_style()
    measures = list(dict.fromkeys(frame.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.4 * len(measures), 3.9), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        data = frame[(frame.measure == measure) & (frame.lag > 0)]
        sns.lineplot(data=data, x="lag", y="value", hue="model", errorbar=("pi", 100),
                     ax=ax, legend=ax is axes[0][0])  # fmt: skip
        ax.axhline(np.exp(-1), color="0.4", linestyle=":", linewidth=1)
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("lag (grid steps along the line)")
        ax.set_ylabel("gradient correlation")
        label = "cosine of full input gradients" if measure == "cosine" else (
            "autocorrelation of the directional derivative")  # fmt: skip
        ax.set_title(label)
    fig.tight_layout()
    return fig


def lesion_figure(frame: pd.DataFrame, chance: float | None = 90.0) -> plt.Figure:
    """Left: error with one block removed vs its position (dashed: intact net). Right: error
    vs the number k of blocks removed together (mean over random draws; k = 1: all blocks).
    Dotted: the ``chance`` error (90% for 10 classes; None: no line)."""
    paper_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0))
    single = frame[frame.k == 1].astype({"depth": float})
    colours = _palette(frame)
    sns.lineplot(data=single, x="depth", y="error", hue="model", palette=colours, marker="o",
                 markersize=4, ax=left)  # fmt: skip
    for model, error in frame[frame.k == 0].set_index("model").error.items():
        left.axhline(error, color=colours[model], linestyle="--", linewidth=1)
    left.set_xlabel("removed block k (forward order)")
    left.set_ylabel("test error (%)")
    left.set_title("One block removed (dashed: none removed)")
    sns.lineplot(data=frame, x="k", y="error", hue="model", palette=colours, marker="o",
                 errorbar=("pi", 100), ax=right, legend=False)  # fmt: skip
    right.set_xlabel("number of blocks removed together")
    right.set_ylabel("test error (%)")
    right.set_title("Random blocks removed (band: range over draws)")
    for ax in (left, right) if chance is not None else ():
        ax.axhline(chance, color="0.5", linestyle=":", linewidth=1)
    fig.tight_layout()
    return fig
