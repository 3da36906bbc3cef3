"""Self-contained HTML / Markdown reports; the figures come from ``gradflow.figures``.

Plotting only reads tidy DataFrames (records, spectra, summaries); it never recomputes a
measurement. A ``Report`` is a list of sections (text, tables, figures) rendered to a
single HTML file with the figures embedded (readable offline) or to Markdown + PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import io as gio
from .figures import (
    BOUNDARY_LABEL,
    activation_grad_figure,
    block_spectra_figure,
    cumulative_spectra_figure,
    paper_style,
    response_std_figure,
    shortcut_share_figure,
    signal_propagation_figure,
    training_curves_figure,
)

__all__ = [
    "BOUNDARY_LABEL",
    "Report",
    "Section",
    "activation_grad_figure",
    "block_spectra_figure",
    "build_analysis_report",
    "cumulative_spectra_figure",
    "paper_style",
    "response_std_figure",
    "training_curves_figure",
]


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
                parts.append(_table_html(section.table))
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


def _table_html(table: pd.DataFrame) -> str:
    """A table in a horizontally scrolling container, headers breakable after underscores:
    a wide table never runs past the right edge of the page (it scrolls inside its box)."""
    text = table.to_html(index=False, float_format=_fmt, border=0)
    text = re.sub(r"<th>([^<]*)</th>", lambda m: f"<th>{m[1].replace('_', '_<wbr>')}</th>", text)
    return f'<div class="table-scroll">{text}</div>'


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
.table-scroll { max-width: 100%; overflow-x: auto; }
.table-scroll th { white-space: normal; vertical-align: bottom; max-width: 9em; }
"""


# ----------------------------------------------------------------------- analysis report

SPECTRA_NOTE = (
    "Jacobians are taken per sample with BatchNorm in eval mode, its running statistics "
    "calibrated on the measurement batch in a copy of the model (the analysed model is never "
    "modified). J_H is the Jacobian of a plain block, I+J_F that of a whole residual block "
    "and J_F that of its residual branch alone, each at the input the block actually "
    "receives; prod is the Jacobian of the map from the network input to the output of "
    "block k, the cumulative product prod J_H or prod (I + J_F)."
)


def _cumulative_caption(summary: pd.DataFrame) -> str:
    """Caption of the cumulative figure; says when the lower edge is only an upper bound."""
    caption = "Singular values of the cumulative Jacobian from the input to block k."
    starts = set(summary.get("prod_from", pd.Series(dtype=object)).dropna())
    if "stem" in starts:  # token models and a user's stem=: not from the model input
        caption = (
            "Singular values of the cumulative Jacobian to block k, from "
            + "the model input or " * (len(starts) > 1)
            + "the first block's input (the stem's output, for token models the "
            "embedding output; column prod_from)."
        )
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
    models = list(result.summary["model"].unique())
    sections = [
        _summary_section(result),
        *([_whatif_section(result)] if "whatif" in result.meta else []),
        _backward_section(result.records),
        _forward_section(result.records, result.meta),
        _spectra_section(result.spectra, result.spectra_summary),
        *_hessian_sections(result),
        _data_section(result.meta),
    ]
    return Report(f"gradflow analysis: {' vs '.join(models)}", sections)


def _hessian_sections(result) -> list[Section]:
    """The curvature section when the run measured the Hessian (``--hessian``)."""
    if getattr(result, "hessian", None) is None:
        return []
    from .report_hessian import analysis_hessian_section

    return [analysis_hessian_section(result.hessian, result.meta.get("hessian", {}))]


def _summary_section(result) -> Section:
    """What data and measurement batch the run used, the verdicts and the summary table."""
    from .budget import spectra_lines, spectra_sentence
    from .memory import record_lines
    from .model_inputs import input_lines

    config, data = result.meta.get("config", {}), result.meta.get("data", {})
    data_line = f"Data: {data.get('description', 'unknown')}."
    if data.get("synthetic"):
        data_line += (
            " These numbers were measured on gradflow's embedded synthetic images, not on a "
            "real data set; use --data fashion-mnist or cifar10 for real data."
        )
    batch = (
        f"One batch of {config.get('batch_size') or 'the size below'} inputs (seed "
        f"{config.get('seed')}) for the "
        f"records; {spectra_sentence(result.meta)}, depths {config.get('depths')!s}."
    )
    columns = (
        "The table: response_std is the min-max range over the 3x3 layers; a condition "
        "number marked >= is a lower bound (bottom singular values not converged); the full "
        "table, with prod_smallest, is data/summary."
    )
    return Section(
        "Summary",
        paragraphs=[
            data_line,
            batch,
            *input_lines(result.meta),
            *record_lines(result.meta),
            *spectra_lines(result.meta),
            *result.verdicts(),
            columns,
        ],
        table=result.summary_display(),
    )


def _whatif_section(result) -> Section:
    """--whatif: the counterfactual nets' headline numbers beside the analysed ones'."""
    from .whatif import fix_sentences

    table = result.whatif
    about = (
        "The counterfactual nets gradflow could build, fed the same batch and measured the "
        "same way, at init: zoo nets with identity shortcuts (plainN -> resnetN), with "
        "zero-gamma (the last BN gamma of every residual branch 0) and with pre-activation "
        "(preresnetN); other models with residual blocks with zero-gamma on the last norm "
        "of each branch, in a private copy. data/whatif holds this table and each verdict."
    )
    lines = fix_sentences(table) if table is not None and not table.empty else []
    shown = table.drop(columns=["verdict", "step"]) if lines else None
    notes = list(result.meta["whatif"]["notes"].values())
    return Section("What would fix it", paragraphs=[about, *lines, *notes], table=shown)


