"""Figures (seaborn, paper style) and self-contained HTML / Markdown reports.

Plotting only reads tidy DataFrames (records, spectra, summaries); it never recomputes a
measurement. A ``Report`` is a list of sections (text, tables, figures) rendered to a
single HTML file with the figures embedded (readable offline) or to Markdown + PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import io as gio
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
    data["rank"] = data.groupby(keys)["value"].rank(method="first", ascending=False).astype(int)
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

    A band spans the smallest to the largest computed singular value (averaged over probe
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


# ----------------------------------------------------------------------------- reports


@dataclass
class Section:
    """One part of a report: a heading, paragraphs, optional table and figures."""

    title: str
    paragraphs: Sequence[str] = ()
    table: pd.DataFrame | None = None
    figures: Sequence[tuple[str, plt.Figure, str]] = ()  # (file stem, figure, caption)
    preformatted: str | None = None


@dataclass
class Report:
    """A titled list of sections, rendered to self-contained HTML or to Markdown + PNGs."""

    title: str
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[tuple[str, plt.Figure, str]]:
        return [f for s in self.sections for f in s.figures]

    def save_figures(self, directory: str | Path, dpi: int = 150) -> dict[str, bytes]:
        """Write every figure as ``directory/<stem>.png`` atomically; return the PNG bytes."""
        pngs = {}
        for stem, fig, _ in self.figures():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
            pngs[stem] = buffer.getvalue()
            gio.write_bytes(Path(directory) / f"{stem}.png", pngs[stem])
        return pngs

    def to_html(self, pngs: dict[str, bytes]) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            parts.append(f"<h2>{html.escape(section.title)}</h2>")
            parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
            if section.preformatted:
                parts.append(f"<pre>{html.escape(section.preformatted)}</pre>")
            if section.table is not None:
                parts.append(section.table.to_html(index=False, float_format=_fmt, border=0))
            for stem, _, caption in section.figures:
                data = base64.b64encode(pngs[stem]).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" '
                    f'src="data:image/png;base64,{data}"/>'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        body = "\n".join(parts)
        return f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"  # noqa: E501

    def to_markdown(self, figure_dir: str = "figures") -> str:
        parts = [f"# {self.title}", ""]
        for section in self.sections:
            parts += [f"## {section.title}", ""]
            for paragraph in section.paragraphs:
                parts += [paragraph, ""]
            if section.preformatted:
                parts += ["```", section.preformatted, "```", ""]
            if section.table is not None:
                parts += [_markdown_table(section.table), ""]
            for stem, _, caption in section.figures:
                parts += [f"![{caption}]({figure_dir}/{stem}.png)", "", f"*{caption}*", ""]
        return "\n".join(parts)

    def write(
        self,
        directory: str | Path,
        *,
        html_name: str | None = "report.html",
        markdown_name: str | None = None,
    ) -> list[Path]:
        """Write figures/*.png and the HTML (and/or Markdown) report into ``directory``."""
        directory = Path(directory)
        pngs = self.save_figures(directory / "figures")
        written = [directory / "figures" / f"{stem}.png" for stem in pngs]
        if html_name:
            written.append(gio.write_text(directory / html_name, self.to_html(pngs)))
        if markdown_name:
            written.append(gio.write_text(directory / markdown_name, self.to_markdown()))
        for _, fig, _ in self.figures():
            plt.close(fig)
        return written


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return _fmt(value)
        return str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *rows])


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.8em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.2em 0; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


# ----------------------------------------------------------------------- analysis report

SPECTRA_NOTE = (
    "Jacobians are taken per sample with BatchNorm in eval mode, its running statistics "
    "calibrated on the probe batch in a copy of the model (the analysed model is never "
    "modified). J_H is the Jacobian of a plain block, I+J_F that of a whole residual block "
    "and J_F that of its residual branch alone, each at the input the block actually "
    "receives; prod is the Jacobian of the map from the network input to the output of "
    "block k, the cumulative product prod J_H or prod (I + J_F)."
)


def _cumulative_caption(summary: pd.DataFrame) -> str:
    """Caption of the cumulative figure; says when the lower edge is only an upper bound."""
    caption = "Singular values of the cumulative Jacobian from the input to block k."
    prod = summary[summary["operator"] == "prod"]
    if "converged" in prod and not prod["converged"].all():
        caption += (
            " Where the iterative solver did not converge for the smallest values "
            "(spectra_summary.converged is False), the lower edge is the smallest Ritz value, "
            "an upper bound on the true smallest singular value."
        )
    return caption


def _trivial_response_note(records: pd.DataFrame) -> list[str]:
    """Say so when every response std is ~1: BN with gamma = 1 in train mode at init."""
    stds = records[records["quantity"] == "response_std"]["value"]
    if len(stds) and (stds - 1).abs().max() < 0.02:
        return [
            "Here every response std is within 2% of 1: at initialisation BatchNorm "
            "(gamma = 1, batch statistics) normalises every response, so the Figure 7 "
            "contrast can only appear after training (use --steps N or --checkpoint)."
        ]
    return []


def build_analysis_report(result) -> Report:
    """The report of ``gradflow analyze``: summary, backward, forward and spectra sections."""
    meta = result.meta
    models = list(result.summary["model"].unique())
    config = meta.get("config", {})
    data = meta.get("data", {})
    data_line = f"Data: {data.get('description', 'unknown')}."
    if data.get("synthetic"):
        data_line += (
            " These numbers were measured on gradflow's embedded synthetic images, not on a "
            "real data set; use --data fashion-mnist or cifar10 for real data."
        )
    probe = (
        f"One batch of {config.get('batch_size')} images (seed {config.get('seed')}) for the "
        f"records; spectra on the first {config.get('samples')} of them, the {config.get('k')} "
        f"largest and {config.get('k')} smallest singular values per operator, depths "
        f"{config.get('depths')!s}."
    )
    spectra_method = ", ".join(sorted(map(str, result.spectra.get("method", pd.Series()).unique())))
    report = Report(f"gradflow analysis: {' vs '.join(models)}")
    report.sections.append(
        Section(
            "Summary",
            paragraphs=[data_line, probe, *result.verdicts()],
            table=result.summary,
        )
    )
    report.sections.append(
        Section(
            "Backward signal",
            paragraphs=[
                "The Frobenius norm of dL/dz_k over the batch at every block boundary k. "
                "For a residual net dL/dx = dL/dz_L prod_l (I + J_F_l): the identity term "
                "carries the gradient from the output back to every block; a plain net has "
                "only prod_l J_H_l. grad_log10_ratio in the summary is log10 of the norm at "
                "the input of block 1 over the norm at the output of the last block."
            ],
            figures=[
                (
                    "activation_grad_norm",
                    activation_grad_figure(result.records),
                    "Activation-gradient norm at block boundaries (log scale).",
                ),
            ],
        )
    )
    report.sections.append(
        Section(
            "Forward signal (Figure 7 layout)",
            paragraphs=[
                "Standard deviation of the response of every 3x3 conv layer after BN, before "
                "the nonlinearity and before the residual addition, over the batch and all "
                "positions and channels; (a) in forward order, (b) sorted descending. "
                "He et al. report that ResNets have generally smaller responses than plain "
                "nets, and deeper ResNets smaller ones still (at convergence).",
                *_trivial_response_note(result.records),
            ],
            figures=[
                (
                    "response_std",
                    response_std_figure(result.records),
                    "Layer response std per 3x3 layer, original and sorted order.",
                ),
            ],
        )
    )
    report.sections.append(
        Section(
            "Jacobian spectra",
            paragraphs=[SPECTRA_NOTE, f"Solver(s): {spectra_method}."],
            figures=[
                (
                    "cumulative_spectra",
                    cumulative_spectra_figure(result.spectra_summary),
                    _cumulative_caption(result.spectra_summary),
                ),
                (
                    "block_spectra",
                    block_spectra_figure(result.spectra),
                    "Singular values of each block's Jacobian (computed ones: top and bottom k).",
                ),
            ],
        )
    )
    report.sections.append(
        Section(
            "Data behind the figures",
            paragraphs=[
                "data/records.(parquet|csv): one row per measured value (model, step, layer, "
                "depth, stage, block, kind, quantity, value). data/spectra: one row per "
                "singular value (model, step, depth, block, operator, sample, index, sigma, "
                "method, error). data/spectra_summary: per depth and operator. "
                "data/summary: the table above. meta.json: versions, seed, command, wall time."
            ],
            preformatted=json.dumps(meta, indent=2, default=str),
        )
    )
    return report


# ----------------------------------------------------------------------- training curves


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
    """
    paper_style()
    data = history[history["quantity"] == quantity]
    panels = panels or {"": list(data["model"].unique())}
    palette = sns.color_palette(n_colors=max(len(m) for m in panels.values()))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.8), sharey=True, squeeze=False
    )
    for ax, (title, models) in zip(axes[0], panels.items(), strict=True):
        for color, model in zip(palette, models, strict=False):
            for split, width in (("train", 0.9), (evaluation, 2.2)):
                line = data[(data["model"] == model) & (data["split"] == split)].sort_values("step")
                label = model if split == evaluation else None
                ax.plot(line["step"], line["value"], color=color, lw=width, label=label)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize="small", title=f"thin: train, bold: {evaluation}")
    axes[0, 0].set_ylabel(f"{quantity} (%)" if quantity == "error" else quantity)
    fig.tight_layout()
    return fig
