"""Figures (seaborn, paper style) drawn from tidy frames; they never recompute a measurement."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .summaries import geomean

BOUNDARY_LABEL = "block boundary k (0 = input of block 1, k = output of block k)"


def paper_style() -> None:
    """Seaborn's paper context with a white grid: small, legible figures."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _steps_style(frame: pd.DataFrame) -> str | None:
    return "step" if "step" in frame and frame["step"].nunique() > 1 else None


def activation_grad_figure(records: pd.DataFrame) -> plt.Figure:
    """||dL/dz_k|| at every block boundary vs depth k, log scale, one line per model."""
    paper_style()
    data = records[records["quantity"] == "activation_grad_norm"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.lineplot(
        data=data,
        x="depth",
        y="value",
        hue="model",
        style=_steps_style(data),
        marker="o",
        markersize=3,
        ax=ax,
    )
    ax.set_yscale("log")
    ax.set_xlabel(BOUNDARY_LABEL)
    ax.set_ylabel(r"$\|\partial L / \partial z_k\|_2$ (whole batch)")
    ax.set_title("Backward signal: activation-gradient norm at block boundaries")
    fig.tight_layout()
    return fig


def response_std_figure(records: pd.DataFrame) -> plt.Figure:
    """The paper's Figure 7: response std per 3x3 layer, in forward order and sorted."""
    paper_style()
    data = records[records["quantity"] == "response_std"].copy()
    keys = ["model", "step"] if "step" in data else ["model"]
    data["order"] = data.groupby(keys)["depth"].rank(method="first").astype(int)
    data["rank"] = (
        data.groupby(keys)["value"]
        .rank(method="first", ascending=False, na_option="bottom")
        .astype(int)
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    style = _steps_style(data)
    sns.lineplot(data=data, x="order", y="value", hue="model", style=style, ax=axes[0])
    sns.lineplot(data=data, x="rank", y="value", hue="model", style=style, ax=axes[1], legend=False)
    axes[0].set_xlabel("layer index (3x3 convs, forward order)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    axes[0].set_ylabel("std of layer response\n(after BN, before ReLU / addition)")
    axes[0].set_title("(a) original order")
    axes[1].set_title("(b) sorted, descending")
    fig.suptitle("Forward signal: layer responses (He et al. 2016, Figure 7 layout)")
    fig.tight_layout()
    return fig


def cumulative_spectra_figure(summary: pd.DataFrame) -> plt.Figure:
    """Singular values of the cumulative Jacobian (input -> output of block k) vs depth k.

    A band spans the smallest to the largest computed singular value (averaged over the
    samples in log space). The dashed line is the median where the whole spectrum was
    computed, else the RMS singular value sqrt(||J||_F^2 / dim) from Hutchinson's estimate.
    """
    paper_style()
    data = summary[summary["operator"] == "prod"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    palette = dict(zip(data["model"].unique(), sns.color_palette(n_colors=8), strict=False))
    centre_label = "median"
    keys = ["model", "step"] if "step" in data and data["step"].nunique() > 1 else ["model"]
    for key, group in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(str(k) if i == 0 else f"step {k}" for i, k in enumerate(key))
        group = group.assign(rms=np.sqrt(group.get("mean_sq_estimate", np.nan)))
        columns = ["smallest", "largest", "median", "rms"]
        per_depth = group.groupby("depth")[columns].agg(geomean)
        centre = "median" if per_depth["median"].notna().all() else "rms"
        color = palette[key[0]]
        ax.fill_between(
            per_depth.index, per_depth["smallest"], per_depth["largest"], color=color, alpha=0.2
        )
        ax.plot(per_depth.index, per_depth["largest"], color=color, lw=0.8, label=f"{label}")
        ax.plot(per_depth.index, per_depth["smallest"], color=color, lw=0.8)
        if per_depth[centre].notna().any():
            ax.plot(per_depth.index, per_depth[centre], color=color, lw=1.6, ls="--")
            centre_label = "median" if centre == "median" else "RMS singular value"
    ax.set_yscale("log")
    ax.set_xlabel("depth k (map from the input to the output of block k)")
    ax.set_ylabel("singular values of the cumulative Jacobian")
    ax.set_title(r"$\prod J_H$ (plain) vs $\prod (I + J_F)$ (residual): band = smallest..largest")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=f"model (dashed: {centre_label})", fontsize="small")
    fig.tight_layout()
    return fig


def block_spectra_figure(spectra: pd.DataFrame) -> plt.Figure:
    """Per-block singular value distributions: J_H (plain) vs I+J_F and J_F (residual)."""
    paper_style()
    data = spectra[spectra["operator"].isin(["J_H", "I+J_F", "J_F"])]
    models = list(data["model"].unique())
    fig, axes = plt.subplots(
        len(models), 1, figsize=(10, 2.8 * len(models)), sharex=True, squeeze=False
    )
    order = ["J_H", "I+J_F", "J_F"]
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = data[data["model"] == model]
        sns.boxplot(
            data=part,
            x="depth",
            y="sigma",
            hue="operator",
            ax=ax,
            fliersize=1,
            linewidth=0.6,
            hue_order=[o for o in order if o in set(part["operator"])],
        )
        ax.set_yscale("symlog", linthresh=1e-2)  # J_F of a zero-gamma block is exactly 0
        ax.set_ylim(bottom=0)
        ax.set_ylabel("singular values")
        ax.set_title(f"{model}: singular values of each block's Jacobian at its input")
        ax.legend(fontsize="small", loc="upper right")
    axes[-1, 0].set_xlabel("block k (forward order)")
    for label in axes[-1, 0].get_xticklabels():
        label.set_fontsize(7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------- training curves


def _seed_line(ax: plt.Axes, line: pd.DataFrame, **style) -> None:
    """``value`` vs ``step``: the mean over seeds, and their min-max band if several."""
    by_step = line.groupby("step")["value"]
    mean = by_step.mean()
    ax.plot(mean.index, mean.to_numpy(), **style)
    if "seed" in line and line["seed"].nunique() > 1:
        low, high = by_step.min(), by_step.max()
        ax.fill_between(low.index, low.to_numpy(), high.to_numpy(), color=style["color"],
                        alpha=0.2, linewidth=0)  # fmt: skip


def training_curves_figure(
    history: pd.DataFrame,
    panels: dict[str, Sequence[str]] | None = None,
    *,
    evaluation: str = "test",
    quantity: str = "error",
) -> plt.Figure:
    """Error (%) vs iteration, the paper's Figure 1/4/6 layout: thin = training, bold = test.

    ``history`` is the trainer's tidy frame (model, step, split, quantity, value).
    ``panels`` maps a panel title to the models drawn in it (default: one panel, all models);
    the i-th model of every panel gets the i-th colour, so plain-20 and ResNet-20 match.
    With several seeds (a ``seed`` column) each line is the mean over seeds at each step and
    a band of the same colour spans the seeds' min to max.
    """
    paper_style()
    data = history[history["quantity"] == quantity]
    panels = panels or {"": list(data["model"].unique())}
    palette = sns.color_palette(n_colors=max(len(m) for m in panels.values()))
    several = "seed" in data and data["seed"].nunique() > 1
    band = "\nline: mean, band: range over seeds" if several else ""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.8), sharey=True, squeeze=False
    )
    for ax, (title, models) in zip(axes[0], panels.items(), strict=True):
        for color, model in zip(palette, models, strict=False):
            for split, width in (("train", 0.9), (evaluation, 2.2)):
                line = data[(data["model"] == model) & (data["split"] == split)]
                label = model if split == evaluation else None
                _seed_line(ax, line, color=color, lw=width, label=label)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize="small", title=f"thin: train, bold: {evaluation}" + band)
    axes[0, 0].set_ylabel(f"{quantity} (%)" if quantity == "error" else quantity)
    fig.tight_layout()
    return fig


SIGNAL_PANELS = {  # quantity -> (panel title, x label)
    "channel_variance": ("average channel variance", BOUNDARY_LABEL),
    "channel_mean_sq": ("average channel squared mean", BOUNDARY_LABEL),
    "branch_variance": ("residual branch variance (end of F)", "residual block k"),
    "shortcut_grad_share": (
        r"shortcut share $\|g_u J_S\| / (\|g_u J_S\| + \|g_u J_F\|)$",
        "residual block k",
    ),
}
FORWARD_SIGNAL = ("channel_variance", "channel_mean_sq", "branch_variance")


def depth_panels_figure(
    frame: pd.DataFrame, quantities: Sequence[str], title: str | None = None
) -> plt.Figure:
    """One panel per quantity of ``SIGNAL_PANELS`` present in ``frame``: value vs depth, one
    line per model (one colour per model in every panel); log scale where all values > 0."""
    paper_style()
    present = set(frame["quantity"])
    panels = [q for q in quantities if q in present]
    models = list(dict.fromkeys(frame["model"]))
    colours = dict(zip(models, sns.color_palette(n_colors=len(models)), strict=True))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.4 * max(len(panels), 1), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, quantity in zip(axes[0], panels, strict=False):
        data = frame[frame["quantity"] == quantity]
        sns.lineplot(data=data, x="depth", y="value", hue="model", palette=colours,
                     style=_steps_style(data), marker="o", markersize=3, ax=ax,
                     legend=ax is axes[0][0])  # fmt: skip
        if quantity != "shortcut_grad_share" and (data["value"] > 0).all():
            ax.set_yscale("log")
        ax.set_title(SIGNAL_PANELS[quantity][0])
        ax.set_xlabel(SIGNAL_PANELS[quantity][1])
        ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def signal_propagation_figure(records: pd.DataFrame) -> plt.Figure:
    """Signal propagation plot (Brock, De and Smith 2021): channel variance and squared mean
    at every block boundary, branch variance at every residual block, vs depth."""
    return depth_panels_figure(
        records, FORWARD_SIGNAL, "Forward signal: signal propagation plot (Brock et al. 2021)"
    )


def shortcut_share_figure(records: pd.DataFrame) -> plt.Figure:
    """Per residual block: ||g_u J_S|| and ||g_u J_F|| (log scale, the path as line style)
    and the share of the shortcut, vs block depth."""
    paper_style()
    paths = {"shortcut_grad_norm": "shortcut  g_u J_S", "branch_grad_norm": "branch  g_u J_F"}
    norms = records[records["quantity"].isin(list(paths))].copy()
    norms["path"] = norms["quantity"].map(paths)
    share = records[records["quantity"] == "shortcut_grad_share"]
    models = list(dict.fromkeys(records["model"]))
    colours = dict(zip(models, sns.color_palette(n_colors=len(models)), strict=True))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(data=norms, x="depth", y="value", hue="model", style="path", palette=colours,
                 marker="o", markersize=3, ax=left)  # fmt: skip
    if (norms["value"] > 0).all():
        left.set_yscale("log")
    left.set_ylabel("gradient reaching the block input")
    left.set_title("(a) through the shortcut and through the branch")
    sns.lineplot(data=share, x="depth", y="value", hue="model", palette=colours, marker="o",
                 style=_steps_style(share), markersize=3, ax=right, legend=False)  # fmt: skip
    right.set_ylim(-0.02, 1.02)
    right.axhline(0.5, color="0.6", linewidth=0.8, linestyle=":")
    right.set_ylabel("shortcut share")
    right.set_title("(b) share carried by the shortcut")
    for ax in (left, right):
        ax.set_xlabel("residual block k")
    fig.suptitle("Backward signal: the gradient split at every residual block")
    fig.tight_layout()
    return fig