def _backward_section(records: pd.DataFrame) -> Section:
    """The activation-gradient norms at the block boundaries, and the shortcut's share."""
    figures = [
        (
            "activation_grad_norm",
            activation_grad_figure(records),
            "Activation-gradient norm at block boundaries (log scale).",
        ),
    ]
    paragraphs = [
        "The Frobenius norm of dL/dz_k over the batch at every block boundary k. "
        "For a residual net dL/dx = dL/dz_L prod_l (I + J_F_l): the identity term "
        "carries the gradient from the output back to every block; a plain net has "
        "only prod_l J_H_l. grad_log10_ratio in the summary is log10 of the norm at "
        "the input of block 1 over the norm at the output of the last block."
    ]
    if (records["quantity"] == "shortcut_grad_share").any():
        paragraphs.append(SHARE_NOTE)
        figures.append(("shortcut_grad_share", shortcut_share_figure(records), SHARE_CAPTION))
    return Section("Backward signal", paragraphs=paragraphs, figures=figures)


SHARE_NOTE = (
    "At every residual block y = post(F(x) + S(x)), with g_u the gradient at the sum: the "
    "gradient that reaches the block input through the shortcut, ||g_u J_S||, and through "
    "the branch, ||g_u J_F|| (they add as vectors to dL/dx), and the shortcut's share "
    "||g_u J_S|| / (||g_u J_S|| + ||g_u J_F||): 1 when the branch carries nothing (zero-gamma "
    "at init), 1/2 when both paths carry the same norm."
)
SHARE_CAPTION = (
    "Gradient split at every residual block: (a) norms through the shortcut and through the "
    "branch (log scale), (b) the shortcut share (dotted: 1/2)."
)
SIGNAL_NOTE = (
    "Signal propagation plot (Brock, De and Smith 2021): at every block boundary k, the "
    "average over channels of the channel variance and of the squared channel mean (over "
    "the batch and all positions; channels: axis 1 of image tensors, the feature axis of "
    "token tensors), and at every residual block the variance of its branch F at its end. "
    "Unlike the Figure 7 response std, these are informative at initialisation: in a BN "
    "ResNet the variance at the block outputs grows with depth within a stage unless the "
    "branch starts at zero (zero-gamma); BN renormalises every block of a plain net."
)
SIGNAL_CAPTION = (
    "Signal propagation plot: average channel variance and squared mean vs block boundary "
    "k (0 = input of block 1), and residual branch variance vs block (log scales)."
)


def _trained(records: pd.DataFrame, meta: dict | None) -> bool:
    """Whether the records include a trained model (--steps > 0 or --checkpoint)."""
    config = (meta or {}).get("config", {})
    return bool(config.get("checkpoint")) or bool(len(records) and records["step"].max() > 0)


def _forward_section(records: pd.DataFrame, meta: dict | None = None) -> Section:
    """The signal propagation plot; the paper's Figure 7 layout for trained models."""
    has_signal = (records["quantity"] == "channel_variance").any()
    paragraphs, figures = [], []
    if has_signal:
        paragraphs.append(SIGNAL_NOTE)
        figures.append(("signal_propagation", signal_propagation_figure(records), SIGNAL_CAPTION))
    if not has_signal or _trained(records, meta):
        at_step = records[records["step"] > 0] if _trained(records, meta) else records
        at_step = at_step if len(at_step) else records
        paragraphs += [
            "Figure 7 layout: standard deviation of the response of every 3x3 conv layer "
            "after BN, before the nonlinearity and before the residual addition, over the "
            "batch and all positions and channels; (a) in forward order, (b) sorted "
            "descending. He et al. report that ResNets have generally smaller responses "
            "than plain nets, and deeper ResNets smaller ones still (at convergence).",
            *_trivial_response_note(at_step),
        ]
        figures.append(
            (
                "response_std",
                response_std_figure(records),
                "Layer response std per 3x3 layer, original and sorted order.",
            )
        )
    return Section("Forward signal", paragraphs=paragraphs, figures=figures)


def _spectra_section(spectra: pd.DataFrame, spectra_summary: pd.DataFrame) -> Section:
    """The cumulative and per-block Jacobian spectra, and the solvers that computed them."""
    if spectra.empty:  # every model was non-finite (gradflow.finite): nothing was measured
        return Section("Jacobian spectra", paragraphs=["Not computed: see the verdicts."])
    spectra_method = ", ".join(sorted(map(str, spectra.get("method", pd.Series()).unique())))
    return Section(
        "Jacobian spectra",
        paragraphs=[SPECTRA_NOTE, f"Solver(s): {spectra_method}."],
        figures=[
            (
                "cumulative_spectra",
                cumulative_spectra_figure(spectra_summary),
                _cumulative_caption(spectra_summary),
            ),
            (
                "block_spectra",
                block_spectra_figure(spectra),
                "Singular values of each block's Jacobian (computed ones: top and bottom k).",
            ),
        ],
    )


def _data_section(meta: dict) -> Section:
    """What the data files hold, and the run's metadata."""
    return Section(
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
